"""What the router stores in Kafka about its routes (streams.route_records), read back."""

from __future__ import annotations

from streams.cutover import Hold
from streams.lanes import LaneMove
from streams.route_records import (
    cut_entry,
    hold_entry,
    lane_marks,
    marks_metadata,
    restored_cut,
    restored_hold,
)

SHARED = "laneway.lane.shared"
DEDICATED = "laneway.lane.dedicated"


def test_a_commits_lane_marks_read_back_as_written() -> None:
    marks = {(SHARED, 3): 120, (DEDICATED, 0): 7}

    assert lane_marks(marks_metadata(marks)) == marks


def test_a_commit_without_readable_marks_skips_nothing() -> None:
    assert lane_marks(None) == {}
    assert lane_marks("") == {}
    assert lane_marks("not json") == {}
    assert lane_marks('{"no-separator": 1}') == {}
    assert lane_marks("[1, 2]") == {}


def test_a_persisted_cut_and_hold_are_resumed() -> None:
    move = LaneMove("a", None, 1, "rate_above_contract", 1_700_000_000.5)
    document = {"cut": cut_entry(move), "hold": hold_entry(Hold(2, 41))}

    assert restored_cut("a", document, dedicated_lanes=2) == move
    assert restored_hold(document) == (2, 41)
    assert restored_cut("a", {"cut": None}, dedicated_lanes=2) is None
    assert restored_hold({"hold": None}) is None


def test_a_cut_into_or_out_of_a_lane_no_worker_reads_is_not_resumed() -> None:
    into = {"cut": cut_entry(LaneMove("a", None, 3, "pinned", 1.0))}
    out_of = {"cut": cut_entry(LaneMove("a", 5, None, "calm_and_drained", 1.0))}

    assert restored_cut("a", into, dedicated_lanes=2) is None
    assert restored_cut("a", out_of, dedicated_lanes=2) is None
