"""The DLQ replay's filter and its crash-safe position (pure parts, no broker)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from aiokafka.structs import OffsetAndMetadata
from hypothesis import given
from hypothesis import strategies as st
from multidict import MultiDict

from agents.ingest.replay import PendingWrite, ReplayFilter, ReplayPosition

MAY_1 = int(datetime(2024, 5, 1, tzinfo=UTC).timestamp() * 1000)
MAY_2 = int(datetime(2024, 5, 2, tzinfo=UTC).timestamp() * 1000)


def query(*pairs: tuple[str, str]) -> MultiDict[str]:
    return MultiDict(pairs)


def test_no_parameters_replay_everything() -> None:
    replay_filter = ReplayFilter.from_query(query())

    assert replay_filter == ReplayFilter()
    assert replay_filter.matches("anything", 0)


def test_reasons_repeated_or_comma_separated() -> None:
    replay_filter = ReplayFilter.from_query(
        query(("reason", "bad_segment, missing_msh_10"), ("reason", "unsupported_version"))
    )

    assert replay_filter.reasons == {"bad_segment", "missing_msh_10", "unsupported_version"}
    assert replay_filter.matches("missing_msh_10", MAY_1)
    assert not replay_filter.matches("no_msh", MAY_1)


def test_time_range_includes_since_and_excludes_until() -> None:
    replay_filter = ReplayFilter.from_query(
        query(("since", "2024-05-01T00:00:00Z"), ("until", "2024-05-02T02:00:00+02:00"))
    )

    assert (replay_filter.since_ms, replay_filter.until_ms) == (MAY_1, MAY_2)
    assert replay_filter.matches("x", MAY_1)
    assert replay_filter.matches("x", MAY_2 - 1)
    assert not replay_filter.matches("x", MAY_1 - 1)
    assert not replay_filter.matches("x", MAY_2)


@pytest.mark.parametrize(
    ("pairs", "complaint"),
    [
        ((("since", "yesterday"),), "'since' is not an ISO 8601 timestamp"),
        ((("until", "2024-05-01T00:00:00"),), "'until' needs a UTC offset"),
        ((("since", "2024-05-02T00:00Z"), ("until", "2024-05-01T00:00Z")), "later than"),
        ((("since", "2024-05-01T00:00Z"), ("until", "2024-05-01T00:00Z")), "later than"),
    ],
)
def test_bad_parameters_are_named(pairs: tuple[tuple[str, str], ...], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        ReplayFilter.from_query(query(*pairs))


def test_no_commit_starts_at_the_beginning() -> None:
    assert ReplayPosition.from_commit(None) == ReplayPosition()
    assert ReplayPosition.from_commit(OffsetAndMetadata(-1, "")) == ReplayPosition()


def test_a_plain_offset_of_an_older_version_is_kept() -> None:
    assert ReplayPosition.from_commit(OffsetAndMetadata(7, "")) == ReplayPosition(7)


def test_replayed_offsets_merge_into_the_next_offset() -> None:
    position = ReplayPosition(2).with_done(4).with_done(5)

    assert position == ReplayPosition(2, ((4, 6),))
    assert [position.is_done(o) for o in range(7)] == [1, 1, 0, 0, 1, 1, 0]
    assert position.with_done(3).with_done(2) == ReplayPosition(6)


def test_with_done_clears_the_pending_write() -> None:
    pending = PendingWrite(3, {0: 10, 1: 20})

    assert ReplayPosition(3).with_pending(pending).with_done(3) == ReplayPosition(4)


def test_state_round_trips_through_a_commit() -> None:
    position = ReplayPosition(2, ((4, 6), (9, 10)), PendingWrite(7, {0: 10, 3: 42}))

    commit = OffsetAndMetadata(position.next_offset, position.to_metadata())

    assert ReplayPosition.from_commit(commit) == position
    assert len(commit.metadata) < 100  # Kafka caps commit metadata (4096 bytes by default)


@given(st.lists(st.integers(min_value=0, max_value=40), max_size=40))
def test_done_offsets_are_exactly_those_marked(offsets: list[int]) -> None:
    position = ReplayPosition()
    for offset in offsets:
        position = position.with_done(offset)
        position = ReplayPosition.from_commit(
            OffsetAndMetadata(position.next_offset, position.to_metadata())
        )

    assert {o for o in range(50) if position.is_done(o)} == set(offsets)
    assert all(start > position.next_offset for start, _ in position.done)
