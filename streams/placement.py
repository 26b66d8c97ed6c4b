"""Cluster-wide lane occupancy: which tenants are in (or on their way to) each dedicated lane,
across every router of the deployment. Pure.

Each router owns the tenants of its ingress partitions, and every router publishes each placed
tenant's state (lane, `moved_at`, a cut in progress) to the compacted tenant-state topic that
every worker mirrors. A router so sees every tenant's placement: its own tenants from its own,
fresher, state (decisions not published yet included), the others' from their documents.

A tenant *claims* a dedicated lane while it is in it, or while a cut to it is in progress, from
the moment of that decision (`since`). A cut out of a dedicated lane releases the claim at once:
the tenant's new records already go elsewhere.

- `lane_loads`: claims per lane, what the "two choices, the less loaded wins" rule reads.
- `spread`: two routers deciding within the mirror's latency can still pick the same lane. On
  every evaluation each router checks its own tenants' claims against everyone's: in a lane
  claimed by several tenants, the first claim stays (a tenant pinned to that lane first, then
  the earliest `since`, then the smallest tenant id) and each later one moves to a lane nobody
  claims, while there is one. Every router computes the same order from the same documents, so
  the yielding tenants are the same whichever router looks, and each moves only its own.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Claim:
    tenant: str
    lane: int  # the dedicated lane it is in, or is being cut over to
    since: float  # when it was decided to go there
    pinned: bool = False  # an operator pinned it to this very lane: it never yields

    def rank(self) -> tuple[bool, float, str]:
        """Lower ranks keep a shared lane; the same everywhere for the same claims."""
        return (not self.pinned, self.since, self.tenant)


def route_claim(
    tenant: str,
    lane: int | None,
    moved_at: float | None,
    cut_to: int | None,
    cut_at: float | None,
    pinned_lane: int | None = None,
) -> Claim | None:
    """A tenant's claim from a route: `lane` and `moved_at` its current lane, `cut_to` and
    `cut_at` a cut in progress (`cut_at` None: no cut)."""
    if cut_at is not None:
        lane, since = cut_to, cut_at
    else:
        since = moved_at if moved_at is not None else 0.0
    if lane is None:
        return None
    return Claim(tenant, lane, since, pinned=pinned_lane == lane)


def document_claim(
    tenant: str, document: Mapping[str, Any], pinned_lane: int | None = None
) -> Claim | None:
    """A tenant's claim from its tenant-state document (see `streams.route_records`); None for
    a document that claims no lane or cannot be read."""
    try:
        cut = document.get("cut")
        if isinstance(cut, dict):
            return route_claim(tenant, None, None, _lane(cut.get("to")), float(cut["at"]))
        moved_at = document.get("moved_at")
        since = float(moved_at) if moved_at is not None else None
        return route_claim(tenant, _lane(document.get("lane")), since, None, None, pinned_lane)
    except (KeyError, TypeError, ValueError):
        return None


def lane_loads(claims: Iterable[Claim], dedicated_lanes: int) -> list[int]:
    """Claims per dedicated lane (claims of lanes beyond the pool are left out)."""
    loads = [0] * dedicated_lanes
    for claim in claims:
        if 0 <= claim.lane < dedicated_lanes:
            loads[claim.lane] += 1
    return loads


def spread(claims: Iterable[Claim], mine: Collection[str], dedicated_lanes: int) -> dict[str, int]:
    """tenant -> the free lane it moves to: each of `mine` that shares a lane with a claim
    ranked before it, while a lane nobody claims is left (see the module's rule)."""
    by_lane: dict[int, list[Claim]] = {}
    for claim in claims:
        if 0 <= claim.lane < dedicated_lanes:
            by_lane.setdefault(claim.lane, []).append(claim)
    free = [lane for lane in range(dedicated_lanes) if lane not in by_lane]
    later = [
        claim
        for lane in sorted(by_lane)
        for claim in sorted(by_lane[lane], key=Claim.rank)[1:]
        if not claim.pinned
    ]
    moves = {}
    # Every yielding claim, anyone's, takes the next free lane in one shared order, so two
    # routers never send their tenants to the same free lane.
    for claim, lane in zip(sorted(later, key=Claim.rank), free, strict=False):
        if claim.tenant in mine:
            moves[claim.tenant] = lane
    return moves


def _lane(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"not a lane: {value!r}")
    return value
