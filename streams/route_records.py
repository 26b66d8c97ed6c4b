"""What the router stores in Kafka about its routes, and reads back after a restart. Pure.

- The tenant-state document (compacted `laneway.tenant-state`, one per tenant, mirrored by every
  worker): the tenant's lane, its recent moves, its volume windows and, while one is in
  progress, its cut and hold, which the next router to own the tenant resumes.
- The metadata of an ingress commit: where, in each lane partition, the router's forwards of
  the records after the commit start (`streams.cutover.LaneMarks`), so that a restored router
  finds them instead of forwarding them twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from streams.cutover import Hold, LanePartition
from streams.lanes import LaneMove

RECENT_MOVES_KEPT = 10


def move_entry(move: LaneMove) -> dict[str, Any]:
    """A move as the control topic and the tenant's recent moves show it."""
    return {
        "tenant": move.tenant,
        "from": move.from_lane,
        "to": move.to_lane,
        "reason": move.reason,
        "at": _iso(move.at),
    }


def cut_entry(move: LaneMove | None) -> dict[str, Any] | None:
    if move is None:
        return None
    return {"from": move.from_lane, "to": move.to_lane, "reason": move.reason, "at": move.at}


def hold_entry(hold: Hold | None) -> dict[str, int] | None:
    return None if hold is None else {"partition": hold.partition, "offset": hold.offset}


def servable_lane(lane: object, dedicated_lanes: int) -> int | None:
    """`lane` if a lane worker reads it (0 <= lane < dedicated_lanes), else None: the shared
    lane. A lane index restored from state written with more lanes would reach no one."""
    if isinstance(lane, int) and not isinstance(lane, bool) and 0 <= lane < dedicated_lanes:
        return lane
    return None


def restored_cut(tenant: str, document: Mapping[str, Any], dedicated_lanes: int) -> LaneMove | None:
    """The cut in progress that a tenant-state document names, unless it leaves or enters a
    lane that no lane worker reads now."""
    cut = document.get("cut")
    if not isinstance(cut, dict):
        return None
    if not all(
        lane is None or servable_lane(lane, dedicated_lanes) is not None
        for lane in (cut["from"], cut["to"])
    ):
        return None
    return LaneMove(tenant, cut["from"], cut["to"], cut["reason"], float(cut["at"]))


def restored_hold(document: Mapping[str, Any]) -> tuple[int, int] | None:
    """(ingress partition, offset) of the hold a tenant-state document names, if any."""
    hold = document.get("hold")
    if not isinstance(hold, dict):
        return None
    return int(hold["partition"]), int(hold["offset"])


def marks_metadata(marks: Mapping[LanePartition, int]) -> str:
    """An ingress commit's metadata: where this router's later forwards start in each lane."""
    return orjson.dumps(
        {f"{topic}|{partition}": o for (topic, partition), o in marks.items()}
    ).decode()


def lane_marks(metadata: str | None) -> dict[LanePartition, int]:
    """`marks_metadata` read back; {} for a commit without (or with unreadable) metadata."""
    try:
        marks = orjson.loads(metadata or "{}")
        parsed = {}
        for key, offset in marks.items():
            topic, partition = key.rsplit("|", 1)
            parsed[topic, int(partition)] = int(offset)
    except (ValueError, AttributeError):
        return {}
    return parsed


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")
