"""Issue 14, point 3, on the real broker: a failover never promotes a tenant that did not burst.

Two shared workers. A tenant streams at half its contract straight into ingress; a quiet tenant
streams over HTTP beside it. The worker that owns the tenant's ingress partition is killed -9;
the other adopts the partition once the group notices (the session timeout plus a rebalance),
restores the tenant's persisted volume windows and reads the partition again from its last
commit. A paused tenant on the same partition pins that commit (issue 14, point 1), so the
survivor reads again every record the victim had counted since, then the backlog of the outage:
before the fix all of it counted in the restore second. Now each record counts once, at its
record time: the tenant stays in the shared lane at its true rate, nothing is lost, and the
quiet tenant goes on.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from streams.hl7.synthetic import SyntheticFeed
from streams.processing import guess_control_id
from streams.topics import TopicNames
from tests.harness import Api, WorkerProcess, consume_until, fresh_ports, own_worker_env

pytestmark = pytest.mark.integration

CONTRACT_PER_S = 100
STEADY_PER_S = 50  # half the contract: what a restore used to read as ~10x
QUIET_EVERY_S = 0.1
WARM_UP_EVENTS = 750  # the tenant's events through before the kill (15 s), counted by the victim
GROUP_TIMEOUT_S = 120  # two workers join one group; slow on a loaded machine
TAKEOVER_TIMEOUT_S = 60
AFTER_TAKEOVER_S = 15  # the survivor decides every 0.5 s on the backlog and the live traffic
DELIVERY_TIMEOUT_S = 120
# The bound on a quiet tenant's gap across a fault (bench-chaos `max_quiet_gap_s`): the
# session timeout plus a rebalance.
MAX_QUIET_LATENCY_S = 15.0
OWNED = re.compile(rb"router reads ingress partitions \[([0-9, ]*)\]")


def ingress_partition(tenant_id: str, partitions: int) -> int:
    """The ingress partition of a tenant's records, as producers and the router compute it."""
    every = list(range(partitions))
    return DefaultPartitioner()(tenant_id.encode(), every, every)


def owned_partitions(worker: WorkerProcess) -> set[int] | None:
    """The ingress partitions the worker's router read last, from its log."""
    found = OWNED.findall(worker.log_path.read_bytes())
    return {int(p) for p in found[-1].split(b",") if p.strip()} if found else None


async def until_owned(
    workers: list[WorkerProcess], partitions: int, timeout_s: float
) -> list[set[int]]:
    """Each worker's ingress partitions, once each reads some and between them they read every
    partition once."""
    deadline = time.monotonic() + timeout_s
    while True:
        for worker in workers:
            worker.check_alive()
        owned = [owned_partitions(worker) or set() for worker in workers]
        covered = set().union(*owned) == set(range(partitions))
        if all(owned) and covered and sum(map(len, owned)) == partitions:
            return owned
        assert time.monotonic() < deadline, f"partitions not taken over: {owned}"
        await asyncio.sleep(0.2)


def tenant_in(prefix: str, partitions: set[int], of: int) -> str:
    """A tenant id starting with `prefix` whose records go to one of `partitions`."""
    return next(
        tenant_id
        for tenant_id in (f"{prefix}-{i}" for i in range(1000))
        if ingress_partition(tenant_id, of) in partitions
    )


async def pin_the_commit(
    api: Api, victim: WorkerProcess, producer: AIOKafkaProducer, topics: TopicNames, paused: str
) -> None:
    """Pause a tenant, then write a record for it to ingress once the victim knows: its router
    holds the record and commits its partition no further than it until the tenant resumes."""
    status, answer = await api.call("POST", f"/api/tenants/{paused}/pause", token=api.admin_token)
    assert status == 200, answer
    async with Api.of(victim) as victim_api:
        deadline = time.monotonic() + 30
        while True:
            status, stats = await victim_api.call(
                "GET", f"/api/tenants/{paused}/stats", token=victim_api.admin_token
            )
            if status == 200 and stats["paused"]:
                break
            assert time.monotonic() < deadline, (status, stats)
            await asyncio.sleep(0.2)
    payload = SyntheticFeed(seed=20, control_id_prefix="PAUSED-", escape_rate=0).next_message()
    await producer.send_and_wait(topics.ingress, payload, key=paused.encode())


@dataclass
class Stream:
    """Control ids sent and (for the quiet tenant) when each was sent and arrived."""

    sent: list[str] = field(default_factory=list)
    sent_at: dict[str, float] = field(default_factory=dict)
    arrived_at: dict[str, float] = field(default_factory=dict)


@pytest.mark.timeout(720)  # the sum of the phases' deadlines, on a loaded machine
async def test_a_failover_does_not_promote_a_tenant_whose_backlog_is_read_late(
    worker_env: dict,
    producer: AIOKafkaProducer,
    bootstrap: str,
    tmp_path: Path,
) -> None:
    # Workers of their own (own app id and topics): the kill cannot disturb other tests. Both
    # are in one consumer group; no lane worker: a tenant promoted by mistake is never emitted.
    env = own_worker_env(worker_env, "failover", tmp_path / "data-0")
    partitions = int(env["LANEWAY_INGRESS_PARTITIONS"])
    topics = TopicNames(env["LANEWAY_TOPIC_PREFIX"])
    workers = [
        WorkerProcess(env, tmp_path / "worker-0.log", name="worker 0"),
        WorkerProcess(
            {**env, **fresh_ports(), "LANEWAY_DATA_DIR": str(tmp_path / "data-1")},
            tmp_path / "worker-1.log",
            name="worker 1",
        ),
    ]
    try:
        for worker in workers:
            worker.spawn()
        for worker in workers:
            await worker.ready(90)
        owned = await until_owned(workers, partitions, GROUP_TIMEOUT_S)
        run = uuid.uuid4().hex[:6]
        steady_id = f"steady-{run}"
        victim_index = next(
            i for i, parts in enumerate(owned) if ingress_partition(steady_id, partitions) in parts
        )
        victim, survivor = workers[victim_index], workers[1 - victim_index]
        # The quiet tenant's partition is the survivor's: it only sees the rebalance.
        quiet_id = tenant_in(f"quiet-{run}", owned[1 - victim_index], partitions)
        paused_id = tenant_in(
            f"paused-{run}", {ingress_partition(steady_id, partitions)}, partitions
        )
        async with Api.of(survivor) as api:
            await api.onboard(steady_id, rate_per_s=CONTRACT_PER_S, burst=CONTRACT_PER_S)
            quiet = await api.onboard(quiet_id, rate_per_s=1000, burst=2000)
            await api.onboard(paused_id)
            await pin_the_commit(api, victim, producer, topics, paused_id)
            await _failover(api, victim, survivor, producer, bootstrap, topics, quiet, steady_id)
    finally:
        for worker in workers:
            worker.stop()


async def _failover(
    api: Api,
    victim: WorkerProcess,
    survivor: WorkerProcess,
    producer: AIOKafkaProducer,
    bootstrap: str,
    topics: TopicNames,
    quiet: dict,
    steady_id: str,
) -> None:
    steady, quiet_stream = Stream(), Stream()
    stop = asyncio.Event()
    partitions = len(owned_partitions(victim) or ()) + len(owned_partitions(survivor) or ())

    async def send_steady() -> None:
        # Straight into ingress at a steady rate: the victim's ingest cannot stop it.
        feed = SyntheticFeed(seed=21, control_id_prefix="STEADY-", escape_rate=0)
        next_at = time.monotonic()
        while not stop.is_set():
            payload = feed.next_message()
            await producer.send(topics.ingress, payload, key=steady_id.encode())
            steady.sent.append(guess_control_id(payload))
            next_at += 1 / STEADY_PER_S
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def send_quiet() -> None:
        feed = SyntheticFeed(seed=22, control_id_prefix="QUIET-", escape_rate=0)
        while not stop.is_set():
            status, answer = await api.send(quiet["id"], quiet["token"], feed.next_message())
            assert status == 202, answer
            control_id = answer["results"][0]["control_id"]
            quiet_stream.sent.append(control_id)
            quiet_stream.sent_at[control_id] = time.monotonic()
            await asyncio.sleep(QUIET_EVERY_S)

    async def read_quiet() -> None:
        # No seek: the out topic comes with the first event, and a seek would wait for it.
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            partition = TopicPartition(topics.out(quiet["id"]), 0)
            consumer.assign([partition])
            while True:
                batch = await consumer.getmany(partition, timeout_ms=200)
                for record in batch.get(partition, []):
                    control_id = json.loads(record.value)["control_id"]
                    quiet_stream.arrived_at.setdefault(control_id, time.monotonic())
        finally:
            await consumer.stop()

    async def steady_lane() -> tuple[str, list, float]:
        """The steady tenant's lane, recent moves and 10-s rate, as the survivor's stats show."""
        status, stats = await api.call(
            "GET", f"/api/tenants/{steady_id}/stats", token=api.admin_token
        )
        assert status == 200, stats
        return stats["lane"], stats["moves"], stats["rates"]["rate_10s"]

    senders = [asyncio.create_task(send_steady()), asyncio.create_task(send_quiet())]
    reader = asyncio.create_task(read_quiet())
    try:
        # Warm up: the victim routes the tenant, counts it and persists its windows.
        await consume_until(
            bootstrap, [topics.out(steady_id)], lambda got: len(got) >= WARM_UP_EVENTS, 60
        )
        assert (await steady_lane())[:2] == ("shared", []), victim.log_tail()
        victim.kill()
        await until_owned([survivor], partitions, TAKEOVER_TIMEOUT_S)
        # The survivor has restored the tenant and reads its backlog: no promotion, ever.
        seen = []
        deadline = time.monotonic() + AFTER_TAKEOVER_S
        while time.monotonic() < deadline:
            seen.append(await steady_lane())
            await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*senders)
        await producer.flush()
        assert {lane for lane, _, _ in seen} == {"shared"}, (seen, survivor.log_tail())
        assert all(moves == [] for _, moves, _ in seen), (seen, survivor.log_tail())
        # Read at its record times, the backlog never lifts the tenant above its true rate.
        assert max(rate for _, _, rate in seen) <= STEADY_PER_S * 1.2, seen

        records = await consume_until(
            bootstrap,
            [topics.out(steady_id)],
            lambda got: set(steady.sent) <= {json.loads(r.value)["control_id"] for r in got},
            DELIVERY_TIMEOUT_S,
        )
        delivered = {json.loads(record.value)["control_id"] for record in records}
        missing = set(steady.sent) - delivered
        assert not missing, f"{len(missing)} of {len(steady.sent)} lost\n{survivor.log_tail()}"
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        while set(quiet_stream.sent) - set(quiet_stream.arrived_at):
            assert time.monotonic() < deadline, "quiet events missing"
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        for task in [*senders, reader]:
            task.cancel()
        await asyncio.gather(*senders, reader, return_exceptions=True)

    moves = await consume_until(bootstrap, [topics.control], lambda got: False, 3)
    assert [json.loads(r.value) for r in moves if r.key == steady_id.encode()] == []
    slowest = max(quiet_stream.arrived_at[c] - quiet_stream.sent_at[c] for c in quiet_stream.sent)
    assert slowest < MAX_QUIET_LATENCY_S, f"a quiet event took {slowest:.1f} s"
