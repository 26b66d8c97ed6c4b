"""End-to-end throughput and latency: the Faust pipeline vs a raw aiokafka pass-through.

Both systems get the same synthetic ADT/ORU corpus on their own ingress topic (own topic prefix,
same partition count, same producer). Per system: start its consumer process, warm up, produce
the corpus as fast as one producer can (saturated phase), then at a fixed open-loop rate (paced
phase). Every out record is joined to its ingress record by the ingress (partition, offset);
latency = out CreateTime - ingress CreateTime, both stamped on this host.

    python -m bench.throughput [--messages 100000] [--tenants 10] [--paced-rate 1000]

Writes bench/results/throughput.json and bench/results/throughput.png.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.common import (
    REPO,
    RESULTS_DIR,
    SOURCE_HEADER,
    BenchError,
    Kafka,
    SourceId,
    clean_up,
    create_topics,
    declare_topics,
    decode_source,
    git_commit,
    kafka_version,
    log,
    new_run_id,
    run_bench,
    topic_table,
    write_tenant_configs,
)
from streams.hl7.synthetic import ADT_TRIGGERS, VERSIONS, adt, oru
from streams.tenants import TenantSpec
from streams.topics import TopicNames
from tests.harness import ChildProcess, WorkerProcess, default_bootstrap, worker_env

WARMUP_MESSAGES = 200
CORPUS_SEED = 20240101
READY_TIMEOUT_S = 120.0
POLL_INTERVAL_S = 0.25

Message = tuple[bytes, bytes]
"""(tenant key, raw ER7) as produced to ingress."""


@dataclass(frozen=True)
class System:
    """One system under test: how to run its consumer and how to read its outputs."""

    label: str
    topics: TopicNames
    partitions: int
    process: ChildProcess
    source_of: Callable[[ConsumerRecord], SourceId]


@dataclass
class PhaseResult:
    messages: int
    msgs_per_s: float
    produce_msgs_per_s: float
    latencies_ms: np.ndarray  # per message, in ingress order
    sent_at_s: np.ndarray  # ingress time since the phase's first ingress record

    def percentile_ms(self, q: float) -> float:
        return round(float(np.percentile(self.latencies_ms, q)), 2)


@dataclass
class Progress:
    produced: int = 0
    arrived: int = 0
    last_print: float = field(default_factory=time.monotonic)


def pipeline_source(record: ConsumerRecord) -> SourceId:
    source = orjson.loads(record.value)["source"]
    return source["partition"], source["offset"]


def passthrough_source(record: ConsumerRecord) -> SourceId:
    return decode_source(dict(record.headers)[SOURCE_HEADER])


def build_corpus(count: int, tenants: Sequence[bytes]) -> list[Message]:
    """Seeded, valid ADT and ORU messages, tenants in round robin so every slice has them all."""
    rng = random.Random(CORPUS_SEED)
    corpus: list[Message] = []
    for seq in range(count):
        version = rng.choice(VERSIONS)
        if rng.random() < 0.5:
            message = adt(rng, trigger=rng.choice(ADT_TRIGGERS), version=version, seq=seq)
        else:
            message = oru(rng, version=version, seq=seq)
        corpus.append((tenants[seq % len(tenants)], message))
    return corpus


async def run_phase(
    kafka: Kafka,
    system: System,
    phase: str,
    messages: Sequence[Message],
    tenants: Sequence[bytes],
    rate: float | None,
    timeout_s: float,
) -> PhaseResult:
    """Produce `messages` (open loop at `rate`, or flat out), wait for all outputs, join them."""
    ingress = [TopicPartition(system.topics.ingress, p) for p in range(system.partitions)]
    # Out topics have one partition per tenant; the warm-up finds them not yet declared.
    outs = [TopicPartition(system.topics.out(tenant.decode()), 0) for tenant in tenants]
    ingress_start = await kafka.end_offsets(ingress)
    out_start = await _out_offsets(kafka, outs)
    progress = Progress()
    log(f"{system.label}: {phase} phase, {len(messages):,} messages")

    producing = asyncio.create_task(_produce(kafka.producer, system, messages, rate, progress))
    try:
        await _await_arrivals(
            kafka, system, phase, outs, out_start, len(messages), progress, producing, timeout_s
        )
        await producing
    finally:
        producing.cancel()

    ingress_records = await kafka.read(
        {tp: (ingress_start[tp], end) for tp, end in (await kafka.end_offsets(ingress)).items()}
    )
    out_records = await kafka.read(
        {tp: (out_start[tp], end) for tp, end in (await kafka.end_offsets(outs)).items()}
    )
    return _join(system, ingress_records, out_records)


async def _out_offsets(kafka: Kafka, outs: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
    """End offsets of the out topics; 0 for those not declared yet."""
    existing = await kafka.existing_topics()
    offsets = await kafka.end_offsets([tp for tp in outs if tp.topic in existing])
    return {tp: offsets.get(tp, 0) for tp in outs}


async def _produce(
    producer: AIOKafkaProducer,
    system: System,
    messages: Sequence[Message],
    rate: float | None,
    progress: Progress,
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    acks: list[asyncio.Future[Any]] = []
    for index, (key, value) in enumerate(messages):
        if rate is not None:
            # Open loop: each send has a due time; a late sender catches up instead of slowing.
            delay = started + index / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        acks.append(await producer.send(system.topics.ingress, value, key=key))
        progress.produced += 1
    await asyncio.gather(*acks)


async def _await_arrivals(
    kafka: Kafka,
    system: System,
    phase: str,
    outs: Sequence[TopicPartition],
    out_start: dict[TopicPartition, int],
    expected: int,
    progress: Progress,
    producing: asyncio.Task[None],
    timeout_s: float,
) -> None:
    deadline = time.monotonic() + timeout_s
    dlq_prefix = system.topics.dlq("")
    while True:
        system.process.check_alive()
        if producing.done():
            producing.result()  # a failed producer ends the phase now, not at the deadline
        existing = await kafka.existing_topics()
        # The corpus is all valid: any DLQ output means the pipeline rejected a message.
        dlq_topics = sorted(t for t in existing if t.startswith(dlq_prefix))
        if dlq_topics:
            raise BenchError(f"{system.label} sent messages to DLQ topics {dlq_topics}")
        offsets = await kafka.end_offsets([tp for tp in outs if tp.topic in existing])
        progress.arrived = sum(end - out_start[tp] for tp, end in offsets.items())
        now = time.monotonic()
        if progress.arrived >= expected or now - progress.last_print >= 1.0:
            progress.last_print = now
            log(
                f"  {system.label} {phase}: produced {progress.produced:>7,}/{expected:,}"
                f"  arrived {progress.arrived:>7,}/{expected:,}"
            )
        if progress.arrived >= expected:
            return
        if now > deadline:
            raise BenchError(
                f"{system.label} {phase}: only {progress.arrived:,}/{expected:,} messages arrived "
                f"within {timeout_s:.0f}s; log {system.process.log_path}:\n"
                f"{system.process.log_tail()}"
            )
        await asyncio.sleep(POLL_INTERVAL_S)


def _join(
    system: System, ingress_records: list[ConsumerRecord], out_records: list[ConsumerRecord]
) -> PhaseResult:
    sent_ms = {(r.partition, r.offset): r.timestamp for r in ingress_records}
    arrived_ms: dict[SourceId, int] = {}
    for record in out_records:
        source = system.source_of(record)
        # A redelivery duplicates an output; the first copy is the one that counts.
        if source not in arrived_ms or record.timestamp < arrived_ms[source]:
            arrived_ms[source] = record.timestamp
    missing = sent_ms.keys() - arrived_ms.keys()
    if missing:
        raise BenchError(f"{system.label}: {len(missing):,} ingress records have no output")
    order = sorted(sent_ms, key=sent_ms.__getitem__)
    sent = np.array([sent_ms[source] for source in order], dtype=np.int64)
    latencies = np.array([arrived_ms[source] for source in order], dtype=np.int64) - sent
    first_sent, last_sent = int(sent[0]), int(sent[-1])
    last_arrived = max(arrived_ms[source] for source in order)
    return PhaseResult(
        messages=len(order),
        msgs_per_s=len(order) / max(last_arrived - first_sent, 1) * 1000,
        produce_msgs_per_s=len(order) / max(last_sent - first_sent, 1) * 1000,
        latencies_ms=latencies.astype(np.float64),
        sent_at_s=(sent - first_sent) / 1000,
    )


@dataclass
class SystemResult:
    saturated: PhaseResult
    paced: PhaseResult


async def measure(
    kafka: Kafka,
    system: System,
    corpus: Sequence[Message],
    tenants: Sequence[bytes],
    args: argparse.Namespace,
) -> SystemResult:
    if system.label == "pipeline":  # Laneway processes only the tenants it knows
        table = topic_table(system.topics.prefix, ingress_partitions=system.partitions)
        await declare_topics(kafka.admin, table, [system.topics.ingress])
        specs = (TenantSpec(id=t.decode(), name=t.decode(), senders=[]) for t in tenants)
        await write_tenant_configs(kafka.admin, kafka.producer, table, specs)
    else:
        await create_topics(kafka.admin, [system.topics.ingress], system.partitions)
    log(f"{system.label}: starting consumer process (log {system.process.log_path})")
    system.process.spawn()
    try:
        await system.process.ready(READY_TIMEOUT_S)
        # The warm-up waits out the group's partition assignment and declares the out topics.
        await run_phase(
            kafka, system, "warm-up", corpus[:WARMUP_MESSAGES], tenants, None, READY_TIMEOUT_S
        )
        saturated = await run_phase(
            kafka, system, "saturated", corpus, tenants, None, args.phase_timeout
        )
        paced_count = int(args.paced_rate * args.paced_seconds)
        paced = await run_phase(
            kafka,
            system,
            "paced",
            corpus[:paced_count],
            tenants,
            args.paced_rate,
            args.phase_timeout,
        )
    finally:
        system.process.stop()
    log(
        f"{system.label}: {saturated.msgs_per_s:,.0f} msg/s "
        f"(producer {saturated.produce_msgs_per_s:,.0f} msg/s), saturated p50/p99 "
        f"{saturated.percentile_ms(50):.0f}/{saturated.percentile_ms(99):.0f} ms, paced p50/p99 "
        f"{paced.percentile_ms(50):.1f}/{paced.percentile_ms(99):.1f} ms"
    )
    return SystemResult(saturated, paced)


def make_systems(run_id: str, bootstrap: str, partitions: int, run_dir: Path) -> list[System]:
    pipe_id, base_id = f"lwbench-{run_id}-pipe", f"lwbench-{run_id}-base"
    env = worker_env(
        bootstrap,
        pipe_id,
        run_dir / "data",
        ingress_partitions=str(partitions),
        # One process, one lane: this measures the processing pipeline itself (lanes would move
        # every flooding bench tenant to the lane worker; bench.isolation measures lanes).
        lanes_enabled="false",
    )
    passthrough_command = [
        sys.executable,
        "-m",
        "bench.passthrough",
        "--bootstrap",
        bootstrap,
        "--prefix",
        f"{base_id}.",
        "--group",
        base_id,
    ]
    return [
        System(
            label="pipeline",
            topics=TopicNames(f"{pipe_id}."),
            partitions=partitions,
            process=WorkerProcess(env, run_dir / "pipeline.log", name="faust worker"),
            source_of=pipeline_source,
        ),
        System(
            label="baseline",
            topics=TopicNames(f"{base_id}."),
            partitions=partitions,
            process=ChildProcess("pass-through", passthrough_command, {}, run_dir / "baseline.log"),
            source_of=passthrough_source,
        ),
    ]


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    tenants = [f"tenant-{index:02d}".encode() for index in range(args.tenants)]
    log(f"generating {args.messages:,} synthetic ADT/ORU messages for {args.tenants} tenants")
    corpus = build_corpus(args.messages, tenants)
    run_id = new_run_id()
    run_dir = REPO / ".run" / "bench" / run_id
    systems = make_systems(run_id, args.bootstrap, args.partitions, run_dir)
    kafka = Kafka(args.bootstrap)
    await kafka.start()
    try:
        results = {s.label: await measure(kafka, s, corpus, tenants, args) for s in systems}
    finally:
        await clean_up(kafka, f"lwbench-{run_id}-")
    pipeline, baseline = results["pipeline"], results["baseline"]
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    plot(pipeline, baseline, args.paced_rate, RESULTS_DIR / "throughput.png")
    return {
        "pipeline_msgs_per_s": round(pipeline.saturated.msgs_per_s, 1),
        "baseline_msgs_per_s": round(baseline.saturated.msgs_per_s, 1),
        "ratio": round(pipeline.saturated.msgs_per_s / baseline.saturated.msgs_per_s, 3),
        "p50_ms": pipeline.saturated.percentile_ms(50),
        "p99_ms": pipeline.saturated.percentile_ms(99),
        "messages": args.messages,
        "baseline_p50_ms": baseline.saturated.percentile_ms(50),
        "baseline_p99_ms": baseline.saturated.percentile_ms(99),
        "pipeline_producer_msgs_per_s": round(pipeline.saturated.produce_msgs_per_s, 1),
        "baseline_producer_msgs_per_s": round(baseline.saturated.produce_msgs_per_s, 1),
        "paced_rate": args.paced_rate,
        "paced_seconds": args.paced_seconds,
        "paced_p50_ms": pipeline.paced.percentile_ms(50),
        "paced_p99_ms": pipeline.paced.percentile_ms(99),
        "baseline_paced_p50_ms": baseline.paced.percentile_ms(50),
        "baseline_paced_p99_ms": baseline.paced.percentile_ms(99),
        "tenants": args.tenants,
        "partitions": args.partitions,
        "kafka_version": kafka_version(args.bootstrap),
        "cpu_count": os.cpu_count(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "wall_time_s": round(time.monotonic() - started, 1),
    }


def plot(pipeline: SystemResult, baseline: SystemResult, paced_rate: float, path: Path) -> None:
    """Saturated: messages in and out over time. Paced: latency over time and its CDF."""
    figure = Figure(figsize=(18, 5.5), layout="constrained")
    FigureCanvasAgg(figure)  # render with Agg: no display needed
    flow_axes, paced_time_axes, paced_cdf_axes = figure.subplots(1, 3)
    for label, result, color in (
        ("pipeline", pipeline, "tab:blue"),
        ("baseline (raw aiokafka)", baseline, "tab:orange"),
    ):
        saturated, paced = result.saturated, result.paced
        count = np.arange(1, saturated.messages + 1)
        flow_axes.plot(saturated.sent_at_s, count, color=color, linestyle=":", linewidth=1)
        arrived_at_s = np.sort(saturated.sent_at_s + saturated.latencies_ms / 1000)
        flow_axes.plot(
            arrived_at_s, count, color=color, label=f"{label}: {saturated.msgs_per_s:,.0f} msg/s"
        )
        paced_time_axes.scatter(
            paced.sent_at_s,
            paced.latencies_ms,
            s=2,
            alpha=0.4,
            color=color,
            rasterized=True,
            label=label,
        )
        sorted_latencies = np.sort(paced.latencies_ms)
        paced_cdf_axes.plot(
            sorted_latencies,
            np.arange(1, paced.messages + 1) / paced.messages * 100,
            color=color,
            label=f"{label}: p50 {paced.percentile_ms(50):.1f} ms, "
            f"p99 {paced.percentile_ms(99):.1f} ms",
        )
    flow_axes.set(
        title=f"Saturated: {pipeline.saturated.messages:,} messages (dotted: produced)",
        xlabel="time since first ingress record (s)",
        ylabel="messages delivered to out topics",
    )
    flow_axes.legend(loc="lower right")
    paced_time_axes.set(
        title=f"Paced at {paced_rate:,.0f} msg/s: latency over time",
        xlabel="time since first ingress record (s)",
        ylabel="end-to-end latency (ms)",
    )
    paced_time_axes.legend(markerscale=6)
    paced_cdf_axes.set(
        title=f"Paced at {paced_rate:,.0f} msg/s: latency distribution",
        xlabel="end-to-end latency (ms)",
        ylabel="messages at or below (%)",
    )
    for axes in (flow_axes, paced_time_axes, paced_cdf_axes):
        axes.grid(True, which="both", alpha=0.3)
    paced_cdf_axes.legend(loc="lower right")
    figure.savefig(path, dpi=100)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=8, help="ingress partitions")
    parser.add_argument("--paced-rate", type=float, default=1000.0, help="msg/s")
    parser.add_argument("--paced-seconds", type=float, default=10.0)
    parser.add_argument(
        "--phase-timeout", type=float, default=600.0, help="seconds for a phase to complete"
    )
    parser.add_argument("--bootstrap", default=default_bootstrap())
    args = parser.parse_args()
    if args.messages < WARMUP_MESSAGES or args.paced_rate * args.paced_seconds > args.messages:
        parser.error("--messages must cover the warm-up and the paced phase")
    return args


def _summary(results: dict[str, Any]) -> str:
    return (
        f"pipeline {results['pipeline_msgs_per_s']:,.0f} msg/s vs baseline "
        f"{results['baseline_msgs_per_s']:,.0f} msg/s (ratio {results['ratio']:.2f}); "
        f"saturated p50/p99 {results['p50_ms']:.0f}/{results['p99_ms']:.0f} ms; "
        f"paced {results['paced_rate']:,.0f}/s p50/p99 {results['paced_p50_ms']:.1f}/"
        f"{results['paced_p99_ms']:.1f} ms (baseline {results['baseline_paced_p50_ms']:.1f}/"
        f"{results['baseline_paced_p99_ms']:.1f}); {results['messages']:,} msgs in "
        f"{results['wall_time_s']:.0f}s -> bench/results/throughput.json, throughput.png"
    )


def main() -> None:
    run_bench(bench, parse_args(), "throughput", _summary)


if __name__ == "__main__":
    main()
