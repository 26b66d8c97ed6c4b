"""Incarnation headers on the way from ingress through a lane to processing: a record keeps the
stamp ingest gave it, so the processor and fetch-by-ref can tell an earlier tenant's records of
the same id apart (the integration side is tests/integration/test_lifecycle.py)."""

from __future__ import annotations

from streams.hl7.synthetic import SyntheticFeed
from streams.processing import (
    HEADER_SOURCE,
    UNKNOWN_TENANT,
    IngressRecord,
    forward_to_lane,
    incarnation_of,
    lane_record_origin,
    process_records,
)
from streams.records import HEADER_INCARNATION, DlqRecord
from streams.topics import TopicNames

TOPICS = TopicNames()
OLD, NEW = "a" * 32, "b" * 32


def record(offset: int, incarnation: str | None) -> IngressRecord:
    value = SyntheticFeed(seed=offset, escape_rate=0).next_message()
    return IngressRecord(b"acme", value, TOPICS.ingress, 1, offset, 1_700_000_000_000, incarnation)


def test_the_incarnation_header_is_read_from_a_records_headers() -> None:
    assert incarnation_of([("other", b"x"), (HEADER_INCARNATION, NEW.encode())]) == NEW
    assert incarnation_of([("other", b"x")]) is None
    assert incarnation_of(()) is None


def test_a_lane_record_carries_the_ingress_records_incarnation() -> None:
    for incarnation in (NEW, None):
        ingress = record(7, incarnation)
        forward = forward_to_lane(ingress, TOPICS.shared_lane, 1)

        assert lane_record_origin(forward.key, forward.value, forward.headers) == ingress
        assert [name for name, _ in forward.headers].count(HEADER_INCARNATION) == (
            incarnation is not None
        )


def test_a_lane_record_without_an_origin_is_still_its_own_origin() -> None:
    headers = [(HEADER_INCARNATION, NEW.encode())]

    assert lane_record_origin(b"acme", b"x", headers) is None
    assert lane_record_origin(b"acme", b"x", [(HEADER_SOURCE, b"garbage"), *headers]) is None


def test_records_the_predicate_calls_unknown_are_parked_unrouted_and_never_emitted() -> None:
    records = [record(1, OLD), record(2, NEW), record(3, None)]

    outputs = process_records(records, TOPICS, unknown=lambda r: r.incarnation == OLD)

    assert [output.topic for output in outputs] == [
        TOPICS.dlq_unrouted,
        TOPICS.out("acme"),
        TOPICS.out("acme"),
    ]
    parked = DlqRecord.model_validate_json(outputs[0].value)
    assert (parked.reason, parked.original_base64) == (UNKNOWN_TENANT, None)
