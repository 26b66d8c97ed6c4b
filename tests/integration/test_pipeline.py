"""Ingress -> processor -> out/DLQ through the real broker and a real worker process."""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict

import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord

from streams.hl7.synthetic import MALFORMED_KINDS, SyntheticFeed, batch, malformed
from streams.processing import HEADER_IDEMPOTENCY_KEY, HEADER_TENANT, guess_control_id
from streams.records import DlqRecord, NormalizedEvent
from streams.topics import TopicNames
from tests.harness import Api, WorkerProcess, consume_until

pytestmark = pytest.mark.integration

TENANTS = ("st-marys", "northside-lab", "riverside-clinic")
VALID_PER_TENANT = 150


async def test_mixed_corpus_ends_in_out_or_dlq_for_its_tenant(
    worker: WorkerProcess, worker_env: dict, producer: AIOKafkaProducer, bootstrap: str, api: Api
) -> None:
    topics = TopicNames(worker_env["LANEWAY_TOPIC_PREFIX"])
    for tenant in TENANTS:  # unknown tenants' records are never emitted (docs/limits.md)
        await api.onboard(tenant)
    rng = random.Random(7)
    expected_events: dict[str, list[str]] = defaultdict(list)
    expected_rejects: dict[str, Counter[str]] = defaultdict(Counter)

    for seed, tenant in enumerate(TENANTS):
        feed = SyntheticFeed(seed=seed, control_id_prefix=f"{tenant[:3].upper()}-")
        for index in range(VALID_PER_TENANT):
            message = feed.next_message()
            await producer.send(topics.ingress, message, key=tenant.encode())
            expected_events[tenant].append(guess_control_id(message))
            if index % 10 == 0:  # a malformed message of every kind, interleaved
                kind = MALFORMED_KINDS[(index // 10) % len(MALFORMED_KINDS)]
                sample = malformed(rng, kind)
                await producer.send(topics.ingress, sample.payload, key=tenant.encode())
                expected_rejects[tenant][sample.expected_code] += 1
        # One FHS/BHS batch record carrying three messages.
        batched = [feed.next_message() for _ in range(3)]
        await producer.send(topics.ingress, batch(batched, line_end=b"\r\n"), key=tenant.encode())
        expected_events[tenant].extend(guess_control_id(message) for message in batched)
    await producer.send(topics.ingress, b"MSH|^~\\&|X", key=b"Not A Tenant!")
    await producer.flush()

    wanted = sum(len(ids) for ids in expected_events.values()) + sum(
        sum(counts.values()) for counts in expected_rejects.values()
    )
    names = [topics.out(t) for t in TENANTS] + [topics.dlq(t) for t in TENANTS]
    records = await consume_until(
        bootstrap, [*names, topics.dlq_unrouted], lambda got: len(got) >= wanted + 1, 120.0
    )
    assert len(records) == wanted + 1, worker.log_tail()

    for tenant in TENANTS:
        events = [_event(r) for r in records if r.topic == topics.out(tenant)]
        rejects = [_reject(r) for r in records if r.topic == topics.dlq(tenant)]
        # Every valid message arrives once, in ingress order, on its own tenant's topic.
        assert [e.control_id for e in events] == expected_events[tenant]
        assert {e.tenant for e in events} == {tenant}
        assert len({e.idempotency_key for e in events}) == len(events)
        assert Counter(r.reason for r in rejects) == expected_rejects[tenant]
        assert {r.tenant for r in rejects} == {tenant}
    unrouted = [_reject(r) for r in records if r.topic == topics.dlq_unrouted]
    assert [r.reason for r in unrouted] == ["invalid_tenant_key"]


async def test_event_carries_headers_and_a_reference_to_its_ingress_record(
    worker: WorkerProcess, worker_env: dict, producer: AIOKafkaProducer, bootstrap: str, api: Api
) -> None:
    topics = TopicNames(worker_env["LANEWAY_TOPIC_PREFIX"])
    tenant = "ref-check"
    await api.onboard(tenant)
    message = SyntheticFeed(seed=99, control_id_prefix="REF-").next_message()
    metadata = await (await producer.send(topics.ingress, message, key=tenant.encode()))

    records = await consume_until(bootstrap, [topics.out(tenant)], lambda got: len(got) >= 1, 60)

    assert len(records) == 1, worker.log_tail()
    event = _event(records[0])
    assert (event.source.topic, event.source.partition, event.source.offset) == (
        topics.ingress,
        metadata.partition,
        metadata.offset,
    )
    headers = dict(records[0].headers)
    assert headers[HEADER_TENANT] == tenant.encode()
    assert headers[HEADER_IDEMPOTENCY_KEY] == event.idempotency_key.encode()
    assert records[0].key == tenant.encode()


def _event(record: ConsumerRecord) -> NormalizedEvent:
    return NormalizedEvent.model_validate(json.loads(record.value))


def _reject(record: ConsumerRecord) -> DlqRecord:
    return DlqRecord.model_validate(json.loads(record.value))
