"""Poison never stalls: one record's bug, size or unknown tenant parks that record, the rest flow.

Pure processing, the publisher against a fake producer, and the router's containment; the real
broker is in tests/integration/test_containment.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import (
    CorruptRecordException,
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotEnoughReplicasError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from agents.lanes.router import Router
from agents.state import publisher as publisher_module
from agents.state.publisher import BatchPublisher, refused_as_final
from streams import processing
from streams.app import create_app
from streams.hl7 import Hl7Error, extract
from streams.hl7.synthetic import SyntheticFeed
from streams.processing import (
    HEADER_SOURCE,
    INTERNAL_ERROR,
    KAFKA_REFUSED,
    UNKNOWN_TENANT,
    IngressRecord,
    Origin,
    OutgoingRecord,
    forward_to_lane,
    lane_record_origin,
    park,
    process_ingress_record,
    process_records,
)
from streams.records import DlqRecord
from streams.route_records import servable_lane
from streams.settings import Settings
from streams.topics import TopicNames
from tests.unit.router_fakes import offline_router

TOPICS = TopicNames()


def record(tenant: bytes, offset: int, value: bytes, timestamp_ms: int = 1_700_000_000_000):
    return IngressRecord(tenant, value, TOPICS.ingress, 2, offset, timestamp_ms)


def messages(count: int) -> list[bytes]:
    feed = SyntheticFeed(seed=4, control_id_prefix="C", escape_rate=0)
    return [feed.next_message() for _ in range(count)]


def dlq(output: OutgoingRecord) -> DlqRecord:
    assert output.is_dlq
    return DlqRecord.model_validate_json(output.value)


# ------------------------------------------------------------------ processing


def test_an_exception_for_one_record_parks_it_and_the_others_are_processed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    payloads = messages(5)
    poison = payloads[2]

    def extract_or_fail(raw: bytes) -> Any:
        if raw == poison:
            raise ZeroDivisionError("a bug that only this message hits")
        return extract(raw)

    monkeypatch.setattr(processing, "extract", extract_or_fail)
    records = [record(b"acme", offset, value) for offset, value in enumerate(payloads)]

    outputs = process_records(records, TOPICS)

    assert [output.is_dlq for output in outputs] == [False, False, True, False, False]
    parked = dlq(outputs[2])
    assert parked.reason == INTERNAL_ERROR == outputs[2].reason
    assert parked.detail == "ZeroDivisionError while processing"  # type name only
    assert parked.ref == "2-2-0"
    assert outputs[2].topic == TOPICS.dlq("acme")


def test_an_exception_outside_message_processing_parks_the_whole_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug before the per-message guard (here: splitting shaping lookup) is contained too."""
    payloads = messages(3)

    def shapers(tenant: str) -> None:
        if tenant == "broken":
            raise RuntimeError("shaper lookup bug")

    records = [
        record(b"acme", 0, payloads[0]),
        record(b"broken", 1, payloads[1]),
        record(b"acme", 2, payloads[2]),
    ]

    outputs = process_records(records, TOPICS, shapers)

    assert [output.is_dlq for output in outputs] == [False, True, False]
    assert dlq(outputs[1]).reason == INTERNAL_ERROR
    assert outputs[1].topic == TOPICS.dlq("broken")


def test_records_of_an_unknown_tenant_go_by_reference_to_the_unrouted_dlq() -> None:
    payloads = messages(3)
    records = [
        record(b"acme", 0, payloads[0]),
        record(b"deleted", 1, payloads[1]),
        record(b"acme", 2, payloads[2]),
    ]

    outputs = process_records(records, TOPICS, unknown=lambda r: r.key == b"deleted")

    assert [output.topic for output in outputs] == [
        TOPICS.out("acme"),
        TOPICS.dlq_unrouted,
        TOPICS.out("acme"),
    ]
    parked = dlq(outputs[1])
    assert parked.reason == UNKNOWN_TENANT
    assert parked.tenant == "deleted"
    assert parked.original_base64 is None  # nothing of an unknown tenant's message is emitted
    assert parked.size == len(payloads[1])


def test_no_timestamp_makes_processing_raise() -> None:
    [output] = process_ingress_record(record(b"acme", 0, messages(1)[0], 2**62), TOPICS)

    assert not output.is_dlq


def test_an_unreadable_origin_header_makes_the_lane_record_its_own_origin() -> None:
    assert lane_record_origin(b"acme", b"x", [(HEADER_SOURCE, b"garbage")]) is None
    assert lane_record_origin(b"acme", b"x", [(HEADER_SOURCE, b"t|a|b|c")]) is None


# ------------------------------------------------------------------ publisher


@pytest.mark.parametrize(
    ("error", "final"),
    [
        (MessageSizeTooLargeError(), True),
        (RecordListTooLargeError(), True),
        (CorruptRecordException(), True),
        (RecordTooLargeError(), True),
        (KafkaConnectionError(), False),
        (KafkaTimeoutError(), False),
        (NotEnoughReplicasError(), False),
        (OutOfOrderSequenceNumber(), False),  # the renewed producer's business
        (ProducerClosed(), False),
        (TimeoutError(), False),
    ],
)
def test_only_refusals_of_the_record_itself_are_final(error: Exception, final: bool) -> None:
    assert refused_as_final(error) is final


class _Batch:
    def __init__(self, limit: int) -> None:
        self.records: list[bytes] = []
        self._limit = limit

    def append(self, *, key: bytes, value: bytes, timestamp: None, headers: Any) -> object:
        if self.records and sum(map(len, self.records)) + len(value) > self._limit:
            return None
        self.records.append(value)
        return object()

    def record_count(self) -> int:
        return len(self.records)


class _Metadata:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class _KnowsEveryTopic:
    """A producer's client whose metadata lists every topic (with one partition)."""

    def __init__(self) -> None:
        self.cluster = self

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}


class FakeProducer:
    """A producer whose broker refuses any batch holding a value above `max_value` (as Kafka
    does with max.message.bytes), and fails the first `flaky` sends in a retriable way."""

    def __init__(self, max_value: int, flaky: int = 0) -> None:
        self.max_value = max_value
        self.flaky = flaky
        self.written: dict[str, list[bytes]] = {}
        self.client = _KnowsEveryTopic()
        self.declarations: list[list[str]] = []  # the topics of each creation request

    def create_batch(self) -> _Batch:
        return _Batch(limit=10_000)

    async def send_batch(self, batch: _Batch, topic: str, partition: int) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.flaky:
            self.flaky -= 1
            future.set_exception(KafkaConnectionError())
        elif any(len(value) > self.max_value for value in batch.records):
            future.set_exception(MessageSizeTooLargeError())
        else:
            log = self.written.setdefault(topic, [])
            future.set_result(_Metadata(len(log)))
            log.extend(batch.records)
        return future


@pytest.fixture
def publisher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[FakeProducer], BatchPublisher]:
    app = create_app(Settings(_env_file=None, data_dir=tmp_path, web_port=6141))  # type: ignore[call-arg]
    monkeypatch.setattr(publisher_module, "_RETRY_FIRST_DELAY_S", 0.001)

    def build(fake: FakeProducer) -> BatchPublisher:
        published = BatchPublisher(app)
        renewing = published._producer
        renewing._producer = fake  # type: ignore[assignment]
        monkeypatch.setattr(renewing, "renew", lambda broken: None)

        async def declare(topics: set[str]) -> None:
            fake.declarations.append(sorted(topics))

        monkeypatch.setattr(published, "_declare", declare)
        return published

    return build


async def test_a_record_kafka_refuses_is_parked_and_the_others_are_delivered(
    publisher: Callable[[FakeProducer], BatchPublisher],
) -> None:
    payloads = messages(4)
    huge = payloads[1] + b"".join(b"\rOBX|%d|ST|C^T||value||||||F" % n for n in range(100))
    records = [record(b"acme", n, value) for n, value in enumerate(payloads)]
    records[1] = record(b"acme", 1, huge)
    outputs = process_records(records, TOPICS)
    # The broker takes every output but the big event.
    fake = FakeProducer(max_value=len(outputs[1].value) - 1)
    assert all(len(o.value) < len(outputs[1].value) for o in outputs if o is not outputs[1])
    published = publisher(fake)

    written = await published.publish(outputs)

    events = fake.written[TOPICS.out("acme")]
    assert len(events) == 3
    [parked] = [DlqRecord.model_validate_json(v) for v in fake.written[TOPICS.dlq("acme")]]
    assert parked.reason == KAFKA_REFUSED
    assert parked.detail.endswith("MessageSizeTooLargeError")
    assert parked.ref == "2-1-0" and parked.size == len(huge) and parked.original_base64 is None
    assert published._app.dlq_reasons[KAFKA_REFUSED] == 1
    assert written[TOPICS.out("acme"), 0] == 2
    assert written[TOPICS.dlq("acme"), 0] == 0


async def test_retriable_failures_are_retried_until_delivered(
    publisher: Callable[[FakeProducer], BatchPublisher],
) -> None:
    outputs = process_records([record(b"acme", 0, messages(1)[0])], TOPICS)
    fake = FakeProducer(max_value=100_000, flaky=3)

    await publisher(fake).publish(outputs)

    assert len(fake.written[TOPICS.out("acme")]) == 1
    assert TOPICS.dlq("acme") not in fake.written


async def test_a_tenants_topics_are_created_with_its_first_records(
    publisher: Callable[[FakeProducer], BatchPublisher],
) -> None:
    fake = FakeProducer(max_value=100_000)
    published = publisher(fake)
    first, second = (
        record(b"acme", n, m)._replace(incarnation="a" * 32) for n, m in enumerate(messages(2))
    )
    published.declared(TOPICS.shared_lane)

    await published.publish(process_records([first], TOPICS))
    await published.publish(process_records([second, record(b"acme", 2, b"not HL7")], TOPICS))
    await published.publish([forward_to_lane(first, TOPICS.shared_lane)])

    # The output topic with the first event, the DLQ topic with the first reject; each once.
    assert fake.declarations == [[TOPICS.out("acme")], [TOPICS.dlq("acme")]]


async def test_a_new_incarnation_or_a_failed_send_creates_the_topics_again(
    publisher: Callable[[FakeProducer], BatchPublisher],
) -> None:
    fake = FakeProducer(max_value=100_000)
    published = publisher(fake)
    message = messages(1)[0]
    old, new = (record(b"acme", 0, message)._replace(incarnation=c * 32) for c in "ab")

    await published.publish(process_records([old], TOPICS))
    # The id purged (its topics deleted) and onboarded again: a new incarnation.
    await published.publish(process_records([new], TOPICS))
    await published.publish(process_records([new], TOPICS))
    fake.flaky = 1  # a topic deleted meanwhile fails the send: the retry creates it again
    await published.publish(process_records([new], TOPICS))

    assert fake.declarations == [[TOPICS.out("acme")]] * 3


# ------------------------------------------------------------------ router


@pytest.mark.parametrize(
    ("lane", "expected"), [(0, 0), (3, 3), (4, None), (7, None), (-1, None), (None, None)]
)
def test_a_lane_index_no_lane_worker_reads_falls_back_to_shared(
    lane: int | None, expected: int | None
) -> None:
    assert servable_lane(lane, dedicated_lanes=4) == expected


def _router(tmp_path: Path, states: dict[str, dict[str, Any]]) -> Router:
    return offline_router(tmp_path, states, web_port=6142, dedicated_lanes=2)


def test_a_restored_lane_above_the_pool_sends_records_to_the_shared_lane(tmp_path: Path) -> None:
    router = _router(tmp_path, {"acme": {"lane": 3}, "beta": {"lane": 1}})
    partitions = set(range(router.app.laneway.ingress_partitions))

    router.states.restore(partitions, now=1_700_000_000.0)

    acme = router.forwarder.route(record(b"acme", 0, b"MSH|"), now=1_700_000_000.0)
    beta = router.forwarder.route(record(b"beta", 1, b"MSH|"), now=1_700_000_000.0)
    assert acme is not None and acme.topic == TOPICS.shared_lane
    assert beta is not None and (beta.topic, beta.partition) == (TOPICS.dedicated_lanes, 1)


def test_a_record_the_router_cannot_route_goes_to_the_unrouted_dlq(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = _router(tmp_path, {})

    class BrokenVolumes:
        def record(self, tenant: str, sent_at: float, size: int) -> None:
            raise KeyError("volume bug")

    monkeypatch.setattr(router.forwarder, "volumes", BrokenVolumes())

    parked = router.forwarder.route_contained(record(b"acme", 5, b"MSH|x"), now=1_700_000_000.0)

    assert parked is not None and parked.topic == TOPICS.dlq_unrouted
    assert dlq(parked).reason == INTERNAL_ERROR
    assert router.app.dlq_reasons[INTERNAL_ERROR] == 1


async def test_a_parked_record_is_nothing_for_a_lane_to_drain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Else a tenant with a parked record would wait forever for a DLQ to 'drain' on a move."""
    router = _router(tmp_path, {})
    forward = router.forwarder.route(record(b"acme", 0, b"MSH|"), now=1_700_000_000.0)
    error = Hl7Error(INTERNAL_ERROR, "KeyError while routing")
    parked = park(Origin(record(b"acme", 1, b"MSH|")), TOPICS, error, unrouted=True)

    async def publish(outputs: list[OutgoingRecord]) -> dict[tuple[str, int], int]:
        return {(output.topic, output.partition): 5 for output in outputs}

    monkeypatch.setattr(router.forwarder.publisher, "publish", publish)
    assert forward is not None

    await router.forwarder.forward([forward, parked])

    assert router.forwarder.routes.last_forwarded("acme") == (TOPICS.shared_lane, 2, 5)
