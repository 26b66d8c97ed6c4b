"""Fault inputs at ingest beside a quiet tenant: is every fault accounted for, and does the quiet
tenant notice?

One worker (with the lane worker beside it) runs with a small size contract
(`LANEWAY_MAX_MESSAGE_BYTES` = 64 KiB, so oversize inputs are cheap). A quiet tenant streams over
HTTP for the whole run (tests/harness/quiet_tenant.py); a faulty tenant on the SAME ingress
partition, and a victim tenant whose sender identity the faults borrow, are onboarded beside it.
After a steady phase without faults, the fault phase sends fault inputs of every class
(`FAULT_CLASSES`) over MLLP and HTTP, a few at a time. Then a marker message of the faulty tenant
is sent, and its out and DLQ topics are read up to the marker, the victim's and the unrouted
DLQ a little longer.

Accounting, per fault input: refused at ingest with a reason (AE/AR with ERR, HTTP 4xx with a
reason, or the connection closed for its framing), or accepted (AA / 202) and then found exactly
once in the faulty tenant's out or DLQ topic (by control id over MLLP, by ingress position over
HTTP). A message that was refused must be nowhere; nothing may reach another tenant's topics.

tests/integration/test_fuzz_ingest.py drives the same `FaultScene` (tests/harness/faults.py)
with hypothesis-generated inputs; this module's entry point is the benchmark:

    python -m bench.faults [--steady-s 30] [--faults-s 60] [--fault-rate 8] [--seed 1]

Writes bench/results/faults.json and faults.png; exits 1 naming every target missed. Message
bodies are never logged: only classes, control ids and answer codes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import random
import secrets
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.common import (
    REPO,
    RESULTS_DIR,
    BenchError,
    git_commit,
    log,
    new_run_id,
    run_bench,
    targets_verdict,
)
from streams.topics import TopicNames
from tests.harness import (
    Api,
    WorkerProcess,
    default_bootstrap,
    delete_topics_with_prefix,
    worker_env,
)
from tests.harness.faults import (
    FAULT_CLASSES,
    MAX_MESSAGE_BYTES,
    P99_RATIO_TARGET,
    PARTITIONS,
    SAMPLE_EVERY_S,
    STALL_RULE,
    WARMUP_S,
    Draw,
    FaultScene,
    Outcome,
    RandomDraw,
    Sample,
    p99_ms,
    stall_runs,
)
from tests.harness.quiet_tenant import QuietTenant, quiet_tenant

READY_TIMEOUT_S = 120.0
PROGRESS_EVERY_S = 5.0


class ProgressMonitor:
    """Samples end and committed offsets of a topic's partitions for a consumer group."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int) -> None:
        self.bootstrap = bootstrap
        self.group = group
        self.partitions = [TopicPartition(topic, p) for p in range(partitions)]
        self.samples: dict[int, list[Sample]] = defaultdict(list)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ProgressMonitor:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def runs(self, start: float, end: float) -> dict[int, list[tuple[float, float]]]:
        return {
            partition: stall_runs([s for s in samples if start <= s[0] <= end])
            for partition, samples in self.samples.items()
        }

    def stalled_s(self, start: float, end: float) -> float:
        runs = self.runs(start, end)
        return round(sum(b - a for found in runs.values() for a, b in found), 1)

    async def _run(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await admin.start()
        await consumer.start()
        try:
            while True:
                due = time.monotonic() + SAMPLE_EVERY_S
                committed = await admin.list_consumer_group_offsets(
                    self.group, partitions=self.partitions
                )
                ends = await consumer.end_offsets(self.partitions)
                now = time.monotonic()
                for tp in self.partitions:
                    meta = committed.get(tp)
                    # No commit yet: the group reads from the start (auto_offset_reset earliest).
                    offset = meta.offset if meta is not None and meta.offset >= 0 else 0
                    self.samples[tp.partition].append((now, ends[tp], offset))
                await asyncio.sleep(max(0.0, due - time.monotonic()))
        finally:
            await consumer.stop()
            await admin.close()


# ---------------------------------------------------------------- the benchmark


def targets(results: dict[str, Any]) -> dict[str, bool]:
    steady, faults = results["quiet_p99_steady_ms"], results["quiet_p99_faults_ms"]
    return {
        "stalls == 0": results["stalls"] == 0,
        "lost == 0": results["lost"] == 0,
        "faults_accounted == faults_sent": results["faults_accounted"] == results["faults_sent"],
        f"quiet_p99_faults_ms <= {P99_RATIO_TARGET:g} x quiet_p99_steady_ms": (
            steady is not None and faults is not None and faults <= P99_RATIO_TARGET * steady
        ),
        "stray_records == 0": results["stray_records"] == 0,
        "quiet tenant kept streaming": results["quiet_failure"] is None,
    }


@dataclass
class Run:
    """Times (time.monotonic()) and what the run collected."""

    t0: float
    steady_start: float = math.nan
    faults_start: float = math.nan
    faults_end: float = math.nan
    outcomes: list[Outcome] = field(default_factory=list)

    def at(self, moment: float) -> float:
        return moment - self.t0


async def fault_phase(
    scene: FaultScene, run: Run, draw: Draw, seconds: float, rate: float, at_once: int
) -> None:
    """Fault inputs for `seconds`, one of each class in turn, `rate` per second (at most
    `at_once` in flight: a slow one holds its place)."""
    gate = asyncio.Semaphore(at_once)
    pending: set[asyncio.Task[None]] = set()

    async def one(kind: str) -> None:
        async with gate:
            run.outcomes.append(await scene.send(scene.build(kind, draw)))

    end = time.monotonic() + seconds
    due = time.monotonic()
    for kind in itertools.cycle(FAULT_CLASSES):
        due += 1 / rate
        if due > end:
            break
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        task = asyncio.create_task(one(kind))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)


async def report_progress(run: Run, quiet_ref: list[QuietTenant], router: ProgressMonitor) -> None:
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        now = time.monotonic()
        quiet = quiet_ref[0] if quiet_ref else None
        sent = len(quiet.sent) if quiet else 0
        arrived = len(quiet.arrived) if quiet else 0
        recent = p99_ms(quiet, now - PROGRESS_EVERY_S, now) if quiet else None
        kinds = Counter(outcome.case.kind for outcome in run.outcomes)
        stalled = 0.0 if math.isnan(run.steady_start) else router.stalled_s(run.steady_start, now)
        log(
            f"  {run.at(now):6.1f}s  quiet {arrived}/{sent} arrived, p99 last 5 s {recent} ms; "
            f"faults sent {sum(kinds.values())} "
            f"({' '.join(f'{k}:{n}' for k, n in sorted(kinds.items())) or '-'}); "
            f"router stalls so far {stalled} s"
        )


def plot(run: Run, quiet: QuietTenant, router: ProgressMonitor, path: Path) -> None:
    """The quiet tenant's latency over time (fault phase shaded), and the router's lag per
    ingress partition with stall runs marked."""
    figure = Figure(figsize=(14, 7), layout="constrained")
    FigureCanvasAgg(figure)
    latency_axes, lag_axes = figure.subplots(2, 1, sharex=True)
    for axes in (latency_axes, lag_axes):
        axes.axvspan(run.at(run.faults_start), run.at(run.faults_end), color="0.88", linewidth=0)
        axes.grid(True, alpha=0.3)
    points = [(run.at(sent), (quiet.arrived[c] - sent) * 1000) for c, sent in quiet.sent.items()
              if c in quiet.arrived]  # fmt: skip
    latency_axes.scatter([p[0] for p in points], [p[1] for p in points], s=4, rasterized=True)
    latency_axes.set(
        title="quiet tenant: 202 -> arrival on its out topic (fault phase shaded)",
        ylabel="latency (ms)",
        yscale="log",
    )
    for partition, samples in sorted(router.samples.items()):
        lag_axes.plot(
            [run.at(t) for t, _, _ in samples],
            [end - committed for _, end, committed in samples],
            label=f"ingress {partition}",
            linewidth=0.8,
        )
    for found in router.runs(run.steady_start, run.faults_end).values():
        for a, b in found:
            lag_axes.axvspan(run.at(a), run.at(b), color="tab:red", alpha=0.3, linewidth=0)
    lag_axes.set(
        title="router lag per ingress partition (end - committed); stalls in red",
        xlabel="time since start (s)",
        ylabel="records",
    )
    lag_axes.legend(loc="upper right", fontsize=8)
    figure.savefig(path, dpi=90)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    bootstrap = default_bootstrap()
    run_id = new_run_id()
    logs = REPO / ".run" / "bench" / f"faults-{run_id}"
    app_id = f"lwfaults-{secrets.token_hex(3)}"
    env = worker_env(
        bootstrap,
        app_id,
        logs / "data",
        ingress_partitions=str(PARTITIONS),
        max_message_bytes=str(MAX_MESSAGE_BYTES),
    )
    workers = [
        WorkerProcess(env, logs / "worker.log"),
        WorkerProcess.lane(env, logs / "lane-worker.log", name="lane-worker"),
    ]
    try:
        for worker in workers:
            worker.spawn()
        for worker in workers:
            await worker.ready(READY_TIMEOUT_S)
        log(f"workers ready (logs {logs}); app id {app_id}")
        results = await _measure(args, env, bootstrap)
    finally:
        for worker in workers:
            await asyncio.to_thread(worker.stop)
        await delete_topics_with_prefix(bootstrap, app_id)
    results |= {
        "max_message_bytes": MAX_MESSAGE_BYTES,
        "steady_s": args.steady_s,
        "faults_s": args.faults_s,
        "fault_rate_per_s": args.fault_rate,
        "faults_at_once": args.at_once,
        "seed": args.seed,
        "cpu_count": os.cpu_count(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "worker_logs": str(logs),
        "wall_time_s": round(time.monotonic() - started, 1),
    }
    return results


async def _measure(args: argparse.Namespace, env: dict[str, str], bootstrap: str) -> dict[str, Any]:
    topics = TopicNames(env["LANEWAY_TOPIC_PREFIX"])
    base_url = f"http://127.0.0.1:{env['LANEWAY_WEB_PORT']}"
    app_id = env["LANEWAY_APP_ID"]
    run = Run(time.monotonic())
    quiet_ref: list[QuietTenant] = []
    quiet_failure: str | None = None
    router = ProgressMonitor(bootstrap, f"{app_id}-router", topics.ingress, PARTITIONS)
    processor = ProgressMonitor(bootstrap, app_id, topics.shared_lane, PARTITIONS)
    async with Api(base_url, env["LANEWAY_ADMIN_TOKEN"]) as api, router, processor:
        progress = asyncio.create_task(report_progress(run, quiet_ref, router))
        try:
            async with quiet_tenant(api, bootstrap, topics) as quiet:
                quiet_ref.append(quiet)
                scene = await FaultScene.onboard(
                    api,
                    beside=quiet.tenant_id,
                    mllp_port=int(env["LANEWAY_MLLP_PORT"]),
                    bootstrap=bootstrap,
                    topics=topics,
                    partitions=PARTITIONS,
                    max_message_bytes=MAX_MESSAGE_BYTES,
                    frame_limit=max(MAX_MESSAGE_BYTES, 4 * 1024 * 1024),
                )
                log(f"quiet tenant {quiet.tenant_id} flowing; faulty {scene.faulty.id} beside it")
                await asyncio.sleep(WARMUP_S)  # outside both measurement windows
                run.steady_start = time.monotonic()
                log(f"steady phase: {args.steady_s:g} s without faults")
                await asyncio.sleep(args.steady_s)  # the measurement window itself
                run.faults_start = time.monotonic()
                log(f"fault phase: {args.faults_s:g} s, {args.fault_rate:g} inputs/s")
                draw = RandomDraw(random.Random(args.seed))
                await fault_phase(scene, run, draw, args.faults_s, args.fault_rate, args.at_once)
                run.faults_end = time.monotonic()
                log(f"fault phase over: {len(run.outcomes)} inputs; waiting for the quiet tenant")
        except AssertionError as error:  # quiet_tenant's own checks: it did not keep streaming
            quiet_failure = str(error) or type(error).__name__
            log(f"quiet tenant: {quiet_failure}")
        finally:
            progress.cancel()
        if not quiet_ref or math.isnan(run.faults_end):
            raise BenchError(f"the run did not reach the end of the fault phase: {quiet_failure}")
        quiet = quiet_ref[0]
        log("accounting: marker, then the faulty tenant's out and DLQ")
        accounting = await scene.account(run.outcomes)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    plot(run, quiet, router, RESULTS_DIR / "faults.png")
    quiet_lost = len(set(quiet.sent) - set(quiet.arrived))
    results: dict[str, Any] = {
        "quiet_p99_steady_ms": p99_ms(quiet, run.steady_start, run.faults_start),
        "quiet_p99_faults_ms": p99_ms(quiet, run.faults_start, run.faults_end),
        "faults_sent": accounting.faults_sent,
        "faults_accounted": accounting.faults_accounted,
        "stalls": router.stalled_s(run.steady_start, run.faults_end),
        "stall_rule": STALL_RULE,
        "processor_stalls": processor.stalled_s(run.steady_start, run.faults_end),
        "lost": accounting.lost + quiet_lost,
        "faults_lost": accounting.lost,
        "quiet_lost": quiet_lost,
        "stray_records": len(accounting.stray),
        "quiet_failure": quiet_failure,
        "quiet_sent": len(quiet.sent),
        "classes": accounting.by_class(),
        "problems": accounting.problems()[:50],
    }
    met = targets(results)
    results["targets_missed"] = [name for name, ok in met.items() if not ok]
    return results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steady-s", type=float, default=30.0, help="phase without faults")
    parser.add_argument("--faults-s", type=float, default=60.0, help="phase with faults")
    parser.add_argument("--fault-rate", type=float, default=8.0, help="fault inputs per second")
    parser.add_argument("--at-once", type=int, default=4, help="fault inputs in flight at most")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.fault_rate <= 0 or args.at_once < 1:
        parser.error("--fault-rate must be positive and --at-once at least 1")
    return args


def _summary(results: dict[str, Any]) -> str:
    return (
        f"faults: {results['faults_accounted']}/{results['faults_sent']} accounted, "
        f"{results['lost']} lost, {results['stalls']} s stalled, quiet p99 "
        f"{results['quiet_p99_steady_ms']} ms steady / {results['quiet_p99_faults_ms']} ms with "
        f"faults; {targets_verdict('faults', results)}"
    )


def main() -> None:
    run_bench(bench, parse_args(), "faults", _summary)


if __name__ == "__main__":
    main()
