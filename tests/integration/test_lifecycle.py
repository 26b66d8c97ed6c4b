"""Tenant lifecycle on the real broker and worker: a deleted tenant's id stays retired until it is
purged; a purge deletes its topics; the id then starts afresh, and fetch-by-ref never serves an
earlier incarnation's originals. A quiet tenant on the same ingress partition streams throughout.

A worker of its own (own app id and topic prefix): these tests park records in the unrouted DLQ,
which other tests count exactly.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.hl7.synthetic import SyntheticFeed, malformed
from streams.processing import guess_control_id
from streams.topics import TopicNames
from tests.harness import Api, WorkerProcess, consume_until, own_worker_env
from tests.harness.quiet_tenant import quiet_tenant
from tests.integration.test_containment import PARTITIONS, partition_of, tenant_on

pytestmark = pytest.mark.integration

WAIT_S = 60.0
TOPICS_GONE_S = 30.0


@pytest.fixture(scope="module")
def lifecycle_worker(
    worker_env: dict, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    base = tmp_path_factory.mktemp("lifecycle-worker")
    env = own_worker_env(
        worker_env,
        "lifecycle",
        base / "data",
        ingress_partitions=str(PARTITIONS),
        lanes_enabled="false",  # no lane worker beside this one
    )
    with WorkerProcess(env, base / "lifecycle-worker.log") as process:
        yield process


@pytest.fixture
async def api(lifecycle_worker: WorkerProcess) -> AsyncIterator[Api]:
    async with Api.of(lifecycle_worker) as client:
        yield client


@pytest.fixture
def topics(lifecycle_worker: WorkerProcess) -> TopicNames:
    return lifecycle_worker.topics


def good(prefix: str) -> bytes:
    return SyntheticFeed(seed=len(prefix), control_id_prefix=prefix, escape_rate=0).next_message()


async def fetch(api: Api, tenant_id: str, ref: str, token: str) -> tuple[int, bytes]:
    url = f"{api.base_url}/api/tenants/{tenant_id}/messages/{ref}"
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, await response.read()


async def read_ingress(bootstrap: str, topic: str, partition: int, offset: int) -> ConsumerRecord:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        return await consumer.getone()
    finally:
        await consumer.stop()


async def events(bootstrap: str, topic: str, count: int) -> list[dict[str, Any]]:
    records = await consume_until(bootstrap, [topic], lambda got: len(got) >= count, WAIT_S)
    assert len(records) == count, f"{len(records)} records on {topic}, expected {count}"
    return [json.loads(record.value) for record in records]


async def end_offset(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        return (await consumer.end_offsets([partition]))[partition]
    finally:
        await consumer.stop()


async def topics_gone(admin: AIOKafkaAdminClient, names: list[str]) -> bool:
    """True once the broker lists none of `names`, polling until the deadline."""
    deadline = time.monotonic() + TOPICS_GONE_S
    while time.monotonic() < deadline:
        if not set(names) & set(await admin.list_topics()):
            return True
        await asyncio.sleep(0.2)
    return False


async def parked_unrouted(
    producer: AIOKafkaProducer,
    bootstrap: str,
    topics: TopicNames,
    tenant_id: str,
    headers: list[tuple[str, bytes]] | None = None,
) -> dict[str, Any]:
    """Write a message of `tenant_id` straight to ingress; its record in the unrouted DLQ."""
    sent = await producer.send_and_wait(
        topics.ingress, good("STRAIGHT-"), key=tenant_id.encode(), headers=headers
    )

    def about(records: list[ConsumerRecord]) -> list[dict[str, Any]]:
        documents = [json.loads(record.value) for record in records]
        return [
            d
            for d in documents
            if d["tenant"] == tenant_id and d["source"]["offset"] == sent.offset
        ]

    records = await consume_until(
        bootstrap, [topics.dlq_unrouted], lambda got: bool(about(got)), WAIT_S
    )
    [parked] = about(records)
    return parked


async def test_a_deleted_id_is_retired_until_purged_and_then_starts_afresh(
    api: Api,
    topics: TopicNames,
    bootstrap: str,
    producer: AIOKafkaProducer,
    admin: AIOKafkaAdminClient,
) -> None:
    admin_token = api.admin_token
    async with quiet_tenant(api, bootstrap, topics) as quiet:
        partition = partition_of(quiet.tenant_id.encode())
        tenant_id = tenant_on(partition, "reused")
        path = f"/api/tenants/{tenant_id}"

        # The first incarnation: one event, one DLQ record, replayed once (a replay position).
        old = await api.onboard(tenant_id)
        old_message = good("OLD-")
        assert (await api.send(tenant_id, old["token"], old_message))[0] == 202
        broken = malformed(random.Random(5), "bad_segment").payload
        assert (await api.send(tenant_id, old["token"], broken))[0] == 202
        [old_event] = await events(bootstrap, topics.out(tenant_id), 1)
        await events(bootstrap, topics.dlq(tenant_id), 1)
        status, replayed = await api.call("POST", f"{path}/dlq/replay", token=admin_token)
        assert (status, replayed["replayed"]) == (200, 1), replayed
        await events(bootstrap, topics.dlq(tenant_id), 2)  # parked again
        assert (await fetch(api, tenant_id, old_event["ref"], old["token"]))[0] == 200

        # Deleted: the id is retired, not free.
        assert (await api.call("DELETE", path, token=admin_token))[0] == 204
        get_status, get_answer = await api.call("GET", path, token=admin_token)
        again_status, again = await api.call(
            "POST", "/api/tenants", token=admin_token, json_body={"id": tenant_id, "name": "New"}
        )
        _, listing = await api.call("GET", "/api/tenants", token=admin_token)
        assert (get_status, get_answer["error"]) == (410, "tenant_retired")
        assert get_answer["retired"]["incarnation"] == old["incarnation"]
        assert (again_status, again["error"]) == (409, "tenant_id_retired")
        assert f"POST /api/tenants/{tenant_id}/purge" in again["message"]
        assert tenant_id in [marker["id"] for marker in listing["retired"]]
        assert tenant_id not in [tenant["id"] for tenant in listing["tenants"]]

        # A late record of the retired tenant (another producer) is parked unrouted, never
        # emitted: nothing else reaches its out topic.
        parked = await parked_unrouted(producer, bootstrap, topics, tenant_id)
        assert parked["reason"] == "unknown_tenant"
        assert await end_offset(bootstrap, topics.out(tenant_id)) == 1

        # Purged: its topics are deleted, then the id is free.
        status, purged = await api.call("POST", f"{path}/purge", token=admin_token)
        assert status == 200, purged
        old_topics = [topics.out(tenant_id), topics.dlq(tenant_id)]
        assert sorted(purged["deleted_topics"]) == sorted(old_topics)
        assert await topics_gone(admin, old_topics)
        assert (await api.call("GET", path, token=admin_token))[0] == 404

        # The second incarnation: fresh topics, fresh DLQ position, none of the old originals.
        new = await api.onboard(tenant_id)
        assert new["incarnation"] != old["incarnation"]
        # Onboarding creates no topic: the publisher, which created the old ones, creates them
        # again with the new incarnation's first records.
        assert not set(old_topics) & set(await admin.list_topics())
        new_message = good("NEW-")
        assert (await api.send(tenant_id, new["token"], new_message))[0] == 202
        assert (await api.send(tenant_id, new["token"], broken))[0] == 202
        [new_event] = await events(bootstrap, topics.out(tenant_id), 1)
        assert new_event["control_id"] == guess_control_id(new_message)
        # A record ingest stamped for the old incarnation that was still waiting (a lane's
        # backlog, say) is parked unrouted, never emitted to the new tenant.
        stamp = [("laneway-incarnation", old["incarnation"].encode())]
        parked_stale = await parked_unrouted(producer, bootstrap, topics, tenant_id, stamp)
        assert parked_stale["reason"] == "unknown_tenant"
        assert await end_offset(bootstrap, topics.out(tenant_id)) == 1
        await events(bootstrap, topics.dlq(tenant_id), 1)
        # The old replay position (2) went with the old DLQ: this one replays its record.
        status, replayed = await api.call("POST", f"{path}/dlq/replay", token=admin_token)
        assert (status, replayed["replayed"]) == (200, 1), replayed

        never = f"{partition}-{10**15}-0"
        unknown_answer = await fetch(api, tenant_id, never, new["token"])
        assert unknown_answer[0] == 404
        # The old incarnation's originals, stamped (also after the new onboarding) or not.
        for ref in (old_event["ref"], parked["ref"], parked_stale["ref"]):
            assert await fetch(api, tenant_id, ref, new["token"]) == unknown_answer
        assert await fetch(api, tenant_id, new_event["ref"], new["token"]) == (200, new_message)
    # Leaving the block checked that every quiet event arrived within a few seconds.


async def test_a_tenant_that_never_sent_has_no_topics_and_is_purged_all_the_same(
    api: Api, topics: TopicNames, admin: AIOKafkaAdminClient
) -> None:
    tenant_id = f"idle-{uuid.uuid4().hex[:8]}"
    path = f"/api/tenants/{tenant_id}"
    await api.onboard(tenant_id)
    assert (await api.call("DELETE", path, token=api.admin_token))[0] == 204

    status, purged = await api.call("POST", f"{path}/purge", token=api.admin_token)

    assert (status, purged["deleted_topics"]) == (200, []), purged
    assert not {topics.out(tenant_id), topics.dlq(tenant_id)} & set(await admin.list_topics())
    assert (await api.call("GET", path, token=api.admin_token))[0] == 404
    assert (await api.onboard(tenant_id))["id"] == tenant_id  # the id is free again


async def test_purge_refuses_a_live_tenant_and_answers_404_for_an_unknown_id(api: Api) -> None:
    live = await api.onboard(f"live-{uuid.uuid4().hex[:8]}")

    live_status, live_answer = await api.call(
        "POST", f"/api/tenants/{live['id']}/purge", token=api.admin_token
    )
    unknown_status, _ = await api.call(
        "POST", f"/api/tenants/never-{uuid.uuid4().hex[:8]}/purge", token=api.admin_token
    )
    tenant_status, _ = await api.call(
        "POST", f"/api/tenants/{live['id']}/purge", token=live["token"]
    )
    still_status, _ = await api.call("GET", f"/api/tenants/{live['id']}", token=api.admin_token)

    assert (live_status, live_answer["error"]) == (409, "tenant_not_retired")
    assert unknown_status == 404
    assert tenant_status == 403
    assert still_status == 200


async def test_only_the_incarnation_that_wrote_a_record_may_fetch_it(
    api: Api, topics: TopicNames, producer: AIOKafkaProducer, bootstrap: str
) -> None:
    """Ingest stamps every record with its tenant's incarnation; a record stamped by another
    incarnation of the same id answers like a missing one, whenever it was written. A record
    without the stamp (another producer) is the tenant's if written since its onboarding."""
    tenant = await api.onboard(f"stamped-{uuid.uuid4().hex[:8]}")
    original = good("STAMP-")
    status, answer = await api.send(tenant["id"], tenant["token"], original)
    assert status == 202, answer
    [result] = answer["results"]
    ingested = await read_ingress(bootstrap, topics.ingress, result["partition"], result["offset"])

    async def ref_of(headers: list[tuple[str, bytes]] | None) -> str:
        meta = await producer.send_and_wait(
            topics.ingress, original, key=tenant["id"].encode(), headers=headers
        )
        return f"{meta.partition}-{meta.offset}-0"

    foreign = await ref_of([("laneway-incarnation", uuid.uuid4().hex.encode())])
    own = await ref_of([("laneway-incarnation", tenant["incarnation"].encode())])
    unstamped = await ref_of(None)
    ingested_ref = f"{result['partition']}-{result['offset']}-0"
    missing = await fetch(api, tenant["id"], f"{result['partition']}-{10**15}-0", tenant["token"])

    assert ingested.headers == (("laneway-incarnation", tenant["incarnation"].encode()),)
    assert missing[0] == 404
    assert await fetch(api, tenant["id"], foreign, tenant["token"]) == missing
    for ref in (ingested_ref, own, unstamped):
        assert await fetch(api, tenant["id"], ref, tenant["token"]) == (200, original)


async def test_purge_deletes_the_topics_left_by_a_tenant_deleted_before_markers_existed(
    api: Api,
    topics: TopicNames,
    bootstrap: str,
    producer: AIOKafkaProducer,
    admin: AIOKafkaAdminClient,
) -> None:
    """Such a tenant left a tombstone and its topics: the registry knows nothing of the id, and
    onboarding it again would keep those topics."""
    tenant = await api.onboard(f"legacy-{uuid.uuid4().hex[:8]}")
    path = f"/api/tenants/{tenant['id']}"
    assert (await api.send(tenant["id"], tenant["token"], good("LEGACY-")))[0] == 202
    await events(bootstrap, topics.out(tenant["id"]), 1)
    await producer.send_and_wait(topics.tenants, None, key=tenant["id"].encode())
    deadline = time.monotonic() + WAIT_S
    while (await api.call("GET", path, token=api.admin_token))[0] != 404:
        assert time.monotonic() < deadline, "the tombstone never reached the registry"
        await asyncio.sleep(0.1)

    purge_status, purged = await api.call("POST", f"{path}/purge", token=api.admin_token)
    again = await api.onboard(tenant["id"])

    # It had an event, never a reject: its out topic is all it left.
    assert (purge_status, purged["deleted_topics"]) == (200, [topics.out(tenant["id"])])
    assert again["incarnation"] != tenant["incarnation"]
    assert await topics_gone(admin, [topics.out(tenant["id"])])  # none until it sends
