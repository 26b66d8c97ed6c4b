"""Fault containment on the real broker: a poison input is accounted for exactly once (in the
tenant's DLQ, by reference when it would not fit, or in the unrouted DLQ) while a well-behaved
tenant ON THE SAME INGRESS PARTITION keeps receiving its events within a few seconds.

A dedicated worker with a small size contract (LANEWAY_MAX_MESSAGE_BYTES = 128 KiB) keeps the
oversize cases fast.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import DefaultPartitioner

from streams.hl7.synthetic import SyntheticFeed, malformed
from streams.topics import TopicNames
from tests.harness import Api, WorkerProcess, consume_until, own_worker_env

pytestmark = pytest.mark.integration

MAX_MESSAGE_BYTES = 128 * 1024
PARTITIONS = 4
QUIET_EVERY_S = 0.1
QUIET_MAX_LATENCY_S = 3.0  # "a few seconds", with room for a busy 2-core machine
WAIT_S = 60.0


@pytest.fixture(scope="module")
def small(
    worker_env: dict, admin_token: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """A shared worker of its own (own app id and topics) with a 128 KiB size contract."""
    base = tmp_path_factory.mktemp("small-worker")
    env = own_worker_env(
        worker_env,
        "small",
        base / "data",
        ingress_partitions=str(PARTITIONS),
        lanes_enabled="false",
        max_message_bytes=str(MAX_MESSAGE_BYTES),
    )
    with WorkerProcess(env, base / "small-worker.log") as process:
        yield process


@pytest.fixture
async def api(small: WorkerProcess) -> AsyncIterator[Api]:
    async with Api.of(small) as client:
        yield client


@pytest.fixture
def topics(small: WorkerProcess) -> TopicNames:
    return small.topics


def partition_of(key: bytes) -> int:
    partitions = list(range(PARTITIONS))
    return DefaultPartitioner()(key, partitions, partitions)


def tenant_on(partition: int, name: str) -> str:
    """A fresh tenant id whose records land on ingress `partition`."""
    while True:
        tenant = f"{name}-{uuid.uuid4().hex[:8]}"
        if partition_of(tenant.encode()) == partition:
            return tenant


def padded_bad_segment(size: int, seed: int) -> bytes:
    """A message of exactly `size` bytes that passes ingest's header checks and fails
    processing (`bad_segment`), padded with one long NTE segment."""
    message = malformed(random.Random(seed), "bad_segment").payload
    padding = size - len(message) - len(b"NTE|1||\r")
    return message + b"NTE|1||" + b"x" * padding + b"\r"


class QuietTenant:
    """Streams one message every QUIET_EVERY_S over HTTP while a test injects its fault."""

    def __init__(self, api: Api, tenant: dict[str, Any], topics: TopicNames) -> None:
        self.api, self.tenant, self.topics = api, tenant, topics
        self.feed = SyntheticFeed(seed=7, control_id_prefix="QUIET-", escape_rate=0)
        self.accepted = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> QuietTenant:
        self._task = asyncio.create_task(self._stream())
        await asyncio.sleep(1.0)  # flowing before the fault, and across it
        return self

    async def __aexit__(self, *_: object) -> None:
        await asyncio.sleep(1.0)
        self._stop.set()
        assert self._task is not None
        await self._task

    async def _stream(self) -> None:
        while not self._stop.is_set():
            status, answer = await self.api.send(
                self.tenant["id"], self.tenant["token"], self.feed.next_message()
            )
            assert status == 202, answer
            self.accepted += 1
            await asyncio.sleep(QUIET_EVERY_S)

    async def assert_kept_flowing(self, bootstrap: str) -> None:
        """Every accepted message became an event, each within QUIET_MAX_LATENCY_S of its
        ingress write (the out record's timestamp against the event's `received_at`)."""
        events = await consume_until(
            bootstrap,
            [self.topics.out(self.tenant["id"])],
            lambda got: len(got) >= self.accepted,
            WAIT_S,
        )
        assert len(events) == self.accepted > 10
        latencies = [_latency_s(event) for event in events]
        assert max(latencies) < QUIET_MAX_LATENCY_S, sorted(latencies)[-5:]


def _latency_s(record: ConsumerRecord) -> float:
    received = datetime.fromisoformat(json.loads(record.value)["received_at"]).timestamp()
    return record.timestamp / 1000 - received


def _about(records: list[ConsumerRecord], partition: int, offset: int) -> list[dict[str, Any]]:
    documents = [json.loads(record.value) for record in records]
    return [
        d
        for d in documents
        if (d["source"]["partition"], d["source"]["offset"])
        == (
            partition,
            offset,
        )
    ]


async def fetch_original(api: Api, tenant: dict[str, Any], ref: str) -> tuple[int, bytes]:
    url = f"{api.base_url}/api/tenants/{tenant['id']}/messages/{ref}"
    headers = {"Authorization": f"Bearer {tenant['token']}"}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, await response.read()


async def test_a_message_too_large_for_its_dlq_record_is_parked_by_reference(
    api: Api, topics: TopicNames, bootstrap: str, small: WorkerProcess
) -> None:
    partition = random.randrange(PARTITIONS)
    quiet = await api.onboard(tenant_on(partition, "quiet"))
    big = await api.onboard(tenant_on(partition, "big"))
    original = padded_bad_segment(MAX_MESSAGE_BYTES - 64, seed=3)

    async with QuietTenant(api, quiet, topics) as flow:
        status, answer = await api.send(big["id"], big["token"], original)
        assert status == 202, answer

    await flow.assert_kept_flowing(bootstrap)
    [parked_record] = await consume_until(
        bootstrap, [topics.dlq(big["id"])], lambda got: len(got) >= 1, WAIT_S
    )
    await asyncio.sleep(1.0)  # anything written twice would be there by now
    dlq = await consume_until(bootstrap, [topics.dlq(big["id"])], lambda got: False, 2.0)
    events = await consume_until(bootstrap, [topics.out(big["id"])], lambda got: False, 2.0)
    assert len(dlq) == 1 and events == [], small.log_tail()
    parked = json.loads(parked_record.value)
    assert parked["reason"] == "bad_segment"
    assert parked["original_base64"] is None
    assert parked["size"] == len(original)
    assert parked["sha256"] == hashlib.sha256(original).hexdigest()
    status, body = await fetch_original(api, big, parked["ref"])
    assert status == 200 and body == original

    # A replay reads a by-reference original from ingress: it lands (and is parked) again.
    status, answer = await api.call(
        "POST", f"/api/tenants/{big['id']}/dlq/replay", token=api.admin_token
    )
    assert (status, answer["replayed"]) == (200, 1), answer
    again = await consume_until(
        bootstrap, [topics.dlq(big["id"])], lambda got: len(got) >= 2, WAIT_S
    )
    replayed = json.loads(again[1].value)
    assert (replayed["sha256"], replayed["size"]) == (parked["sha256"], len(original))
    assert replayed["ref"] != parked["ref"]


async def test_poison_written_straight_to_ingress_never_stalls_the_partition(
    api: Api,
    topics: TopicNames,
    bootstrap: str,
    small: WorkerProcess,
    producer: AIOKafkaProducer,
    admin: AIOKafkaAdminClient,
) -> None:
    """Three poisons on the quiet tenant's partition: a DLQ record Kafka refuses as too large
    (the tenant's DLQ topic allows only 4 KiB), a record of a tenant nobody onboarded, and a
    record whose key is no tenant id."""
    partition = random.randrange(PARTITIONS)
    quiet = await api.onboard(tenant_on(partition, "quiet"))
    refused_id = tenant_on(partition, "refused")
    await admin.create_topics(
        [NewTopic(topics.dlq(refused_id), 1, 1, topic_configs={"max.message.bytes": "4096"})]
    )
    refused = await api.onboard(refused_id)  # keeps the existing DLQ topic as it is
    unknown_id = tenant_on(partition, "never-onboarded")
    refused_original = padded_bad_segment(6 * 1024, seed=4)

    async with QuietTenant(api, quiet, topics) as flow:
        sent = [
            await producer.send_and_wait(
                topics.ingress, refused_original, key=refused_id.encode(), partition=partition
            ),
            await producer.send_and_wait(
                topics.ingress, b"MSH|^~\\&|X", key=unknown_id.encode(), partition=partition
            ),
            await producer.send_and_wait(
                topics.ingress, b"MSH|^~\\&|Y", key=b"Not_A_Tenant", partition=partition
            ),
        ]
        await asyncio.sleep(1.0)

    await flow.assert_kept_flowing(bootstrap)
    dlq_topics = [topics.dlq(refused["id"]), topics.dlq_unrouted]
    records = await consume_until(
        bootstrap,
        dlq_topics,
        lambda got: all(_about(got, meta.partition, meta.offset) for meta in sent),
        WAIT_S,
    )
    await asyncio.sleep(1.0)  # anything written twice would be there by now
    records = await consume_until(bootstrap, dlq_topics, lambda got: False, 2.0)
    [kafka_refused], [unknown], [invalid] = (
        _about(records, meta.partition, meta.offset) for meta in sent
    )
    assert kafka_refused["reason"] == "kafka_refused", small.log_tail()
    assert kafka_refused["detail"].endswith("MessageSizeTooLargeError")
    assert kafka_refused["original_base64"] is None
    assert kafka_refused["sha256"] == hashlib.sha256(refused_original).hexdigest()
    assert unknown["reason"] == "unknown_tenant" and unknown["original_base64"] is None
    assert invalid["reason"] == "invalid_tenant_key"
    assert base64.b64decode(invalid["original_base64"]) == b"MSH|^~\\&|Y"
    assert [r.topic for r in records if json.loads(r.value)["tenant"] == refused_id] == [
        topics.dlq(refused_id)
    ]
    events = await consume_until(bootstrap, [topics.out(refused_id)], lambda got: False, 1.0)
    assert events == []
