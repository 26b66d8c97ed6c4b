"""Many tenants on one shared worker: what an idle tenant costs, and whether stats, idle CPU and
a restart keep up.

The bench runs a throwaway Kafka of its own (tests/harness/outage.py: its own run dir and ports,
the development broker's jars), so the per-tenant topics never land on the shared development
broker. A tenant's out and DLQ topics come with its first records, so only the active tenants'
exist. Its heap is `--broker-heap` (default 2 GiB: KRaft keeps every topic's metadata on the
heap, ~1 KB per partition, and the broker's log manager a few objects more), and the bench
raises the open-files limit it and the worker inherit, since the broker keeps every partition's
log segment open (one topic per tenant would need more than the usual 20,000 descriptors).

One shared worker (no lane worker: nobody floods) then goes through:
1. Baseline: RSS once it has started and settled.
2. Onboarding: `--api-tenants` tenants through `POST /api/tenants` (admin), `--concurrency` at
   a time, half first and half last, the others seeded in between; a progress line every few
   seconds. A tenant counts once POST answered 201: it is usable then.
   Every `--probe-every` tenants the bench creates one topic itself (its own admin client) and
   times it: the broker's share of an onboarding, beside the POST latency.
3. Idle: RSS and CPU over `--idle-s` with N idle tenants (nothing was ever sent).
4. Active: `--active` tenants send over HTTP ingest at `--rate` msg/s each for `--active-s`,
   the rest stay idle; meanwhile `GET /api/stats` (admin, every tenant) `--stats-calls` times.
5. Idle again: once every accepted message is processed, CPU over `--idle-s`; RSS; /api/stats
   again.
6. Restart: SIGTERM, then a new worker on the same data dir, timed until `/api/stats` lists
   every tenant and an active tenant's message is accepted (202).

    python -m bench.tenants [--tenants 10000] [--active 1000] [--rate 1] [--concurrency 4]

Writes bench/results/tenants.json and tenants.png (worker RSS and onboarding latency against the
tenant count); exits 1 naming every target missed. Message bodies are never logged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import random
import resource
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.common import (
    REPO,
    RESULTS_DIR,
    BenchError,
    create_topics,
    git_commit,
    log,
    new_run_id,
    rss_bytes,
    run_bench,
    targets_verdict,
)
from bench.isolation import host_state, percentiles
from bench.outage import kafka_version
from streams.auth import hash_token, new_token
from streams.tenants import TenantRecord, TenantSpec
from streams.topics import TopicNames
from tests.harness import READY, Api, Sender, WorkerProcess, message, worker_env
from tests.harness.outage import ThrowawayCluster

# The acceptance point (issue 14).
RSS_PER_IDLE_TENANT_KB = 5.0
STATS_P99_MS = 1000.0
IDLE_CPU_PCT = 5.0
RESTART_READY_S = 10.0

READY_TIMEOUT_S = 300.0
PROGRESS_EVERY_S = 5.0
SAMPLE_EVERY_S = 2.0
POLL_S = 0.1
# A 503 (registry or broker away for a moment) is retried this often before the bench gives up.
ONBOARD_RETRIES = 5
ONBOARD_RETRY_S = 1.0
# File descriptors the broker may need: one per partition (its open log segment), and ample
# headroom for the internal topics, index files being rolled and connections.
FDS_PER_TOPIC = 2
FDS_HEADROOM = 20_000
# Onboarding stops while this many descriptors are still free for the broker: it refuses to go
# on past its open-files limit (the log dir goes offline), and the restart needs connections.
FDS_RESERVE = 200
FDS_CHECK_EVERY = 10  # tenants; each costs a listing of /proc/<broker>/fd
SEED_BATCH = 250  # tenants per CreateTopics request when seeding
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- pure helpers


def cpu_seconds(stat_line: str) -> float:
    """User + system CPU seconds of a process, from its /proc/<pid>/stat line (all threads)."""
    # The command name (field 2) may hold spaces and parentheses: count fields after its ')'.
    fields = stat_line[stat_line.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of the whole line
    return (utime + stime) / CLOCK_TICKS


def process_cpu_seconds(pid: int) -> float:
    return cpu_seconds(Path(f"/proc/{pid}/stat").read_text())


def cpu_pct(cpu_before_s: float, cpu_after_s: float, wall_s: float) -> float:
    """Percent of one core used over a wall-clock span."""
    return round(100.0 * (cpu_after_s - cpu_before_s) / wall_s, 2) if wall_s > 0 else math.nan


def per_tenant_kb(rss_before: int, rss_after: int, tenants: int) -> float | None:
    """RSS growth per tenant, in KB (1,000 bytes, as the target says); None without tenants."""
    if tenants <= 0:
        return None
    return round((rss_after - rss_before) / tenants / 1000, 2)


def tenant_id(index: int) -> str:
    return f"bt-{index:05d}"


def tenant_body(tenant: str) -> dict[str, Any]:
    """The bench's tenant, as POST /api/tenants takes it: no MLLP senders (HTTP only)."""
    return {"id": tenant, "name": f"Bench {tenant}", "senders": [], "rate_per_s": 50, "burst": 100}


def bucket_latencies(
    done: Sequence[tuple[int, float]], bucket: int
) -> list[tuple[int, float, float]]:
    """(tenants onboarded at the bucket's end, p50 ms, p99 ms) per `bucket` onboardings, from
    (onboarded count when it answered, latency ms) pairs in answer order."""
    rows = []
    for start in range(0, len(done), bucket):
        chunk = done[start : start + bucket]
        latency = np.array([ms for _, ms in chunk])
        rows.append(
            (
                chunk[-1][0],
                round(float(np.percentile(latency, 50)), 1),
                round(float(np.percentile(latency, 99)), 1),
            )
        )
    return rows


def open_files_limit(limits_text: str) -> int:
    """The soft "Max open files" of a process, from its /proc/<pid>/limits."""
    for line in limits_text.splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise BenchError("no 'Max open files' in the process limits")


def open_files_wanted(tenants: int) -> int:
    return FDS_PER_TOPIC * 2 * tenants + FDS_HEADROOM


def raise_open_files(wanted: int) -> tuple[int, int]:
    """Raise this process's open-files limit (the broker and worker it starts inherit it) to
    `wanted` if allowed: past the hard limit only as root. The (soft, hard) limit it now has."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# ---------------------------------------------------------------- the run


@dataclass
class Sample:
    at: float  # monotonic
    tenants: int  # onboarded so far
    worker_rss: int
    broker_rss: int | None
    worker_cpu_s: float


@dataclass
class Run:
    """What one run has measured so far; the sampler and every phase append to it."""

    started: float = field(default_factory=time.monotonic)
    samples: list[Sample] = field(default_factory=list)
    count: int = 0  # tenants onboarded, through the API or seeded
    seeded: int = 0
    # (tenants onboarded when it answered, latency ms) of each POST /api/tenants
    onboarded: list[tuple[int, float]] = field(default_factory=list)
    onboarded_ids: list[str] = field(default_factory=list)  # the same POSTs' tenants
    tokens: dict[str, str] = field(default_factory=dict)
    broker_create_ms: list[tuple[int, float]] = field(default_factory=list)  # (count, ms)
    onboard_retries: int = 0
    phases: dict[str, float] = field(default_factory=dict)  # phase name -> seconds since start

    def mark(self, phase: str) -> None:
        self.phases[phase] = round(time.monotonic() - self.started, 1)
        log(f"-- {phase}")


class Measured:
    """The worker process (and the broker's) as /proc shows them."""

    def __init__(self, worker: WorkerProcess, broker_pid: int | None, broker_data: Path) -> None:
        self.worker = worker
        self.broker_pid = broker_pid
        self.broker_data = broker_data

    def rss(self) -> int:
        return rss_bytes(self.worker.pid)

    def broker_rss(self) -> int | None:
        if self.broker_pid is None:
            return None
        with contextlib.suppress(OSError):
            return rss_bytes(self.broker_pid)
        return None

    def cpu_s(self) -> float:
        return process_cpu_seconds(self.worker.pid)

    def broker_files(self) -> tuple[int, int]:
        """(open files, open-files limit) of the broker."""
        fds = Path(f"/proc/{self.broker_pid}/fd")
        limits = Path(f"/proc/{self.broker_pid}/limits").read_text()
        return len(os.listdir(fds)), open_files_limit(limits)

    def broker_partitions(self) -> int:
        """Partitions the broker has opened (a directory each in its data dir)."""
        return sum(1 for entry in os.scandir(self.broker_data) if entry.is_dir())

    async def cpu_over(self, seconds: float) -> float:
        """% of a core the worker used over the next `seconds`."""
        cpu_before, wall_before = self.cpu_s(), time.monotonic()
        await asyncio.sleep(seconds)  # the measurement window itself
        return cpu_pct(cpu_before, self.cpu_s(), time.monotonic() - wall_before)


async def sample_forever(run: Run, measured: Measured) -> None:
    while True:
        run.samples.append(
            Sample(
                time.monotonic(),
                run.count,
                measured.rss(),
                measured.broker_rss(),
                measured.cpu_s(),
            )
        )
        await asyncio.sleep(SAMPLE_EVERY_S)


async def onboard_one(api: Api, run: Run, index: int) -> None:
    tenant = tenant_id(index)
    body = tenant_body(tenant)
    for attempt in range(ONBOARD_RETRIES + 1):
        sent = time.monotonic()
        status, answer = await api.call(
            "POST", "/api/tenants", token=api.admin_token, json_body=body
        )
        latency_ms = (time.monotonic() - sent) * 1000
        if status == 201:
            run.tokens[tenant] = answer["token"]
        if status == 201 or (status == 409 and attempt > 0):
            # A 409 after a retry: an earlier attempt was stored although it answered 503. The
            # tenant exists, but its token was never shown, so it can only be idle.
            run.count += 1
            run.onboarded.append((run.count, latency_ms))
            run.onboarded_ids.append(tenant)
            return
        if status != 503 or attempt == ONBOARD_RETRIES:
            raise BenchError(f"POST /api/tenants {tenant}: {status} {answer}")
        run.onboard_retries += 1
        await asyncio.sleep(ONBOARD_RETRY_S)  # the Retry-After of a 503


async def probe_broker_create(admin: AIOKafkaAdminClient, run: Run, topic: str) -> None:
    """One topic created by the bench itself: the broker's cost of a create, without the worker.
    Deleted again: each partition holds one of the broker's open files."""
    started = time.monotonic()
    await create_topics(admin, [topic], 1)
    run.broker_create_ms.append((run.count, (time.monotonic() - started) * 1000))
    await admin.delete_topics([topic])


class Onboarding:
    """Onboards tenants through the admin API, or seeds them (see `seed`), within the run's
    deadline and the broker's open files; `stopped` says why it stopped short, if it did."""

    def __init__(
        self,
        api: Api,
        admin: AIOKafkaAdminClient,
        measured: Measured,
        topics: TopicNames,
        run: Run,
        args: argparse.Namespace,
    ) -> None:
        self.api = api
        self.admin = admin
        self.measured = measured
        self.topics = topics
        self.run = run
        self.args = args
        self.deadline = time.monotonic() + args.onboard_timeout_s
        self.stopped: str | None = None
        self._probes = itertools.count()

    def files_left(self) -> tuple[int, int, int]:
        """(descriptors the broker may still open, open now, limit)."""
        used, limit = self.measured.broker_files()
        return limit - used - FDS_RESERVE, used, limit

    def stop_if_due(self) -> bool:
        """Stop (and say why) past the deadline, or when the broker has no files left for one
        more tenant."""
        if self.stopped is None and time.monotonic() > self.deadline:
            self.stopped = f"onboarding took longer than {self.args.onboard_timeout_s:g} s"
        if self.stopped is None:
            left, used, limit = self.files_left()
            if left < 2:
                self.stopped = (
                    f"the broker holds {used} open files of its limit {limit} (one per "
                    f"partition), {FDS_RESERVE} kept free"
                )
        return self.stopped is not None

    async def through_api(self, indexes: range) -> None:
        """POST /api/tenants for each index, `--concurrency` at a time."""
        pending = iter(indexes)

        async def lane() -> None:
            for index in pending:
                if index % FDS_CHECK_EVERY == 0 and self.stop_if_due():
                    return
                await onboard_one(self.api, self.run, index)
                if index % self.args.probe_every == 0:
                    await self.probe()

        await asyncio.gather(*(lane() for _ in range(self.args.concurrency)))

    async def seed(self, indexes: range, producer: AIOKafkaProducer) -> None:
        """Onboard tenants as POST does, without it: their records in the tenants topic, which
        the worker mirrors (onboarding creates no topic: a tenant's topics come with its first
        records)."""
        now = datetime.now(UTC)
        for start in range(indexes.start, indexes.stop, SEED_BATCH):
            if time.monotonic() > self.deadline:
                self.stopped = f"onboarding took longer than {self.args.onboard_timeout_s:g} s"
                return
            batch = range(start, min(start + SEED_BATCH, indexes.stop))
            for index in batch:
                tenant, token = tenant_id(index), new_token()
                spec = TenantSpec.model_validate(tenant_body(tenant))
                record = TenantRecord.create(spec, hash_token(token), now)
                await producer.send(self.topics.tenants, record.to_json(), key=tenant.encode())
                self.run.tokens[tenant] = token
            await producer.flush()
            self.run.count += len(batch)
            self.run.seeded += len(batch)
            await self.probe()

    async def probe(self) -> None:
        await probe_broker_create(
            self.admin, self.run, f"{self.topics.prefix}probe.{next(self._probes)}"
        )


async def onboard_progress(run: Run, measured: Measured, total: int) -> None:
    shown = 0
    started = time.monotonic()
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        recent = percentiles(np.array([ms for _, ms in run.onboarded[shown:]]))
        rss = run.samples[-1].worker_rss / 2**20 if run.samples else math.nan
        create = run.broker_create_ms[-1][1] if run.broker_create_ms else math.nan
        files, limit = measured.broker_files()
        log(
            f"onboarded {run.count}/{total} ({run.seeded} seeded; "
            f"{run.count / (time.monotonic() - started):.1f}/s); POST last "
            f"{PROGRESS_EVERY_S:g} s: p50 {recent['p50_ms']} ms, p99 {recent['p99_ms']} ms; "
            f"worker RSS {rss:.0f} MiB; broker create {create:.0f} ms, "
            f"open files {files}/{limit}"
        )
        shown = len(run.onboarded)


async def onboard(onboarding: Onboarding, kafka_bootstrap: str) -> dict[str, Any]:
    """The head through the API, the middle seeded, the tail through the API (at full scale);
    then wait until the worker lists every tenant. Timings of each part."""
    args, run = onboarding.args, onboarding.run
    head = min(args.api_tenants // 2, args.tenants)
    tail = min(args.api_tenants - head, args.tenants - head)
    timings: dict[str, Any] = {}
    progress = asyncio.create_task(onboard_progress(run, onboarding.measured, args.tenants))
    started = time.monotonic()
    try:
        await onboarding.through_api(range(head))
        timings["onboard_head_s"] = round(time.monotonic() - started, 1)
        timings["onboard_head_count"] = len(run.onboarded)
        seeded_from = time.monotonic()
        if head + tail < args.tenants:
            producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
            await producer.start()
            try:
                await onboarding.seed(range(head, args.tenants - tail), producer)
            finally:
                await producer.stop()
        timings["seed_s"] = round(time.monotonic() - seeded_from, 1)
        listed = await stats_totals_reach(
            onboarding.api,
            lambda totals: totals["tenants"] >= run.count,
            f"{run.count} tenants listed",
        )
        timings["seed_caught_up_s"] = round(listed, 1)
        tail_from, tail_count = time.monotonic(), len(run.onboarded)
        await onboarding.through_api(range(args.tenants - tail, args.tenants))
        timings["onboard_tail_s"] = round(time.monotonic() - tail_from, 1)
        timings["onboard_tail_count"] = len(run.onboarded) - tail_count
    finally:
        progress.cancel()
    timings["onboard_s"] = round(time.monotonic() - started, 1)
    return timings


async def stats_totals_reach(
    api: Api, reached: Callable[[dict[str, Any]], bool], what: str
) -> float:
    """Seconds until the totals of the worker's /api/stats satisfy `reached`, polled each second."""
    started = time.monotonic()
    while True:
        status, answer = await api.call("GET", "/api/stats?limit=1", token=api.admin_token)
        totals = answer["totals"] if status == 200 else {}
        if totals and reached(totals):
            return time.monotonic() - started
        if time.monotonic() - started > READY_TIMEOUT_S:
            raise BenchError(f"not within {READY_TIMEOUT_S:g} s: {what} (totals: {totals})")
        await asyncio.sleep(1.0)


@dataclass
class Traffic:
    """HTTP ingest of the active tenants: one message per POST, paced per tenant."""

    statuses: dict[str, int] = field(default_factory=dict)
    latency_ms: list[float] = field(default_factory=list)
    sent: int = 0

    async def send(self, api: Api, tenant: str, token: str, rate: float, until: float) -> None:
        sender = Sender("BENCH", tenant.upper())
        interval = 1.0 / rate
        next_at = time.monotonic() + random.uniform(0, interval)  # spread the tenants' phases
        for number in itertools.count(1):
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if time.monotonic() >= until:
                return
            started = time.monotonic()
            status, _ = await api.send(tenant, token, message(sender, f"{tenant}-{number}"))
            self.latency_ms.append((time.monotonic() - started) * 1000)
            self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
            self.sent += 1
            next_at += interval


async def stats_latency(
    session: aiohttp.ClientSession, url: str, token: str, calls: int, every_s: float
) -> dict[str, Any]:
    """`calls` timed GETs of /api/stats (until the whole body is read), `every_s` apart."""
    times_ms: list[float] = []
    body = b""
    for _ in range(calls):
        started = time.monotonic()
        async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
            body = await response.read()
            if response.status != 200:
                raise BenchError(f"GET {url}: {response.status}")
        times_ms.append((time.monotonic() - started) * 1000)
        await asyncio.sleep(every_s)
    totals = orjson.loads(body)["totals"] if body else {}
    return {
        **percentiles(np.array(times_ms)),
        "calls": calls,
        "bytes": len(body),
        "tenants_listed": totals.get("tenants"),
    }


async def restart(
    old: WorkerProcess, env: dict[str, str], logs: Path, run: Run
) -> tuple[WorkerProcess, dict[str, Any]]:
    """Stop the worker, start a new one on the same data dir; how long until it is ready:
    `/api/stats` lists every tenant and an active tenant's message is accepted."""
    stop_started = time.monotonic()
    await asyncio.to_thread(old.stop)
    stop_s = time.monotonic() - stop_started
    worker = WorkerProcess(env, logs / "worker-restarted.log")
    base = f"http://127.0.0.1:{env['LANEWAY_WEB_PORT']}"
    admin = env["LANEWAY_ADMIN_TOKEN"]
    tenant, token = next(iter(run.tokens.items()))
    expected = run.count
    started = time.monotonic()
    worker.spawn()
    try:
        marks = await _ready_marks(worker, Api(base, admin), tenant, token, expected, started)
    except BaseException:
        await asyncio.to_thread(worker.stop)
        raise
    ready = max(marks["stats_all_tenants_s"], marks["message_accepted_s"])
    return worker, {
        "restart_ready_s": round(ready, 2),
        "restart_stop_s": round(stop_s, 2),
        **{f"restart_{name}": round(value, 2) for name, value in marks.items()},
    }


async def _ready_marks(
    worker: WorkerProcess, client: Api, tenant: str, token: str, expected: int, started: float
) -> dict[str, float]:
    """Seconds from `started` until the worker logs Ready, lists every tenant in /api/stats,
    and accepts a message of `tenant`."""
    marks: dict[str, float] = {}
    admin = client.admin_token
    async with client as api:
        deadline = started + READY_TIMEOUT_S
        while len(marks) < 3:
            if time.monotonic() > deadline:
                raise BenchError(f"restarted worker not ready in {READY_TIMEOUT_S:g} s: {marks}")
            worker.check_alive()
            elapsed = time.monotonic() - started
            if "log_ready_s" not in marks and READY in worker.log_path.read_bytes():
                marks["log_ready_s"] = elapsed
            with contextlib.suppress(aiohttp.ClientError):
                if "stats_all_tenants_s" not in marks:
                    status, answer = await api.call("GET", "/api/stats?limit=1", token=admin)
                    if status == 200 and answer["totals"]["tenants"] == expected:
                        marks["stats_all_tenants_s"] = time.monotonic() - started
                if "message_accepted_s" not in marks:
                    payload = message(Sender("BENCH", tenant.upper()), f"{tenant}-restart")
                    status, _ = await api.send(tenant, token, payload)
                    if status == 202:
                        marks["message_accepted_s"] = time.monotonic() - started
            await asyncio.sleep(POLL_S)
    return marks


async def timed(label: str, step: Awaitable[Any]) -> Any:
    started = time.monotonic()
    result = await step
    log(f"{label}: {time.monotonic() - started:.1f} s")
    return result


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    run_id = new_run_id()
    logs = REPO / ".run" / "bench" / f"tenants-{run_id}"
    limits = raise_open_files(open_files_wanted(args.tenants))
    log(f"open files limit {limits[0]} (wanted {open_files_wanted(args.tenants)}); logs {logs}")
    cluster = ThrowawayCluster(logs / "kafka")
    cluster.env["KAFKA_HEAP_OPTS"] = f"-Xmx{args.broker_heap} -Xms{args.broker_heap}"
    host = host_state("the tenants bench")
    run = Run()
    try:
        await timed(f"throwaway broker up (heap {args.broker_heap})", cluster.up())
        results = await measure(args, cluster, logs, run)
    finally:
        # Its data goes (20,000 topics' directories); its logs stay beside the worker's.
        with contextlib.suppress(Exception):
            await cluster.wipe()
        if run.samples:
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            plot(run, RESULTS_DIR / "tenants.png")
    results |= {
        "broker_heap": args.broker_heap,
        "open_files_limit": limits[0],
        "kafka_version": kafka_version(),
        "cpu_count": os.cpu_count(),
        **host,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "worker_logs": str(logs),
        "phases_at_s": run.phases,
        # (seconds since start, tenants, worker RSS MiB, broker RSS MiB) every SAMPLE_EVERY_S
        "samples": [
            (round(s.at - run.started, 1), s.tenants, _mb(s.worker_rss), _mb(s.broker_rss))
            for s in run.samples
        ],
        "wall_time_s": round(time.monotonic() - run.started, 1),
    }
    return results


async def measure(
    args: argparse.Namespace, cluster: ThrowawayCluster, logs: Path, run: Run
) -> dict[str, Any]:
    app_id = f"lwtenants-{secrets.token_hex(3)}"
    env = worker_env(cluster.bootstrap, app_id, logs / "data")
    topics = TopicNames(env["LANEWAY_TOPIC_PREFIX"])
    broker_pid = int((cluster.root / "kafka" / "kafka.pid").read_text())
    broker_data = cluster.root / "kafka" / "data"
    worker = WorkerProcess(env, logs / "worker.log")
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    await admin.start()
    worker.spawn()
    sampler: asyncio.Task[None] | None = None
    try:
        await timed("worker ready", worker.ready(READY_TIMEOUT_S))
        measured = Measured(worker, broker_pid, broker_data)
        sampler = asyncio.create_task(sample_forever(run, measured))
        await asyncio.sleep(args.settle_s)  # let start-up allocations settle before the baseline
        rss_before = measured.rss()
        broker_rss_before = measured.broker_rss()
        base_url = f"http://127.0.0.1:{env['LANEWAY_WEB_PORT']}"
        stats_url = f"{base_url}/api/stats"
        admin_token = env["LANEWAY_ADMIN_TOKEN"]
        async with Api(base_url, admin_token) as api, aiohttp.ClientSession() as session:
            run.mark(
                f"onboarding {args.tenants} tenants ({args.api_tenants} through the API, "
                f"{args.concurrency} at a time)"
            )
            onboard_cpu_before = measured.cpu_s()
            onboarding = Onboarding(api, admin, measured, topics, run, args)
            timings = await onboard(onboarding, cluster.bootstrap)
            onboard_cpu_pct = cpu_pct(onboard_cpu_before, measured.cpu_s(), timings["onboard_s"])
            tenants, stopped = run.count, onboarding.stopped
            if stopped:
                log(f"onboarding stopped at {tenants} tenants: {stopped}")
            await asyncio.sleep(args.settle_s)
            run.mark(f"idle with {tenants} tenants: CPU over {args.idle_s:g} s")
            idle_cpu_before_traffic = await measured.cpu_over(args.idle_s)
            rss_onboarded = measured.rss()
            broker_rss_onboarded = measured.broker_rss()
            broker_files, broker_files_limit = measured.broker_files()
            partitions_onboarded = measured.broker_partitions()
            stats_idle = await stats_latency(session, stats_url, admin_token, args.stats_calls, 0.5)

            active = list(run.tokens.items())[: args.active]
            run.mark(f"{len(active)} active tenants at {args.rate:g} msg/s for {args.active_s:g} s")
            traffic = Traffic()
            until = time.monotonic() + args.active_s
            active_cpu_before = measured.cpu_s()
            senders = [
                asyncio.create_task(traffic.send(api, tenant, token, args.rate, until))
                for tenant, token in active
            ]
            # Stats while the active tenants send: a quarter of the window in, so every
            # active tenant's state is live.
            await asyncio.sleep(args.active_s / 4)
            stats_active = await stats_latency(
                session, stats_url, admin_token, args.stats_calls, 1.0
            )
            await asyncio.gather(*senders)
            active_cpu = cpu_pct(active_cpu_before, measured.cpu_s(), args.active_s)
            rss_active = measured.rss()
            partitions_after_traffic = measured.broker_partitions()

            # Idle means no work left: a backlog still being processed is not idle CPU.
            accepted = traffic.statuses.get("202", 0)
            run.mark(f"until the {accepted} accepted messages are processed")
            backlog_s = await stats_totals_reach(
                api,
                lambda totals: (totals["processed"] or 0) >= accepted,
                f"{accepted} messages processed",
            )
            drain_s = round(backlog_s, 1)
            await asyncio.sleep(args.settle_s)
            run.mark(
                f"idle again ({drain_s:g} s to process the backlog): CPU over {args.idle_s:g} s"
            )
            idle_cpu = await measured.cpu_over(args.idle_s)
            rss_after = measured.rss()
            limit_stats = await stats_latency(
                session, f"{stats_url}?limit=50", admin_token, args.stats_calls, 0.2
            )

            run.mark("restart")
            sampler.cancel()
            worker, restarted = await restart(worker, env, logs, run)
            measured = Measured(worker, broker_pid, broker_data)
            await asyncio.sleep(args.settle_s)
            rss_restarted = measured.rss()
    finally:
        if sampler is not None:
            sampler.cancel()
        await asyncio.to_thread(worker.stop)
        await admin.close()

    send_latency = percentiles(np.array(traffic.latency_ms))
    results: dict[str, Any] = {
        "tenants": tenants,
        "tenants_requested": args.tenants,
        "onboard_stopped": stopped,
        "active_tenants": len(active),
        # Partitions the broker holds (internal topics included): tenants' topics come with
        # their first records, so only the active tenants' exist.
        "broker_partitions_onboarded": partitions_onboarded,
        "broker_partitions_after_traffic": partitions_after_traffic,
        **timings,
        "onboarded_through_api": len(run.onboarded),
        "seeded": run.seeded,
        "onboard_ms_p50": percentiles(np.array([ms for _, ms in run.onboarded]))["p50_ms"],
        "onboard_ms_p99": percentiles(np.array([ms for _, ms in run.onboarded]))["p99_ms"],
        "onboard_head": api_phase(run, 0, timings["onboard_head_count"]),
        "onboard_tail": api_phase(run, timings["onboard_head_count"], None),
        "onboard_concurrency": args.concurrency,
        "onboard_retries": run.onboard_retries,
        "onboard_worker_cpu_pct": onboard_cpu_pct,
        "onboard_latency_by_tenants": bucket_latencies(run.onboarded, args.probe_every),
        "broker_create_ms_p50": percentiles(np.array([ms for _, ms in run.broker_create_ms]))[
            "p50_ms"
        ],
        "broker_create_ms_by_tenants": [(n, round(ms, 1)) for n, ms in run.broker_create_ms],
        "rss_before_mb": round(rss_before / 2**20, 1),
        "rss_onboarded_mb": round(rss_onboarded / 2**20, 1),
        "rss_after_active_mb": round(rss_after / 2**20, 1),
        "rss_restarted_mb": round(rss_restarted / 2**20, 1),
        "rss_per_idle_tenant_kb": per_tenant_kb(rss_before, rss_onboarded, tenants),
        "rss_per_tenant_after_restart_kb": per_tenant_kb(rss_before, rss_restarted, tenants),
        "rss_per_active_tenant_kb": per_tenant_kb(rss_onboarded, rss_active, len(active)),
        "broker_rss_before_mb": _mb(broker_rss_before),
        "broker_rss_onboarded_mb": _mb(broker_rss_onboarded),
        "broker_open_files": broker_files,
        "broker_open_files_limit": broker_files_limit,
        "stats_p50_ms": stats_active["p50_ms"],
        "stats_p99_ms": max(stats_active["p99_ms"], stats_idle["p99_ms"]),
        "stats_during_traffic": stats_active,
        "stats_idle": stats_idle,
        "stats_limit50": limit_stats,
        "idle_cpu_pct": idle_cpu,
        "backlog_processed_after_traffic_s": drain_s,
        "idle_cpu_pct_before_traffic": idle_cpu_before_traffic,
        "active_rate_per_tenant": args.rate,
        "active_msgs_sent": traffic.sent,
        "active_msgs_per_s": round(traffic.sent / args.active_s, 1),
        "active_statuses": traffic.statuses,
        "active_send_ms": send_latency,
        "active_worker_cpu_pct": active_cpu,
        **restarted,
    }
    results["targets_missed"] = [name for name, met in TARGETS.items() if not met(results)]
    return results


def api_phase(run: Run, start: int, stop: int | None) -> dict[str, Any]:
    """A part of the POSTs: tenants onboarded before and after it, and their latency."""
    onboarded = run.onboarded[start:stop]
    if not onboarded:
        return {"posts": 0}
    latency = percentiles(np.array([ms for _, ms in onboarded]))
    return {
        "posts": len(onboarded),
        "tenants_from": onboarded[0][0],
        "tenants_to": onboarded[-1][0],
        "ms_p50": latency["p50_ms"],
        "ms_p99": latency["p99_ms"],
    }


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


TARGETS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "every requested tenant onboarded": lambda r: r["tenants"] == r["tenants_requested"],
    f"rss_per_idle_tenant_kb <= {RSS_PER_IDLE_TENANT_KB:g}": lambda r: (
        r["rss_per_idle_tenant_kb"] is not None
        and r["rss_per_idle_tenant_kb"] <= RSS_PER_IDLE_TENANT_KB
    ),
    f"stats_p99_ms < {STATS_P99_MS:g}": lambda r: r["stats_p99_ms"] < STATS_P99_MS,
    f"idle_cpu_pct < {IDLE_CPU_PCT:g}": lambda r: r["idle_cpu_pct"] < IDLE_CPU_PCT,
    f"restart_ready_s < {RESTART_READY_S:g}": lambda r: r["restart_ready_s"] < RESTART_READY_S,
}


def plot(run: Run, path: Path) -> None:
    """Worker and broker RSS and tenants onboarded over the run, the phases marked; each POST
    /api/tenants's latency against the tenants onboarded when it answered."""
    figure = Figure(figsize=(12, 8), layout="constrained")
    FigureCanvasAgg(figure)  # render with Agg: no display needed
    rss_axes, latency_axes = figure.subplots(2, 1)
    at = [s.at - run.started for s in run.samples]
    rss_axes.plot(at, [s.worker_rss / 2**20 for s in run.samples], label="worker RSS")
    rss_axes.plot(at, [(s.broker_rss or 0) / 2**20 for s in run.samples], label="broker RSS")
    tenant_axes = rss_axes.twinx()
    tenant_axes.plot(at, [s.tenants for s in run.samples], "k--", linewidth=1, label="tenants")
    tenant_axes.set_ylabel("tenants onboarded")
    for phase, second in run.phases.items():
        rss_axes.axvline(second, color="0.6", linewidth=0.8)
        rss_axes.text(
            second,
            1.0,
            f" {phase}",
            fontsize=7,
            rotation=90,
            va="top",
            transform=rss_axes.get_xaxis_transform(),
        )
    rss_axes.set(title="RSS over the run", xlabel="seconds since start", ylabel="RSS (MiB)")
    rss_axes.legend(loc="upper left")
    tenant_axes.legend(loc="lower right")
    rss_axes.grid(True, alpha=0.3)
    latency_axes.scatter(
        [n for n, _ in run.onboarded],
        [ms for _, ms in run.onboarded],
        s=4,
        label=f"POST /api/tenants: {len(run.onboarded)}",
    )
    latency_axes.scatter(
        [n for n, _ in run.broker_create_ms],
        [ms for _, ms in run.broker_create_ms],
        s=8,
        label="one CreateTopics by the bench (the broker alone)",
    )
    latency_axes.set(
        title="onboarding latency (the tenants between the two clusters of POSTs were seeded)",
        xlabel="tenants onboarded",
        ylabel="ms",
        yscale="log",
    )
    latency_axes.legend(loc="upper left")
    latency_axes.grid(True, alpha=0.3)
    figure.savefig(path, dpi=90)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--active", type=int, default=1_000, help="tenants that send")
    parser.add_argument("--rate", type=float, default=1.0, help="msg/s per active tenant")
    parser.add_argument("--active-s", type=float, default=60.0)
    parser.add_argument("--idle-s", type=float, default=30.0, help="idle CPU window")
    parser.add_argument("--settle-s", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=4, help="onboardings in flight")
    parser.add_argument(
        "--api-tenants",
        type=int,
        default=400,
        help="tenants onboarded through POST /api/tenants, half first, half last (at full "
        "scale); the others are seeded: topics in batches, records straight into the registry "
        "topic. --api-tenants equal to --tenants: all through the API",
    )
    parser.add_argument("--stats-calls", type=int, default=20)
    parser.add_argument("--probe-every", type=int, default=0, help="default: api-tenants / 20")
    parser.add_argument("--onboard-timeout-s", type=float, default=3 * 3600.0)
    parser.add_argument("--broker-heap", default="2g", help="-Xmx/-Xms of the throwaway broker")
    args = parser.parse_args()
    if args.tenants < 1 or not 0 < args.active <= args.tenants:
        parser.error("need 1 <= --active <= --tenants")
    if args.rate <= 0 or args.concurrency < 1:
        parser.error("--rate and --concurrency must be positive")
    args.api_tenants = min(args.api_tenants, args.tenants)
    args.probe_every = args.probe_every or max(1, args.api_tenants // 20)
    return args


def _summary(results: dict[str, Any]) -> str:
    return (
        f"tenants: {results['tenants']} onboarded in "
        f"{results['onboard_s']} s (p50 {results['onboard_ms_p50']} ms); "
        f"{results['rss_per_idle_tenant_kb']} KB RSS per idle tenant, /api/stats p99 "
        f"{results['stats_p99_ms']} ms, idle CPU {results['idle_cpu_pct']} %, restart ready in "
        f"{results['restart_ready_s']} s; {targets_verdict('tenants', results)}"
    )


def main() -> None:
    run_bench(bench, parse_args(), "tenants", _summary)


if __name__ == "__main__":
    main()
