"""Tenant isolation under a noisy neighbour: Laneway's dedicated lanes vs one shared lane.

Runs against the real broker and the real process topology. Every system gets its own app id,
topic prefix, ports and data dir, and runs the shared worker (`agents.worker`) plus the
dedicated-lane worker (`agents.lane_worker`, which lowers its own CPU priority to
LANEWAY_LANE_NICE, so that the OS favours the shared lane when both want the CPU).

1. Calibration: preload --calibration-messages of 20 tenants into a calibration ingress and drain
   them with one shared worker, lanes off. Capacity C = the drain rate of its middle 80 %.
2. Idle-tenant memory: RSS of a shared worker whose registry holds --idle-tenants tenant configs,
   minus the RSS of one with an empty registry, per tenant.
3. Both systems get the same open-loop load, written straight to ingress (key = tenant id, record
   timestamp = the message's intended send time, so a generator stall counts as latency too):
   19 quiet tenants together at 30 % of C; one noisy tenant at the same per-tenant rate, 50x that
   for the burst. Phases: warm-up (not measured), steady, burst, recovery (calm window +
   hold-down, or the dedicated lane's drain of the burst at LANEWAY_LANE_DRAIN_RATE if longer,
   + 10 s for the move back + 10 s). Every tenant's contract is 2x the steady per-tenant rate, so
   only the burst exceeds the promotion threshold (LANEWAY_PROMOTE_FACTOR x contract).
   - lanes: Laneway as designed, with LANEWAY_HOLD_DOWN_S lowered to --hold-down-seconds.
   - naive: LANEWAY_LANES_ENABLED=false, one shared lane (the lane worker runs and gets nothing).
   With --shared-workers N, each system runs N shared workers (one consumer group, each with its
   own ports), which split the ingress partitions between their routers; calibration and the
   idle-tenant memory still use one.

Latency = out record CreateTime - ingress CreateTime (= intended send time); every output is
joined to its offered message by its idempotency key (tenant:MSH-10:ingress position).

    python -m bench.isolation [--steady-seconds 20] [--burst-seconds 60] [--hold-down-seconds 20]
                              [--lane-drain-rate 1000] [--lane-nice 10] [--shared-workers 1]

Writes bench/results/isolation.json and bench/results/isolation.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import os
import random
import secrets
import statistics
import time
from array import array
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.common import (
    REPO,
    RESULTS_DIR,
    BenchError,
    Kafka,
    clean_up,
    declare_topics,
    git_commit,
    kafka_version,
    log,
    new_run_id,
    rss_bytes,
    run_bench,
    topic_table,
    write_tenant_configs,
)
from streams.hl7.synthetic import ADT_TRIGGERS, VERSIONS, adt, oru
from streams.processing import HEADER_IDEMPOTENCY_KEY
from streams.settings import Settings
from streams.tenants import SenderIdentity, TenantSpec
from streams.topics import TopicNames
from tests.harness import (
    HarnessError,
    WorkerProcess,
    default_bootstrap,
    fresh_ports,
    group_settles,
    worker_env,
)

QUIET_TENANTS = [f"quiet-{index:02d}" for index in range(1, 20)]
NOISY_TENANT = "noisy"
TENANTS = [*QUIET_TENANTS, NOISY_TENANT]
NOISY_INDEX = TENANTS.index(NOISY_TENANT)

QUIET_SHARE = 0.30  # of the capacity, all quiet tenants together
BURST_FACTOR = 50.0  # the noisy tenant's burst rate / its steady rate
CONTRACT_FACTOR = 2.0  # contract rate / steady per-tenant rate: only the burst looks hot
ONSET_S = 5.0  # the burst's first seconds: reported as the onset transient, not as "burst"
BUCKET_S = 1.0
TICK_S = 0.002  # generator wake-ups; a message sent late still carries its intended time
# After the burst the router's calm test (10-s rate below contract) needs this long to forget it;
# then the hold-down runs, then the cut waits for the lane to drain, then 10 s of calm are shown.
CALM_WINDOW_S = 10.0
DRAIN_ALLOWANCE_S = 10.0
AFTER_DEMOTION_S = 10.0
WARMUP_S = 5.0

CALIBRATION_TRIM = 10  # % of the drain left out at each end when C is measured
CORPUS_SEED = 20240808
CORPUS_TEMPLATES = 64
CONTROL_ID_MARKER = b"LWBENCHCONTROLID"
READY_TIMEOUT_S = 120.0
SETTLE_TIMEOUT_S = 60.0  # the shared workers' group, stable with all of them
HTTP_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 180.0
RSS_SETTLE_S = 5.0
RSS_SAMPLES = 5
# Command-line marks of other Laneway workers, benches and test runs sharing the host.
COMPETITOR_MARKS = ("faust", " -m bench.", " -m pytest")

# Acceptance (see the module docstring and docs/architecture.md invariant 3).
PROMOTION_BUDGET_S = 3.0
RECOVERY_BUDGET_S = 5.0
NAIVE_FACTOR = 10.0
IDLE_TENANT_BUDGET_BYTES = 5_000


# ------------------------------------------------------------------------------------ load


class Corpus:
    """Synthetic ADT/ORU bodies with MSH-10 left open: a message is prefix + control id + suffix.

    Building one HL7 message per send would cost the generator more CPU than the sending.
    """

    def __init__(self, seed: int, size: int) -> None:
        rng = random.Random(seed)
        self._parts: list[tuple[bytes, bytes]] = []
        control_id = CONTROL_ID_MARKER.decode()
        for _ in range(size):
            version = rng.choice(VERSIONS)
            if rng.random() < 0.5:
                trigger = rng.choice(ADT_TRIGGERS)
                message = adt(rng, trigger=trigger, control_id=control_id, version=version)
            else:
                message = oru(rng, control_id=control_id, version=version)
            prefix, suffix = message.split(CONTROL_ID_MARKER)  # exactly once, in MSH-10
            self._parts.append((prefix, suffix))

    def message(self, seq: int, control_id: bytes) -> bytes:
        prefix, suffix = self._parts[seq % len(self._parts)]
        return prefix + control_id + suffix


@dataclass(frozen=True)
class LoadPlan:
    """Rates and phase lengths; times are seconds since the generator's start."""

    capacity: float  # msgs/s of one shared worker, from the calibration
    warmup_s: float
    steady_s: float
    burst_s: float
    recovery_s: float

    @property
    def quiet_rate(self) -> float:
        """Steady per-tenant rate (quiet tenants always, the noisy one outside its burst)."""
        return QUIET_SHARE * self.capacity / len(QUIET_TENANTS)

    @property
    def burst_rate(self) -> float:
        return BURST_FACTOR * self.quiet_rate

    @property
    def contract_rate(self) -> float:
        return CONTRACT_FACTOR * self.quiet_rate

    @property
    def onset_s(self) -> float:
        return self.warmup_s + self.steady_s

    @property
    def duration_s(self) -> float:
        return self.onset_s + self.burst_s + self.recovery_s

    def rate(self, tenant: str, since_start: float) -> float:
        bursting = self.onset_s <= since_start < self.onset_s + self.burst_s
        return self.burst_rate if tenant == NOISY_TENANT and bursting else self.quiet_rate

    def phase(self, since_start: float) -> str:
        if since_start < self.warmup_s:
            return "warm-up"
        if since_start < self.onset_s:
            return "steady"
        if since_start < self.onset_s + self.burst_s:
            return "burst"
        return "recovery"

    def windows(self) -> dict[str, tuple[float, float]]:
        """Measured windows, seconds since the burst onset."""
        end = self.burst_s + self.recovery_s
        return {
            "steady": (-self.steady_s, 0.0),
            "onset": (0.0, ONSET_S),
            "burst": (ONSET_S, self.burst_s),
            "recovery": (self.burst_s, end),
        }


def recovery_seconds(plan: LoadPlan, hold_down_s: float, lane_drain_rate: float) -> float:
    """After the burst: the calm window and the hold-down, or the dedicated lane's drain of the
    burst's backlog at LANEWAY_LANE_DRAIN_RATE if that takes longer (the move back waits for
    it), then the move back itself and 10 s after it."""
    drain_s = 0.0
    if lane_drain_rate > 0:
        backlog = max(plan.burst_rate - lane_drain_rate, 0.0) * plan.burst_s
        drain_s = backlog / max(lane_drain_rate - plan.quiet_rate, 1.0)
    return max(CALM_WINDOW_S + hold_down_s, drain_s) + DRAIN_ALLOWANCE_S + AFTER_DEMOTION_S


class Generator:
    """Open loop: every tenant's messages go out at their due times, whatever the pipeline does.

    Each record's timestamp is its intended send time, so a late send (event loop busy, producer
    buffer full) shows up as latency instead of silently lowering the offered rate.
    """

    def __init__(
        self, producer: AIOKafkaProducer, topic: str, plan: LoadPlan, corpus: Corpus
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._plan = plan
        self._corpus = corpus
        self.intended_ms: dict[str, array[int]] = {tenant: array("q") for tenant in TENANTS}
        # How late each send left (it still carries its intended time): the generator's own stall.
        self.send_lag_ms = array("d")
        self.offered = 0
        self._failed: list[BaseException] = []

    async def run(self, start: float) -> None:
        plan = self._plan
        end = start + plan.duration_s
        rng = random.Random(CORPUS_SEED)
        # Random phases: the tenants' sends do not all fall on the same instants.
        due = {tenant: start + rng.random() / plan.rate(tenant, 0.0) for tenant in TENANTS}
        while True:
            now = time.time()
            for tenant in TENANTS:
                next_due = due[tenant]
                while next_due <= now and next_due < end:
                    await self._send(tenant, next_due)
                    next_due += 1 / plan.rate(tenant, next_due - start)
                due[tenant] = next_due
            if all(next_due >= end for next_due in due.values()):
                break
            await asyncio.sleep(TICK_S)
        await self._producer.flush()
        if self._failed:
            raise BenchError(f"{len(self._failed)} ingress writes failed: {self._failed[0]!r}")

    async def _send(self, tenant: str, due: float) -> None:
        intended = self.intended_ms[tenant]
        seq = len(intended)
        timestamp_ms = int(due * 1000)
        value = self._corpus.message(seq, b"%09d" % seq)
        delivery = await self._producer.send(
            self._topic, value, key=tenant.encode(), timestamp_ms=timestamp_ms
        )
        delivery.add_done_callback(self._check_delivery)
        intended.append(timestamp_ms)
        self.send_lag_ms.append((time.time() - due) * 1000)
        self.offered += 1

    def _check_delivery(self, delivery: asyncio.Future[Any]) -> None:
        if delivery.cancelled():
            self._failed.append(asyncio.CancelledError())
        elif delivery.exception() is not None:
            self._failed.append(delivery.exception())  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ processes


@dataclass(frozen=True)
class Run:
    """One bench run: its id, folder, admin token and the worker processes it starts."""

    id: str
    dir: Path
    bootstrap: str
    admin_token: str

    @property
    def prefix(self) -> str:
        """Every app id and topic of this run starts with it (so cleanup finds them)."""
        return f"lwbench-{self.id}-"

    def worker_env(self, name: str, **settings: str) -> dict[str, str]:
        """Settings of one system's workers: nothing shared with any other worker on the host."""
        return worker_env(
            self.bootstrap,
            f"{self.prefix}{name}",
            self.dir / "data",
            admin_token=self.admin_token,
            **settings,
        )

    def shared_worker(self, name: str, env: dict[str, str]) -> WorkerProcess:
        return WorkerProcess(env, self.dir / f"{name}-shared.log", name=f"{name} shared worker")

    def shared_workers(self, name: str, env: dict[str, str], count: int) -> list[WorkerProcess]:
        """`count` shared workers of one system (one consumer group): the first on `env`'s
        ports, each other on ports of its own (its state folder is named after its web port)."""
        if count == 1:
            return [self.shared_worker(name, env)]
        return [
            self.shared_worker(f"{name}-{n}", env if n == 1 else {**env, **fresh_ports()})
            for n in range(1, count + 1)
        ]

    def lane_worker(self, name: str, env: dict[str, str], nice: int) -> WorkerProcess:
        return WorkerProcess.lane(
            {**env, "LANEWAY_LANE_NICE": str(nice)},
            self.dir / f"{name}-lanes.log",
            name=f"{name} lane worker",
        )


def competing_processes() -> list[str]:
    """Other Laneway workers, benches and tests on this host: on 2 cores they skew every figure."""
    ours = {os.getpid(), os.getppid()}
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        pid = int(cmdline.parent.name)
        try:
            command = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # it exited meanwhile
            continue
        if pid not in ours and any(mark in command for mark in COMPETITOR_MARKS):
            found.append(f"{pid} {command.strip()[:120]}")
    return found


def host_state(stage: str) -> dict[str, Any]:
    """Load and competing processes before a measurement, with a warning when it is not idle."""
    competing = competing_processes()
    if competing:
        log(f"warning: {stage} shares the host with {len(competing)} other Laneway processes:")
        for line in competing:
            log(f"  {line}")
    return {"load_average_1m": round(os.getloadavg()[0], 2), "competing_processes": competing}


@contextlib.asynccontextmanager
async def running(processes: Sequence[WorkerProcess]) -> AsyncIterator[None]:
    """Start the processes, wait until each is Ready, stop them all on the way out."""
    try:
        for process in processes:
            log(f"starting {process.name} (log {process.log_path})")
            process.spawn()
        await asyncio.gather(*(p.ready(READY_TIMEOUT_S) for p in processes))
        yield
    finally:
        for process in processes:
            process.stop()


async def admin_call(
    session: aiohttp.ClientSession,
    method: str,
    port: int,
    path: str,
    token: str,
    body: dict[str, Any] | None = None,
) -> tuple[int, Any]:
    async with session.request(
        method,
        f"http://127.0.0.1:{port}{path}",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        return response.status, await response.json(content_type=None)


async def wait_for_status(
    session: aiohttp.ClientSession, port: int, path: str, token: str, status: int
) -> Any:
    """GET `path` until it answers `status` (the web server or the mirror may still be starting)."""
    deadline = time.monotonic() + HTTP_TIMEOUT_S
    while True:
        with contextlib.suppress(aiohttp.ClientConnectionError):
            answered, body = await admin_call(session, "GET", port, path, token)
            if answered == status:
                return body
        if time.monotonic() > deadline:
            raise BenchError(f"GET {path} on port {port} did not answer {status} in time")
        await asyncio.sleep(0.2)


class Watch:
    """Counts what a system has delivered; once a second logs phase, offered and delivered."""

    def __init__(
        self,
        kafka: Kafka,
        label: str,
        processes: Sequence[WorkerProcess],
        outputs: Sequence[TopicPartition],
        control: TopicPartition,
    ) -> None:
        self._kafka = kafka
        self._label = label
        self._processes = processes
        self._outputs = outputs
        self._control = control
        self._base: dict[TopicPartition, int] = {}

    async def ends(self) -> dict[TopicPartition, int]:
        """End offsets of the outputs and the control topic, of those that exist (a tenant's
        topics are created with its first records)."""
        existing = await self._kafka.existing_topics()
        wanted = [tp for tp in (*self._outputs, self._control) if tp.topic in existing]
        return await self._kafka.end_offsets(wanted)

    async def reset(self) -> dict[TopicPartition, int]:
        """Count from here on; returns the output offsets counting starts from."""
        ends = await self.ends()
        self._base = {tp: ends.get(tp, 0) for tp in self._outputs}
        return dict(self._base)

    async def until(
        self,
        done: Callable[[int], bool],
        phase: Callable[[], str],
        offered: Callable[[], int],
        timeout_s: float,
    ) -> bool:
        """Poll until `done(delivered)`; False if `timeout_s` passes first."""
        deadline = time.monotonic() + timeout_s
        while True:
            for process in self._processes:
                process.check_alive()
            ends = await self.ends()
            delivered = sum(ends.get(tp, 0) - self._base.get(tp, 0) for tp in self._outputs)
            finished = done(delivered)
            log(
                f"  {self._label:<11} {phase():<9} offered {offered():>8,}  "
                f"delivered {delivered:>8,}  lane moves {ends.get(self._control, 0)}"
            )
            if finished:
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(1.0)


# ---------------------------------------------------------------------------- calibration


async def calibrate(kafka: Kafka, run: Run, corpus: Corpus, messages: int) -> dict[str, Any]:
    """Drain a preloaded backlog with one shared worker (lanes off): its msgs/s is C."""
    host = host_state("calibration")
    env = run.worker_env("cal", lanes_enabled="false")
    table = topic_table(env["LANEWAY_TOPIC_PREFIX"])
    topics = table.names
    await declare_topics(kafka.admin, table, [topics.ingress])
    # Onboarded first: records of tenants nobody onboarded are parked unprocessed, which would
    # leave every output topic empty and C unmeasured.
    specs = (TenantSpec(id=tenant, name=f"Calibration {tenant}") for tenant in TENANTS)
    await write_tenant_configs(kafka.admin, kafka.producer, table, specs)
    log(f"calibration: preloading {messages:,} messages of {len(TENANTS)} tenants")
    for seq in range(messages):
        tenant = TENANTS[seq % len(TENANTS)]
        control_id = b"%09d" % seq
        await kafka.producer.send(
            topics.ingress, corpus.message(seq, control_id), key=tenant.encode()
        )
    await kafka.producer.flush()
    worker = run.shared_worker("calibration", env)
    outputs = [
        TopicPartition(topic, 0) for t in TENANTS for topic in (topics.out(t), topics.dlq(t))
    ]
    async with running([worker]):
        watch = Watch(kafka, "calibration", [worker], outputs, TopicPartition(topics.control, 0))
        if not await watch.until(
            lambda delivered: delivered >= messages, lambda: "drain", lambda: messages, 300.0
        ):
            raise BenchError("calibration: the worker did not drain the backlog in time")
    existing = await kafka.existing_topics()
    ends = await kafka.end_offsets([tp for tp in outputs if tp.topic in existing])
    records = await kafka.read({tp: (0, end) for tp, end in ends.items()})
    stamps = sorted(record.timestamp for record in records)
    # The middle of the drain: its start pays for declaring 20 new output topics one by one.
    low, high = len(stamps) * CALIBRATION_TRIM // 100, len(stamps) * (100 - CALIBRATION_TRIM) // 100
    span_s = (stamps[high] - stamps[low]) / 1000
    capacity = (high - low) / span_s
    log(
        f"calibration: capacity C = {capacity:,.0f} msg/s ({high - low:,} of {len(stamps):,} "
        f"messages in {span_s:.1f} s; whole drain {(stamps[-1] - stamps[0]) / 1000:.1f} s)"
    )
    return {
        "messages": len(stamps),
        "measured_messages": high - low,
        "measured_s": round(span_s, 2),
        "drain_s": round((stamps[-1] - stamps[0]) / 1000, 2),
        "msgs_per_s": capacity,
        "host": host,
    }


# ------------------------------------------------------------------------------- memory


async def idle_tenant_memory(kafka: Kafka, run: Run, count: int) -> dict[str, Any]:
    """RSS of a shared worker with `count` configured idle tenants vs one with none."""
    loaded_env, empty_env = run.worker_env("idle"), run.worker_env("empty")
    table = topic_table(loaded_env["LANEWAY_TOPIC_PREFIX"])
    topics = table.names
    log(f"idle tenants: writing {count:,} tenant configs to {topics.tenants}")
    specs = (
        TenantSpec(
            id=f"idle-{index:05d}",
            name=f"Idle tenant {index}",
            senders=[SenderIdentity(application=f"IDLE{index:05d}", facility="IDLE_FACILITY")],
        )
        for index in range(count)
    )
    await write_tenant_configs(kafka.admin, kafka.producer, table, specs)
    loaded = run.shared_worker("idle-loaded", loaded_env)
    empty = run.shared_worker("idle-empty", empty_env)
    loaded_port, empty_port = (
        int(loaded_env["LANEWAY_WEB_PORT"]),
        int(empty_env["LANEWAY_WEB_PORT"]),
    )
    token = run.admin_token
    async with running([loaded, empty]), aiohttp.ClientSession() as session:
        # One partition, applied in order: the last tenant present means all of them are. Listing
        # all 10,000 first would leave the allocations of a 10,000-entry answer in the RSS.
        await wait_for_status(
            session, loaded_port, f"/api/tenants/idle-{count - 1:05d}", token, 200
        )
        await wait_for_status(session, empty_port, "/api/tenants", token, 200)
        await asyncio.sleep(RSS_SETTLE_S)
        samples: dict[str, list[int]] = {"loaded": [], "empty": []}
        for _ in range(RSS_SAMPLES):
            samples["loaded"].append(rss_bytes(loaded.pid))
            samples["empty"].append(rss_bytes(empty.pid))
            await asyncio.sleep(0.5)
        listed = {}
        for name, port in (("loaded", loaded_port), ("empty", empty_port)):
            _, body = await admin_call(session, "GET", port, "/api/tenants", token)
            listed[name] = len(body["tenants"])
    if listed != {"loaded": count, "empty": 0}:
        raise BenchError(f"idle tenants: /api/tenants listed {listed}, expected {count} and 0")
    loaded_rss = statistics.median(samples["loaded"])
    empty_rss = statistics.median(samples["empty"])
    per_tenant = (loaded_rss - empty_rss) / count
    log(
        f"idle tenants: RSS {loaded_rss / 2**20:.1f} MiB with {count:,} vs "
        f"{empty_rss / 2**20:.1f} MiB empty: {per_tenant:,.0f} bytes per tenant"
    )
    return {
        "tenants": count,
        "loaded_rss_bytes": int(loaded_rss),
        "empty_rss_bytes": int(empty_rss),
        "bytes_per_tenant": round(per_tenant),
    }


# ------------------------------------------------------------------------------ systems


@dataclass
class Outcome:
    """One system's outputs joined to the offered messages (first copy of each), and counts."""

    label: str
    onset_ms: int
    tenant: np.ndarray  # per delivered message: index into TENANTS
    sent_s: np.ndarray  # intended send time, seconds since the burst onset
    out_s: np.ndarray  # out record time, seconds since the burst onset
    latency_ms: np.ndarray
    offered_s: list[np.ndarray]  # per tenant: intended send times of everything offered
    lost: int
    duplicates: int
    order_violations: int
    dlq: int
    moves: list[dict[str, Any]]  # control-topic records, with `at_s` since the onset
    host: dict[str, Any]  # load and competing processes when the system started
    drained: bool  # every offered message had an output before the drain wait ran out
    send_lag: dict[str, float | None]  # the generator's lateness, p50/p99/max ms


async def run_system(
    kafka: Kafka,
    run: Run,
    label: str,
    lanes_enabled: bool,
    plan: LoadPlan,
    corpus: Corpus,
    args: argparse.Namespace,
) -> Outcome:
    host = host_state(label)
    env = run.worker_env(
        label,
        lanes_enabled=str(lanes_enabled).lower(),
        LANEWAY_HOLD_DOWN_S=str(args.hold_down_seconds),
        LANEWAY_LANE_DRAIN_RATE=str(args.lane_drain_rate),
    )
    table = topic_table(env["LANEWAY_TOPIC_PREFIX"])
    topics = table.names
    lanes = [topics.dedicated_lanes]
    await declare_topics(kafka.admin, table, [topics.ingress])
    # The lane worker declares its lanes itself, but subscribes before the new topics reach its
    # metadata: it is then assigned nothing until the next refresh, 5 minutes later.
    await declare_topics(kafka.admin, table, lanes)
    shared = run.shared_workers(label, env, args.shared_workers)
    processes = [*shared, run.lane_worker(label, env, args.lane_nice)]
    outputs = [
        TopicPartition(topic, 0) for t in TENANTS for topic in (topics.out(t), topics.dlq(t))
    ]
    control = TopicPartition(topics.control, 0)
    producer = AIOKafkaProducer(
        bootstrap_servers=run.bootstrap, acks="all", enable_idempotence=True, linger_ms=0
    )
    await producer.start()
    try:
        async with running(processes), aiohttp.ClientSession() as session:
            # The load starts only once every shared worker holds its share of the partitions.
            group = env["LANEWAY_APP_ID"]
            if not await group_settles(run.bootstrap, group, len(shared), SETTLE_TIMEOUT_S):
                raise BenchError(f"{label}: group {group} did not settle with {len(shared)}")
            port = int(env["LANEWAY_WEB_PORT"])
            await wait_for_status(session, port, "/api/tenants", run.admin_token, 200)
            for tenant in TENANTS:
                body = {
                    "id": tenant,
                    "name": f"Isolation bench {tenant}",
                    "rate_per_s": plan.contract_rate,
                    "burst": math.ceil(plan.contract_rate),
                }
                status, answer = await admin_call(
                    session, "POST", port, "/api/tenants", run.admin_token, body
                )
                if status != 201:
                    raise BenchError(f"{label}: onboarding {tenant} answered {status}: {answer}")
            watch = Watch(kafka, label, processes, outputs, control)
            await probe(watch, producer, topics.ingress, lanes, corpus)
            start_offsets = await watch.reset()
            generator = Generator(producer, topics.ingress, plan, corpus)
            # The bench's own full collections (60-90 ms every ~3 s, measured) would stall the
            # generator and count as latency: its start-up heap stays out of their reach.
            gc.collect()
            gc.freeze()
            start = time.time() + 0.5
            log(f"{label}: {plan.duration_s:.0f} s of load")
            generating = asyncio.create_task(generator.run(start))
            try:
                await watch.until(
                    lambda _: generating.done(),
                    lambda: plan.phase(time.time() - start),
                    lambda: generator.offered,
                    plan.duration_s + 60,
                )
                await generating
            finally:
                generating.cancel()
            drained = await watch.until(
                lambda delivered: delivered >= generator.offered,
                lambda: "drain",
                lambda: generator.offered,
                DRAIN_TIMEOUT_S,
            )
            if not drained:
                log(f"{label}: not everything arrived within {DRAIN_TIMEOUT_S:.0f} s")
            # Lets a late duplicate land before the outputs are read.
            await asyncio.sleep(1.0)
            ends = await watch.ends()  # a tenant's DLQ topic exists once it had a reject
            records = await kafka.read(
                {tp: (start_offsets[tp], ends[tp]) for tp in ends if tp in outputs}
            )
            moves = await kafka.read({control: (0, ends[control])})
    finally:
        await producer.stop()
    onset_ms = int((start + plan.onset_s) * 1000)
    return join(label, generator, records, moves, topics, onset_ms, host=host, drained=drained)


async def probe(
    watch: Watch,
    producer: AIOKafkaProducer,
    ingress: str,
    lanes: Sequence[str],
    corpus: Corpus,
) -> None:
    """One message per tenant into ingress and one straight into each dedicated lane, end to end:
    both workers have their partitions and the output path is warm before the load starts."""
    sends = [(ingress, tenant) for tenant in TENANTS] + list(zip(lanes, TENANTS, strict=False))
    for topic, tenant in sends:
        await producer.send(topic, corpus.message(0, b"probe"), key=tenant.encode())
    await producer.flush()
    if not await watch.until(
        lambda delivered: delivered >= len(sends), lambda: "probe", lambda: len(sends), 60.0
    ):
        raise BenchError(
            "the probe messages did not all come through within 60 s: is every worker assigned "
            "its partitions? (see the worker logs)"
        )


def join(
    label: str,
    generator: Generator,
    records: list[ConsumerRecord],
    control_records: list[ConsumerRecord],
    topics: TopicNames,
    onset_ms: int,
    *,
    host: dict[str, Any],
    drained: bool,
) -> Outcome:
    origin: dict[str, tuple[int, bool]] = {}  # output topic -> (tenant index, is DLQ)
    for index, tenant in enumerate(TENANTS):
        origin[topics.out(tenant)] = (index, False)
        origin[topics.dlq(tenant)] = (index, True)
    intended = [np.frombuffer(generator.intended_ms[t], dtype=np.int64) for t in TENANTS]
    received = [np.zeros(len(times), dtype=bool) for times in intended]
    last_offset = [-1] * len(TENANTS)
    seen: set[bytes] = set()
    duplicates = order_violations = dlq = 0
    rows: list[tuple[int, int, int]] = []  # (tenant index, intended ms, out ms)
    for record in records:  # each topic's records in offset order: the order consumers see
        index, is_dlq = origin[record.topic]
        key = dict(record.headers)[HEADER_IDEMPOTENCY_KEY]
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        _, control_id, ref = key.decode().split(":")  # tenant:control id:partition-offset-index
        if not control_id.isdigit():
            continue  # a late copy of a probe message
        seq = int(control_id)
        received[index][seq] = True
        if is_dlq:
            dlq += 1
            continue
        ingress_offset = int(ref.split("-")[1])  # one tenant = one ingress partition
        if ingress_offset < last_offset[index]:
            order_violations += 1
        else:
            last_offset[index] = ingress_offset
        rows.append((index, int(intended[index][seq]), record.timestamp))
    table = np.array(rows, dtype=np.int64).reshape(-1, 3)
    moves = []
    for record in control_records:
        move = orjson.loads(record.value)
        at_ms = datetime.fromisoformat(move["at"]).timestamp() * 1000
        moves.append({**move, "at_s": round((at_ms - onset_ms) / 1000, 3)})
    return Outcome(
        label=label,
        onset_ms=onset_ms,
        tenant=table[:, 0],
        sent_s=(table[:, 1] - onset_ms) / 1000,
        out_s=(table[:, 2] - onset_ms) / 1000,
        latency_ms=(table[:, 2] - table[:, 1]).astype(np.float64),
        offered_s=[(times - onset_ms) / 1000 for times in intended],
        lost=int(sum(np.count_nonzero(~got) for got in received)),
        duplicates=duplicates,
        order_violations=order_violations,
        dlq=dlq,
        moves=moves,
        host=host,
        drained=drained,
        send_lag=percentiles(np.frombuffer(generator.send_lag_ms, dtype=np.float64)),
    )


# ------------------------------------------------------------------------------ analysis


def percentiles(latency_ms: np.ndarray) -> dict[str, float | None]:
    """p50, p99 and max in ms; None for no messages."""
    if latency_ms.size == 0:
        return dict.fromkeys(("p50_ms", "p99_ms", "max_ms"))
    return {
        "p50_ms": round(float(np.percentile(latency_ms, 50)), 1),
        "p99_ms": round(float(np.percentile(latency_ms, 99)), 1),
        "max_ms": round(float(latency_ms.max()), 1),
    }


def bucket_p99(
    sent_s: np.ndarray, latency_ms: np.ndarray, start_s: float, buckets: int
) -> list[float | None]:
    """p99 of each BUCKET_S bucket of intended send time from `start_s` (None: empty)."""
    index = np.floor((sent_s - start_s) / BUCKET_S).astype(np.int64)
    keep = (index >= 0) & (index < buckets)
    order = np.argsort(index[keep], kind="stable")
    index, latency = index[keep][order], latency_ms[keep][order]
    bounds = np.searchsorted(index, np.arange(buckets + 1))
    return [percentiles(latency[low:high])["p99_ms"] for low, high in pairwise(bounds)]


@dataclass
class Summary:
    """The figures of one system."""

    windows: dict[str, Any]  # window -> quiet/noisy pooled figures and the per-tenant table
    threshold_ms: float
    series_start_s: float
    quiet_series: list[float | None]
    noisy_series: list[float | None]
    recovery_s: float | None
    recovery_buckets_over: int  # 1-s buckets of the recovery phase with quiet p99 over threshold
    promotion_s: float | None
    demotion_s: float | None

    def quiet_p99(self, window: str) -> float | None:
        return self.windows[window]["quiet"]["p99_ms"]

    def worst_quiet_p99(self, window: str) -> float | None:
        tenants = self.windows[window]["tenants"]
        values = [tenants[t]["p99_ms"] for t in QUIET_TENANTS if tenants[t]["p99_ms"] is not None]
        return max(values) if values else None


def summarize(outcome: Outcome, plan: LoadPlan) -> Summary:
    quiet = outcome.tenant != NOISY_INDEX
    windows: dict[str, Any] = {}
    for name, (low, high) in plan.windows().items():
        sent_in = (outcome.sent_s >= low) & (outcome.sent_s < high)
        out_in = (outcome.out_s >= low) & (outcome.out_s < high)
        tenants = {}
        for index, tenant in enumerate(TENANTS):
            mine = outcome.tenant == index
            offered = outcome.offered_s[index]
            tenants[tenant] = {
                "offered": int(np.count_nonzero((offered >= low) & (offered < high))),
                "delivered": int(np.count_nonzero(mine & out_in)),
                **percentiles(outcome.latency_ms[mine & sent_in]),
            }
        windows[name] = {
            "from_s": low,
            "to_s": high,
            "quiet": percentiles(outcome.latency_ms[quiet & sent_in]),
            "noisy": percentiles(outcome.latency_ms[~quiet & sent_in]),
            "tenants": tenants,
        }
    steady_p99 = windows["steady"]["quiet"]["p99_ms"]
    threshold = max(2 * steady_p99, steady_p99 + 50)
    series_start = -plan.steady_s
    buckets = math.ceil((plan.burst_s + plan.recovery_s + plan.steady_s) / BUCKET_S)
    onset_bucket = round(plan.steady_s / BUCKET_S)
    burst_end_bucket = onset_bucket + math.ceil(plan.burst_s / BUCKET_S)
    quiet_series = bucket_p99(
        outcome.sent_s[quiet], outcome.latency_ms[quiet], series_start, buckets
    )
    noisy_series = bucket_p99(
        outcome.sent_s[~quiet], outcome.latency_ms[~quiet], series_start, buckets
    )
    noisy_moves = [m for m in outcome.moves if m["tenant"] == NOISY_TENANT and m["at_s"] >= 0]
    promotions = [m["at_s"] for m in noisy_moves if m["from"] is None and m["to"] is not None]
    demotions = [m["at_s"] for m in noisy_moves if m["from"] is not None and m["to"] is None]
    return Summary(
        windows=windows,
        threshold_ms=round(threshold, 1),
        series_start_s=series_start,
        quiet_series=quiet_series,
        noisy_series=noisy_series,
        recovery_s=back_under(quiet_series[onset_bucket:burst_end_bucket], threshold),
        recovery_buckets_over=sum(
            1 for value in quiet_series[burst_end_bucket:] if (value or 0.0) > threshold
        ),
        promotion_s=promotions[0] if promotions else None,
        demotion_s=demotions[0] if demotions else None,
    )


def back_under(burst: list[float | None], threshold: float) -> float | None:
    """Seconds from the onset to the first bucket from which every later burst bucket is within
    the threshold; None if the burst's last bucket is still above it."""
    above = [k for k, value in enumerate(burst) if (value or 0.0) > threshold]
    if not above:
        return 0.0
    if above[-1] == len(burst) - 1:
        return None
    return (above[-1] + 1) * BUCKET_S


def plot(results: dict[str, tuple[Outcome, Summary]], plan: LoadPlan, path: Path) -> None:
    """p99 per 1-s bucket, quiet vs noisy, one panel per system; phases and moves marked."""
    figure = Figure(figsize=(16, 5.5), layout="constrained")
    FigureCanvasAgg(figure)  # render with Agg: no display needed
    panels = figure.subplots(1, len(results), sharey=True)
    for axes, (label, (outcome, summary)) in zip(panels, results.items(), strict=True):
        x = summary.series_start_s + np.arange(len(summary.quiet_series)) * BUCKET_S
        for series, color, name in (
            (summary.quiet_series, "tab:blue", "quiet tenants p99"),
            (summary.noisy_series, "tab:red", "noisy tenant p99"),
        ):
            values = np.array([np.nan if v is None else v for v in series], dtype=np.float64)
            axes.step(x, values, where="post", color=color, label=name)
        axes.axhline(
            summary.threshold_ms,
            color="grey",
            linestyle="--",
            label=f"threshold {summary.threshold_ms:.0f} ms",
        )
        axes.axvspan(0, ONSET_S, color="orange", alpha=0.15, label=f"onset ({ONSET_S:.0f} s)")
        for boundary in (0.0, plan.burst_s):
            axes.axvline(boundary, color="black", linestyle=":", linewidth=1)
        for move in outcome.moves:
            promotion = move["to"] is not None
            axes.axvline(
                move["at_s"],
                color="tab:green" if promotion else "tab:purple",
                linewidth=1.5,
                label=f"{'promotion' if promotion else 'demotion'} {move['at_s']:.1f} s",
            )
        axes.set(
            title=f"{label}: burst 0-{plan.burst_s:.0f} s, recovery to "
            f"{plan.burst_s + plan.recovery_s:.0f} s",
            xlabel="intended send time since burst onset (s)",
            ylabel="end-to-end latency p99 per 1-s bucket (ms)",
            yscale="log",
        )
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(loc="upper right", fontsize="small")
    figure.savefig(path, dpi=100)


# ---------------------------------------------------------------------------------- main


def report(
    plan: LoadPlan,
    calibration: dict[str, Any],
    memory: dict[str, Any],
    results: dict[str, tuple[Outcome, Summary]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    lanes, lanes_summary = results["lanes"]
    naive, naive_summary = results["naive"]
    burst_p99 = lanes_summary.quiet_p99("burst")
    naive_burst_p99 = naive_summary.quiet_p99("burst")
    worst_burst_p99 = lanes_summary.worst_quiet_p99("burst")
    promotions = sum(1 for m in lanes.moves if m["to"] is not None)
    acceptance = {
        "every_quiet_tenant_burst_p99_under_threshold": worst_burst_p99 is not None
        and worst_burst_p99 <= lanes_summary.threshold_ms,
        "quiet_burst_p99_10x_better_than_naive": burst_p99 is not None
        and naive_burst_p99 is not None
        and naive_burst_p99 >= NAIVE_FACTOR * burst_p99,
        "promotion_within_3_s": lanes_summary.promotion_s is not None
        and lanes_summary.promotion_s <= PROMOTION_BUDGET_S,
        "back_under_threshold_within_5_s": lanes_summary.recovery_s is not None
        and lanes_summary.recovery_s <= RECOVERY_BUDGET_S,
        "one_promotion_one_demotion": len(lanes.moves) == 2 and promotions == 1,
        "zero_lost": lanes.lost == 0,
        "zero_order_violations": lanes.order_violations == 0,
        "idle_tenant_at_most_5_kb": memory["bytes_per_tenant"] <= IDLE_TENANT_BUDGET_BYTES,
    }
    settings = Settings(lanes_enabled=True, hold_down_s=args.hold_down_seconds)
    systems = {}
    for label, (outcome, summary) in results.items():
        systems[label] = {
            "threshold_ms": summary.threshold_ms,
            "recovery_s": summary.recovery_s,
            "recovery_buckets_over_threshold": summary.recovery_buckets_over,
            "promotion_s": summary.promotion_s,
            "demotion_s": summary.demotion_s,
            "lost": outcome.lost,
            "drained": outcome.drained,
            "duplicates": outcome.duplicates,
            "order_violations": outcome.order_violations,
            "dlq": outcome.dlq,
            "delivered": int(outcome.tenant.size),
            "offered": int(sum(times.size for times in outcome.offered_s)),
            "moves": outcome.moves,
            "host": outcome.host,
            "generator_send_lag": outcome.send_lag,
            "windows": summary.windows,
            "series_start_s": summary.series_start_s,
            "quiet_p99_series_ms": summary.quiet_series,
            "noisy_p99_series_ms": summary.noisy_series,
        }
    return {
        "quiet_p99_steady_ms": lanes_summary.quiet_p99("steady"),
        "quiet_p99_burst_ms": burst_p99,
        "naive_quiet_p99_burst_ms": naive_burst_p99,
        "promotion_s": lanes_summary.promotion_s,
        "recovery_s": lanes_summary.recovery_s,
        "lost": lanes.lost,
        "order_violations": lanes.order_violations,
        "lane_moves": len(lanes.moves),
        "bytes_per_idle_tenant": memory["bytes_per_tenant"],
        "threshold_ms": lanes_summary.threshold_ms,
        "quiet_p99_onset_ms": lanes_summary.quiet_p99("onset"),
        "quiet_p99_burst_worst_tenant_ms": worst_burst_p99,
        "quiet_p99_recovery_ms": lanes_summary.quiet_p99("recovery"),
        "recovery_buckets_over_threshold": lanes_summary.recovery_buckets_over,
        "naive_quiet_p99_steady_ms": naive_summary.quiet_p99("steady"),
        "naive_quiet_p99_onset_ms": naive_summary.quiet_p99("onset"),
        "naive_recovery_s": naive_summary.recovery_s,
        "naive_over_lanes_quiet_p99_burst": round(naive_burst_p99 / burst_p99, 1)
        if burst_p99 and naive_burst_p99
        else None,
        "demotion_s": lanes_summary.demotion_s,
        "duplicates": lanes.duplicates,
        "naive_lost": naive.lost,
        "naive_order_violations": naive.order_violations,
        "naive_lane_moves": len(naive.moves),
        "noisy": {
            label: {
                window: {
                    key: summary.windows[window]["tenants"][NOISY_TENANT][key]
                    for key in ("offered", "delivered", "p50_ms", "p99_ms", "max_ms")
                }
                for window in plan.windows()
            }
            for label, (_, summary) in results.items()
        },
        "acceptance": acceptance,
        "shared_workers": args.shared_workers,
        "capacity_msgs_per_s": round(plan.capacity, 1),
        "calibration": {**calibration, "msgs_per_s": round(calibration["msgs_per_s"], 1)},
        "rates_msgs_per_s": {
            "quiet_per_tenant": round(plan.quiet_rate, 2),
            "quiet_total": round(plan.quiet_rate * len(QUIET_TENANTS), 1),
            "noisy_steady": round(plan.quiet_rate, 2),
            "noisy_burst": round(plan.burst_rate, 1),
            "contract_per_tenant": round(plan.contract_rate, 2),
            "promotion_threshold": round(settings.promote_factor * plan.contract_rate, 1),
        },
        "phases_s": {
            "warmup": plan.warmup_s,
            "steady": plan.steady_s,
            "burst": plan.burst_s,
            "recovery": plan.recovery_s,
            "onset_excluded": ONSET_S,
        },
        "settings": {
            "LANEWAY_HOLD_DOWN_S": settings.hold_down_s,
            "LANEWAY_PROMOTE_FACTOR": settings.promote_factor,
            "LANEWAY_PROMOTE_MIN_RATE": settings.promote_min_rate,
            "LANEWAY_CALM_FACTOR": settings.calm_factor,
            "LANEWAY_DEDICATED_LANES": settings.dedicated_lanes,
            "LANEWAY_BATCH_MAX": settings.batch_max,
            "LANEWAY_BATCH_WITHIN_S": settings.batch_within_s,
            "LANEWAY_INGRESS_PARTITIONS": settings.ingress_partitions,
            "lane_worker_nice": args.lane_nice,
            "LANEWAY_LANE_DRAIN_RATE": args.lane_drain_rate,
            "shared_workers": args.shared_workers,
        },
        "idle_memory": memory,
        "systems": systems,
        "notes": [
            "Latency = out record CreateTime - ingress CreateTime; the generator stamps each "
            "ingress record with its intended send time (open loop), so generator stalls count.",
            "Windows are by intended send time, in seconds since the burst onset. 'burst' "
            f"excludes the first {ONSET_S:.0f} s after the onset, reported as 'onset' "
            "(quiet_p99_onset_ms); quiet_p99_* pool all quiet tenants.",
            "threshold_ms = max(2 x steady quiet p99, steady quiet p99 + 50 ms); recovery_s = "
            "time from the onset to the first 1-s bucket from which every later bucket of the "
            "burst keeps the quiet p99 within it; recovery_buckets_over_threshold counts the "
            "recovery phase's buckets above it (the lane move back happens there).",
            "Per-tenant 'offered' counts messages intended in the window, 'delivered' those "
            "whose output was written in it.",
            "lost = offered messages with no output (out or DLQ) after the final drain wait "
            f"(at most {DRAIN_TIMEOUT_S:.0f} s; 'drained' says whether it sufficed); "
            "duplicates and order are judged by idempotency key and ingress offset.",
            f"LANEWAY_HOLD_DOWN_S is {settings.hold_down_s:g} s for the bench (default 120 s); "
            f"the lane worker runs with LANEWAY_LANE_NICE={args.lane_nice} (process and "
            "autogroup). The naive system has LANEWAY_LANES_ENABLED=false.",
            "bytes_per_idle_tenant = (VmRSS with N tenant configs - VmRSS with none) / N, two "
            "fresh shared workers, tenant records written straight to the tenants topic.",
            f"Each system ran {args.shared_workers} shared worker(s) in one consumer group "
            "(their routers split the ingress partitions) and one lane worker; capacity C is "
            "one shared worker's, so the offered load is the same whatever their number.",
        ],
        "kafka_version": kafka_version(args.bootstrap),
        "cpu_count": os.cpu_count(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    run_id = new_run_id()
    run = Run(run_id, REPO / ".run" / "bench" / run_id, args.bootstrap, secrets.token_urlsafe(24))
    corpus = Corpus(CORPUS_SEED, CORPUS_TEMPLATES)
    kafka = Kafka(args.bootstrap)
    await kafka.start()
    try:
        calibration = await calibrate(kafka, run, corpus, args.calibration_messages)
        memory = await idle_tenant_memory(kafka, run, args.idle_tenants)
        plan = LoadPlan(
            capacity=calibration["msgs_per_s"],
            warmup_s=WARMUP_S,
            steady_s=args.steady_seconds,
            burst_s=args.burst_seconds,
            recovery_s=0.0,
        )
        plan = replace(
            plan, recovery_s=recovery_seconds(plan, args.hold_down_seconds, args.lane_drain_rate)
        )
        log(
            f"load: {len(QUIET_TENANTS)} quiet tenants at {plan.quiet_rate:.1f} msg/s each, "
            f"noisy {plan.quiet_rate:.1f} -> {plan.burst_rate:.0f} msg/s for {plan.burst_s:.0f} s; "
            f"contracts {plan.contract_rate:.1f} msg/s"
        )
        results: dict[str, tuple[Outcome, Summary]] = {}
        for label, lanes_enabled in (("lanes", True), ("naive", False)):
            outcome = await run_system(kafka, run, label, lanes_enabled, plan, corpus, args)
            results[label] = (outcome, summarize(outcome, plan))
    finally:
        await clean_up(kafka, run.prefix)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    plot(results, plan, RESULTS_DIR / "isolation.png")
    return {
        **report(plan, calibration, memory, results, args),
        "wall_time_s": round(time.monotonic() - started, 1),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steady-seconds", type=float, default=20.0)
    parser.add_argument("--burst-seconds", type=float, default=60.0)
    parser.add_argument(
        "--hold-down-seconds",
        type=float,
        default=20.0,
        help="LANEWAY_HOLD_DOWN_S of the bench's workers (the default of 120 s is too long here)",
    )
    parser.add_argument("--calibration-messages", type=int, default=60_000)
    parser.add_argument("--idle-tenants", type=int, default=10_000)
    parser.add_argument("--lane-nice", type=int, default=10, help="its LANEWAY_LANE_NICE")
    parser.add_argument(
        "--lane-drain-rate",
        type=float,
        default=Settings().lane_drain_rate,
        help="LANEWAY_LANE_DRAIN_RATE of the lane worker (0 = no bound)",
    )
    parser.add_argument(
        "--shared-workers",
        type=int,
        default=1,
        help="shared workers of each system (one consumer group, each its own ports)",
    )
    parser.add_argument("--bootstrap", default=default_bootstrap())
    args = parser.parse_args()
    if args.steady_seconds <= 0 or args.burst_seconds <= ONSET_S or args.hold_down_seconds < 0:
        parser.error(f"steady must be positive, burst longer than {ONSET_S:.0f} s")
    if args.calibration_messages < len(TENANTS) or args.idle_tenants < 1:
        parser.error("--calibration-messages and --idle-tenants are too small")
    if args.shared_workers < 1:
        parser.error("--shared-workers must be at least 1")
    return args


def _summary(results: dict[str, Any]) -> str:
    passed = sum(results["acceptance"].values())
    return (
        f"isolation ({results['shared_workers']} shared): C "
        f"{results['capacity_msgs_per_s']:,.0f} msg/s; quiet p99 steady "
        f"{results['quiet_p99_steady_ms']} / burst {results['quiet_p99_burst_ms']} ms (naive "
        f"{results['naive_quiet_p99_burst_ms']} ms); promotion {results['promotion_s']} s, "
        f"recovery {results['recovery_s']} s, {results['lane_moves']} lane moves, "
        f"{results['lost']} lost, {results['order_violations']} out of order, "
        f"{results['bytes_per_idle_tenant']:,} B/idle tenant; "
        f"{passed}/{len(results['acceptance'])} acceptance points in "
        f"{results['wall_time_s']:.0f}s -> bench/results/isolation.json, isolation.png"
    )


def main() -> None:
    run_bench(bench, parse_args(), "isolation", _summary, failures=(HarnessError, KafkaError))


if __name__ == "__main__":
    main()
