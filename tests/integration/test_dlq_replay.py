"""DLQ replay on the real worker and broker: serialized, idempotent, crash-safe and filterable.

The DLQ records are produced straight into the tenant's DLQ topic, each carrying a valid
synthetic original, so that reasons and parked times are chosen by the test and every replayed
original becomes one event on the tenant's out topic. "Written once" is checked on ingress itself,
read up to its end after the replay answered.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata

from agents.ingest.replay import PendingWrite, ReplayPosition
from agents.state.topic_admin import create_topics
from streams.hl7.synthetic import SyntheticFeed
from streams.processing import guess_control_id
from streams.settings import Settings
from streams.topics import TopicNames, TopicTable
from tests.harness import Api, consume_until
from tests.harness.quiet_tenant import quiet_tenant
from tests.integration.test_no_mirroring import read_topic

pytestmark = pytest.mark.integration

HOUR_MS = 3600 * 1000
ARRIVAL_TIMEOUT_S = 60.0


@pytest.fixture
def topics(worker_env: dict) -> TopicNames:
    return TopicNames(worker_env["LANEWAY_TOPIC_PREFIX"])


@pytest.fixture
def ingress(worker_env: dict, topics: TopicNames) -> list[TopicPartition]:
    partitions = range(int(worker_env["LANEWAY_INGRESS_PARTITIONS"]))
    return [TopicPartition(topics.ingress, partition) for partition in partitions]


@pytest.fixture
async def tenant(api: Api, request: pytest.FixtureRequest) -> dict[str, Any]:
    """A fresh tenant (with its token) named after the test."""
    name = request.node.originalname.removeprefix("test_")[:40].replace("_", "-")
    return await api.onboard(f"{name}-{uuid.uuid4().hex[:8]}")


async def park(
    producer: AIOKafkaProducer,
    admin: AIOKafkaAdminClient,
    topics: TopicNames,
    tenant_id: str,
    parked: list[tuple[str, int]],
) -> list[bytes]:
    """One DLQ record per (reason, parked-at ms), in order; their originals. The DLQ topic is
    created first, as the publisher creates it with a tenant's first reject."""
    table = TopicTable(Settings(_env_file=None, topic_prefix=topics.prefix))  # type: ignore[call-arg]
    assert await create_topics(admin, [table.spec(topics.dlq(tenant_id))]) == {}
    feed = SyntheticFeed(seed=11, control_id_prefix=f"RP{uuid.uuid4().hex[:6]}-", escape_rate=0)
    originals = [feed.next_message() for _ in parked]
    for original, (reason, timestamp_ms) in zip(originals, parked, strict=True):
        record = {
            "tenant": tenant_id,
            "control_id": guess_control_id(original),
            "reason": reason,
            "detail": "parked by the test",
            "idempotency_key": uuid.uuid4().hex,
            "ref": uuid.uuid4().hex,
            "source": {},
            "received_at": "2024-05-01T00:00:00.000+00:00",
            "original_base64": base64.b64encode(original).decode(),
        }
        await producer.send_and_wait(
            topics.dlq(tenant_id),
            json.dumps(record).encode(),
            key=tenant_id.encode(),
            timestamp_ms=timestamp_ms,
        )
    return originals


async def ingress_copies(
    bootstrap: str,
    admin: AIOKafkaAdminClient,
    topics: TopicNames,
    tenant_id: str,
    originals: list[bytes],
) -> list[int]:
    """How many times each original is in ingress under the tenant's key, read to the end."""
    key = tenant_id.encode()
    found = Counter(
        r.value for r in await read_topic(bootstrap, admin, topics.ingress) if r.key == key
    )
    return [found[original] for original in originals]


async def arrived_once(
    bootstrap: str, topics: TopicNames, tenant_id: str, originals: list[bytes]
) -> None:
    """Every original became exactly one event on the tenant's out topic."""
    wanted = Counter(guess_control_id(original) for original in originals)
    records = await consume_until(
        bootstrap,
        [topics.out(tenant_id)],
        lambda got: len(got) >= len(originals),
        ARRIVAL_TIMEOUT_S,
    )
    assert Counter(json.loads(r.value)["control_id"] for r in records) == wanted


COUNTS = ("replayed", "skipped", "already_replayed")


async def replay(api: Api, tenant_id: str, query: str = "") -> tuple[int, Any]:
    path = f"/api/tenants/{tenant_id}/dlq/replay{query}"
    return await api.call("POST", path, token=api.admin_token)


async def test_a_tenant_that_never_had_a_reject_has_nothing_to_replay(
    api: Api, tenant: dict[str, Any], admin: AIOKafkaAdminClient, topics: TopicNames
) -> None:
    status, answer = await replay(api, tenant["id"])

    assert (status, answer) == (200, {**dict.fromkeys(COUNTS, 0), "from_offset": 0, "to_offset": 0})
    # The DLQ topic comes with the first reject, not with a replay.
    assert topics.dlq(tenant["id"]) not in await admin.list_topics()


async def test_two_concurrent_replays_one_is_refused_each_original_written_once(
    api: Api,
    producer: AIOKafkaProducer,
    bootstrap: str,
    topics: TopicNames,
    admin: AIOKafkaAdminClient,
    tenant: dict[str, Any],
) -> None:
    now_ms = int(time.time() * 1000)
    # Enough records that the first replay still runs when the second request arrives.
    originals = await park(producer, admin, topics, tenant["id"], [("bad_segment", now_ms)] * 40)

    async with quiet_tenant(api, bootstrap, topics):
        answers = await asyncio.gather(replay(api, tenant["id"]), replay(api, tenant["id"]))
        await arrived_once(bootstrap, topics, tenant["id"], originals)
        again_status, again = await replay(api, tenant["id"])

    statuses = sorted(status for status, _ in answers)
    assert statuses == [200, 409], answers
    refused = next(answer for status, answer in answers if status == 409)
    done = next(answer for status, answer in answers if status == 200)
    assert refused["error"] == "replay_running"
    assert done["replayed"] == 40
    assert (again_status, again["replayed"], again["already_replayed"]) == (200, 0, 0)
    assert await ingress_copies(bootstrap, admin, topics, tenant["id"], originals) == [1] * 40


async def test_filters_select_by_reason_and_parked_time_and_each_is_written_once(
    api: Api,
    producer: AIOKafkaProducer,
    bootstrap: str,
    topics: TopicNames,
    admin: AIOKafkaAdminClient,
    tenant: dict[str, Any],
) -> None:
    now_ms = int(time.time() * 1000)
    parked = [
        ("bad_segment", now_ms - 3 * HOUR_MS),
        ("missing_msh_10", now_ms - 3 * HOUR_MS),
        ("bad_segment", now_ms - 2 * HOUR_MS),
        ("unsupported_version", now_ms - 1 * HOUR_MS),
        ("missing_msh_10", now_ms - 1 * HOUR_MS),
    ]
    originals = await park(producer, admin, topics, tenant["id"], parked)
    two_and_a_half_hours_ago = time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime((now_ms - 2.5 * HOUR_MS) / 1000)
    )
    half_an_hour_ago = time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime((now_ms - HOUR_MS / 2) / 1000)
    )

    async with quiet_tenant(api, bootstrap, topics):
        by_reason = await replay(api, tenant["id"], "?reason=bad_segment")
        after_reason = await ingress_copies(bootstrap, admin, topics, tenant["id"], originals)
        by_time = await replay(
            api, tenant["id"], f"?since={two_and_a_half_hours_ago}&until={half_an_hour_ago}"
        )
        after_time = await ingress_copies(bootstrap, admin, topics, tenant["id"], originals)
        both = await replay(api, tenant["id"], "?reason=missing_msh_10,no_msh&reason=x")
        rest = await replay(api, tenant["id"])
        bad_query = await replay(api, tenant["id"], "?since=yesterday")
        await arrived_once(bootstrap, topics, tenant["id"], originals)

    assert by_reason[0] == 200 and by_reason[1]["replayed"] == 2, by_reason
    assert after_reason == [1, 0, 1, 0, 0]
    # Records 2, 3 and 4 were parked in the window; record 2 is already back.
    assert by_time[0] == 200 and by_time[1]["replayed"] == 2, by_time
    assert by_time[1]["already_replayed"] == 1
    assert after_time == [1, 0, 1, 1, 1]
    assert both[1]["replayed"] == 1, both
    assert (rest[1]["replayed"], rest[1]["already_replayed"]) == (0, 0), rest
    assert bad_query[0] == 400 and bad_query[1]["error"] == "invalid_query"
    assert await ingress_copies(bootstrap, admin, topics, tenant["id"], originals) == [1] * 5


@pytest.mark.parametrize("written_before_the_crash", [True, False])
async def test_a_replay_that_failed_midway_resumes_after_the_last_written_record(
    api: Api,
    producer: AIOKafkaProducer,
    bootstrap: str,
    topics: TopicNames,
    worker_env: dict,
    ingress: list[TopicPartition],
    admin: AIOKafkaAdminClient,
    tenant: dict[str, Any],
    written_before_the_crash: bool,
) -> None:
    now_ms = int(time.time() * 1000)
    originals = await park(producer, admin, topics, tenant["id"], [("bad_segment", now_ms)] * 4)
    # The state a replay leaves when it dies while writing record 1: record 0 is back in ingress,
    # record 1 marked pending with the ingress end offsets taken just before its write...
    await producer.send_and_wait(topics.ingress, originals[0], key=tenant["id"].encode())
    ends = await ingress_ends(bootstrap, ingress)
    position = ReplayPosition().with_done(0).with_pending(PendingWrite(1, ends))
    await commit(bootstrap, worker_env, tenant["id"], topics, position)
    if written_before_the_crash:  # ...and its write landed, or did not, before the crash.
        await producer.send_and_wait(topics.ingress, originals[1], key=tenant["id"].encode())

    async with quiet_tenant(api, bootstrap, topics):
        status, resumed = await replay(api, tenant["id"])
        again_status, again = await replay(api, tenant["id"])
        await arrived_once(bootstrap, topics, tenant["id"], originals)

    assert status == 200
    assert resumed["replayed"] == (2 if written_before_the_crash else 3), resumed
    assert (again_status, again["replayed"]) == (200, 0)
    assert await ingress_copies(bootstrap, admin, topics, tenant["id"], originals) == [1] * 4


async def ingress_ends(bootstrap: str, partitions: list[TopicPartition]) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        return {tp.partition: end for tp, end in (await consumer.end_offsets(partitions)).items()}
    finally:
        await consumer.stop()


async def commit(
    bootstrap: str, worker_env: dict, tenant_id: str, topics: TopicNames, position: ReplayPosition
) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=f"{worker_env['LANEWAY_APP_ID']}-dlq-replay-{tenant_id}",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        dlq = TopicPartition(topics.dlq(tenant_id), 0)
        consumer.assign([dlq])
        metadata = OffsetAndMetadata(position.next_offset, position.to_metadata())
        await consumer.commit({dlq: metadata})
    finally:
        await consumer.stop()
