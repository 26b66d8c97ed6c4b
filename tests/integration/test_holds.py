"""Holds wait in Kafka, and cut-overs survive restarts (streams/cutover.py, agents/lanes/router.py).

Each test runs workers of its own (own app id and topics), so a kill -9 or a restart disturbs no
other test.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.hl7.synthetic import SyntheticFeed
from streams.processing import guess_control_id, lane_record_origin
from streams.settings import Settings
from streams.topics import TopicNames
from tests.harness import Api, WorkerProcess, consume_until, own_worker_env
from tests.integration.test_lanes import pin, tenant_moves

pytestmark = pytest.mark.integration

PAUSED_RECORDS = 50_000
WARM_UP_RECORDS = 5_000
# What the worker's RSS may grow by while 50,000 held records (~25 MB of HL7) pass it: fetch
# buffers and allocator slack, not the records.
RSS_GROWTH_MAX_MB = 12
BACKLOG_RECORDS = 3_000
AFTER_PIN_RECORDS = 300
LANE_DRAIN_RATE = 100  # records/s: 30 s for the backlog
STREAM_RATE = 500  # records/s, both tenants together
STREAM_S = 12


def settings_of(env: dict[str, str]) -> Settings:
    """The settings a worker started with `env` runs with."""
    fields = {
        name.removeprefix("LANEWAY_").lower(): value
        for name, value in env.items()
        if name.startswith("LANEWAY_")
    }
    return Settings(_env_file=None, **fields)  # type: ignore[call-arg]


async def ingress_committed(bootstrap: str, env: dict[str, str], at_least: int) -> bool:
    """True once ingress holds `at_least` records and the router committed all of them."""
    settings = settings_of(env)
    ingress = TopicNames(env["LANEWAY_TOPIC_PREFIX"]).ingress
    partitions = [TopicPartition(ingress, p) for p in range(settings.ingress_partitions)]
    ends = await end_offsets(bootstrap, partitions)
    if sum(ends.values()) < at_least:
        return False
    for tp, end in ends.items():
        if end and await committed(bootstrap, settings.router_group, tp) < end:
            return False
    return True


def started_worker(
    worker_env: dict[str, str], name: str, tmp_path: Path, **settings: str
) -> tuple[dict[str, str], TopicNames, WorkerProcess]:
    """A shared worker of its own (app id, topics, data dir, log), started."""
    env = own_worker_env(worker_env, name, tmp_path / "data", **settings)
    worker = WorkerProcess(env, tmp_path / "worker.log")
    worker.start()
    return env, TopicNames(env["LANEWAY_TOPIC_PREFIX"]), worker


def killed_and_restarted(worker: WorkerProcess, log_path: Path) -> WorkerProcess:
    """kill -9, then the same worker again, logging to `log_path`: the old log already says
    ready."""
    worker.kill()
    restarted = WorkerProcess(worker.env, log_path)
    restarted.start()
    return restarted


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def end_offsets(
    bootstrap: str, partitions: list[TopicPartition]
) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        return await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()


async def committed(bootstrap: str, group: str, partition: TopicPartition) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group, partitions=[partition])
        meta = offsets.get(partition)
        return -1 if meta is None else meta.offset
    finally:
        await admin.close()


async def until(condition_s: float, check: object, what: str) -> None:
    """Poll the async `check` until it returns True, at most `condition_s` seconds."""
    deadline = time.monotonic() + condition_s
    while not await check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)


async def send(
    producer: AIOKafkaProducer, topic: str, tenant_id: str, feed: SyntheticFeed, count: int
) -> list[str]:
    """`count` messages straight into ingress (ingest refuses a paused tenant; another producer
    may not), in order; their control ids."""
    sent = []
    for _ in range(count):
        payload = feed.next_message()
        await producer.send(topic, payload, key=tenant_id.encode())
        sent.append(guess_control_id(payload))
    await producer.flush()
    return sent


def first_seen(records: list) -> list[str]:
    """Control ids in emission order, each once: consumers drop duplicates by key."""
    seen: dict[str, str] = {}
    for record in records:
        event = json.loads(record.value)
        seen.setdefault(event["idempotency_key"], event["control_id"])
    return list(seen.values())


async def test_a_long_pause_waits_in_kafka_not_in_memory_and_survives_a_kill(
    worker_env: dict, producer: AIOKafkaProducer, bootstrap: str, tmp_path: Path, admin_token: str
) -> None:
    """A paused tenant that keeps sending: the router's memory does not grow with its records,
    the ingress commit moves past them, a kill -9 loses none, and a resume emits all, in order."""
    env, topics, worker = started_worker(worker_env, "holdpause", tmp_path, lanes_enabled="false")
    try:
        async with Api.of(worker) as api:
            tenant_id = (await api.onboard(f"held-{uuid.uuid4().hex[:6]}"))["id"]
            status, answer = await api.call(
                "POST", f"/api/tenants/{tenant_id}/pause", token=api.admin_token
            )
            assert status == 200, answer
        feed = SyntheticFeed(seed=21, control_id_prefix="HOLD-", escape_rate=0)

        async def commits_past(count: int) -> bool:
            return await ingress_committed(bootstrap, env, at_least=count)

        sent = await send(producer, topics.ingress, tenant_id, feed, WARM_UP_RECORDS)
        await until(60, lambda: commits_past(WARM_UP_RECORDS), "ingress not committed")
        before_mb = rss_mb(worker.pid)
        sent += await send(producer, topics.ingress, tenant_id, feed, PAUSED_RECORDS)
        await until(120, lambda: commits_past(len(sent)), "ingress pinned by the pause")
        growth_mb = rss_mb(worker.pid) - before_mb
        assert growth_mb < RSS_GROWTH_MAX_MB, f"RSS grew {growth_mb:.1f} MB with held records"
        held = await consume_until(bootstrap, [topics.out(tenant_id)], bool, 2)
        assert held == [], worker.log_tail()

        # No shutdown, no final commit: the hold is found in the tenant's state.
        worker = killed_and_restarted(worker, tmp_path / "worker-restarted.log")
        async with Api.of(worker) as api:
            status, answer = await api.call(
                "POST", f"/api/tenants/{tenant_id}/resume", token=api.admin_token
            )
            assert status == 200, answer
        records = await consume_until(
            bootstrap,
            [topics.out(tenant_id)],
            lambda got: len(got) >= len(sent) and set(sent) <= set(first_seen(got)),
            240,
        )
        assert first_seen(records) == sent, worker.log_tail()
    finally:
        worker.stop()


async def test_a_pin_right_after_a_restart_waits_for_the_backlog_of_the_lane_it_leaves(
    worker_env: dict, producer: AIOKafkaProducer, bootstrap: str, tmp_path: Path
) -> None:
    """A tenant pinned to a dedicated lane leaves a backlog there (the lane worker drains at a
    bounded rate); the shared worker is killed and restarted, and the tenant pinned back to the
    shared lane at once. The restarted router forwarded nothing to that lane yet, but the cut
    still waits for the lane's backlog: per-tenant order holds."""
    # A slow lane: its backlog outlasts the restart by far.
    env = own_worker_env(
        worker_env, "holdcut", tmp_path / "data", lane_drain_rate=str(LANE_DRAIN_RATE)
    )
    topics = TopicNames(env["LANEWAY_TOPIC_PREFIX"])
    worker = WorkerProcess(env, tmp_path / "worker.log")
    lane_worker = WorkerProcess.lane(env, tmp_path / "lane-worker.log")
    worker.start()
    lane_worker.start()
    try:
        async with Api.of(worker) as api:
            tenant_id = (
                await api.onboard(f"cut-{uuid.uuid4().hex[:6]}", rate_per_s=100_000, burst=100_000)
            )["id"]
            await pin(api, tenant_id, "dedicated")
        await tenant_moves(bootstrap, topics, tenant_id, 1)
        lanes = [
            TopicPartition(topics.dedicated_lanes, n)
            for n in range(settings_of(env).dedicated_lanes)
        ]

        async def lanes_total() -> int:
            return sum((await end_offsets(bootstrap, lanes)).values())

        before = await lanes_total()
        feed = SyntheticFeed(seed=23, control_id_prefix="CUT-", escape_rate=0)
        sent = await send(producer, topics.ingress, tenant_id, feed, BACKLOG_RECORDS)

        async def forwarded() -> bool:
            return await lanes_total() >= before + BACKLOG_RECORDS

        await until(60, forwarded, "the router did not forward the backlog")

        async def all_committed() -> bool:
            return await ingress_committed(bootstrap, env, at_least=BACKLOG_RECORDS)

        # The restarted router re-reads nothing, so it knows of no forward to that lane.
        await until(60, all_committed, "the router did not commit the backlog")

        worker = killed_and_restarted(worker, tmp_path / "worker-restarted.log")
        async with Api.of(worker) as api:
            await pin(api, tenant_id, "shared")
        # Nothing sent meanwhile: a record forwarded to the lane now would tell the router where
        # the lane's tail is, and the cut would wait for it whatever the router knew before.
        moves = await moves_back(bootstrap, topics, tenant_id)
        # Moved back: these go to the shared lane, and must not overtake the lane's backlog.
        sent += await send(producer, topics.ingress, tenant_id, feed, AFTER_PIN_RECORDS)
        records = await consume_until(
            bootstrap,
            [topics.out(tenant_id)],
            lambda got: set(sent) <= set(first_seen(got)),
            120,
        )
        assert first_seen(records) == sent, worker.log_tail() + lane_worker.log_tail()
        assert [move["to"] is None for move in moves] == [False, True], moves
    finally:
        worker.stop()
        lane_worker.stop()


async def test_a_kill_under_traffic_forwards_nothing_twice(
    worker_env: dict, producer: AIOKafkaProducer, bootstrap: str, tmp_path: Path
) -> None:
    """kill -9 of the shared worker while records stream in: the restarted router finds what it
    forwarded after its last ingress commit (the commit's metadata says where in the lanes) and
    forwards none of it again. The lane's own redelivery (the processor is at-least-once) may
    still emit an event twice downstream, always with the same key."""
    _, topics, worker = started_worker(worker_env, "holdkill", tmp_path, lanes_enabled="false")
    try:
        async with Api.of(worker) as api:
            tenants = [
                (await api.onboard(f"kill-{n}-{uuid.uuid4().hex[:6]}"))["id"] for n in (1, 2)
            ]
        feed = SyntheticFeed(seed=29, control_id_prefix="KILL-", escape_rate=0)
        sent: dict[str, list[str]] = {tenant: [] for tenant in tenants}

        async def stream() -> None:
            for index in range(STREAM_RATE * STREAM_S):
                tenant, payload = tenants[index % 2], feed.next_message()
                await producer.send(topics.ingress, payload, key=tenant.encode())
                sent[tenant].append(guess_control_id(payload))
                await asyncio.sleep(1 / STREAM_RATE)
            await producer.flush()

        async def crash() -> WorkerProcess:
            await asyncio.sleep(STREAM_S / 3)
            return await asyncio.to_thread(
                killed_and_restarted, worker, tmp_path / "worker-restarted.log"
            )

        _, worker = await asyncio.gather(stream(), crash())
        expected = {control_id for ids in sent.values() for control_id in ids}
        records = await consume_until(
            bootstrap,
            [topics.out(tenant) for tenant in tenants],
            lambda got: expected <= {json.loads(r.value)["control_id"] for r in got},
            120,
        )
        forwarded = await consume_until(
            bootstrap, [topics.shared_lane], lambda got: len(got) >= len(expected), 30
        )
    finally:
        worker.stop()

    origins: Counter[tuple[int, int]] = Counter()
    for record in forwarded:
        origin = lane_record_origin(record.key, record.value, record.headers)
        assert origin is not None
        origins[origin.partition, origin.offset] += 1
    twice = [origin for origin, count in origins.items() if count > 1]
    assert len(origins) == len(expected) and twice == [], worker.log_tail()

    keys: dict[str, set[str]] = {}
    for record in records:
        event = json.loads(record.value)
        keys.setdefault(event["control_id"], set()).add(event["idempotency_key"])
    assert set(keys) == expected and all(len(k) == 1 for k in keys.values())
    tenant_of = {control_id: tenant for tenant, ids in sent.items() for control_id in ids}
    by_tenant: dict[str, list[str]] = {tenant: [] for tenant in tenants}
    for control_id in first_seen(records):
        by_tenant[tenant_of[control_id]].append(control_id)
    assert by_tenant == sent, worker.log_tail()


async def moves_back(bootstrap: str, topics: TopicNames, tenant_id: str) -> list[dict]:
    """The tenant's two moves, once the second is made: only after its old lane's backlog,
    which the slow lane drains in about `BACKLOG_RECORDS / LANE_DRAIN_RATE` seconds."""
    deadline = time.monotonic() + 3 * BACKLOG_RECORDS / LANE_DRAIN_RATE
    moves = await tenant_moves(bootstrap, topics, tenant_id, 2)
    while len(moves) < 2 and time.monotonic() < deadline:
        moves = await tenant_moves(bootstrap, topics, tenant_id, 2)
    return moves
