"""The lane workers' DLQ records, counted from DLQ end offsets (streams.lane_dlq)."""

from __future__ import annotations

from streams.lane_dlq import LaneDlqCounts


def test_a_tenant_in_a_dedicated_lane_counts_its_dlq_growth_from_its_entry() -> None:
    counts = LaneDlqCounts()
    counts.start("a", 40)  # 40 DLQ records from its time in the shared lane: counted there

    assert counts.watch(["a"]) == ["a"]
    assert counts.counted({"a": 43}) == {"a": 3}
    assert counts.counted({"a": 43}) == {}
    assert counts.counted({"a": 50}) == {"a": 7}


def test_a_tenant_found_in_a_lane_counts_from_its_first_read() -> None:
    counts = LaneDlqCounts()
    counts.watch(["a"])  # restored in a dedicated lane: where its DLQ was then is unknown

    assert counts.counted({"a": 90}) == {}
    assert counts.counted({"a": 92}) == {"a": 2}


def test_leaving_counts_the_rest_and_stops() -> None:
    counts = LaneDlqCounts()
    counts.start("a", 10)
    counts.watch(["a"])
    counts.counted({"a": 12})

    assert counts.stop("a", 15) == 3
    assert counts.counted({"a": 20}) == {}  # the shared lane counts it now
    assert counts.stop("b", 4) == 0  # never watched
    counts.start("c", 1)
    assert counts.stop("c", None) == 0  # end unknown: not guessed


def test_only_the_tenants_in_dedicated_lanes_are_watched() -> None:
    counts = LaneDlqCounts()
    counts.start("a", 0)
    counts.start("b", 0)

    assert counts.watch(["b", "c"]) == ["b", "c"]
    assert counts.counted({"a": 5, "b": 1, "c": 7}) == {"b": 1}


def test_a_recreated_dlq_topic_counts_afresh() -> None:
    counts = LaneDlqCounts()
    counts.start("a", 100)
    counts.watch(["a"])

    assert counts.counted({"a": 3}) == {}  # deleted and onboarded again: a new topic
    assert counts.counted({"a": 5}) == {"a": 2}
