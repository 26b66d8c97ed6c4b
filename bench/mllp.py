"""MLLP ACK latency: senders on their own connections, open loop, against a real worker.

Starts a worker of its own (own app id, topic prefix, ports, data dir and admin token) against
the broker, onboards one tenant per connection (distinct sender identities), then every
connection sends synthetic ADT/ORU messages at rate/connections msg/s, the connections offset so
that the total is evenly spaced. Open loop: a message is sent at its due time whether or not
earlier ACKs are back (frames then queue on the connection, in order), and its latency is
ACK arrival - due time, so a slow ACK also counts against the messages queued behind it.
The first --warmup-seconds are sent but not measured: right after start-up the worker joins its
consumer group and declares each tenant's output topics on their first messages, and a
single-node broker stalls every producer (not just this worker) for a few seconds meanwhile.
Their p99 is reported apart as `warmup_ack_p99_ms`.

    python -m bench.mllp [--rate 1000] [--connections 10] [--seconds 20]

Writes bench/results/mllp.json and bench/results/mllp.png.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.common import (
    REPO,
    RESULTS_DIR,
    BenchError,
    Kafka,
    clean_up,
    git_commit,
    kafka_version,
    log,
    new_run_id,
    run_bench,
)
from streams.hl7.synthetic import ADT_TRIGGERS, VERSIONS, adt, oru
from streams.mllp import Frame, MllpDecoder, frame
from tests.harness import WorkerProcess, default_bootstrap, worker_env

READY_TIMEOUT_S = 120.0
CORPUS_SEED = 20240607
READ_BYTES = 64 * 1024
# ACKs are small; a frame this large from the listener means something is badly wrong.
MAX_ACK_BYTES = 64 * 1024
# MSH-15 is field 15: index 14 once the segment is split on the field separator.
MSH_15_INDEX = 14


@dataclass(frozen=True)
class Connection:
    """One sender: its tenant, its MSH-3 identity and its messages as (control id, bytes)."""

    index: int
    tenant_id: str
    application: str
    messages: list[tuple[str, bytes]]


@dataclass(frozen=True)
class Schedule:
    """Open-loop due times: every connection at rate/connections, offset from one another so
    that the messages of all connections together are evenly spaced.
    """

    start: float  # loop time of the first message
    rate: float  # msg/s, all connections together
    connections: int

    def due(self, connection: int, seq: int) -> float:
        return self.start + (seq * self.connections + connection) / self.rate


@dataclass
class Samples:
    """Per ACK: when its message was due (s since the start), its latency (ms) and MSA-1."""

    due_s: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)
    sent: int = 0

    def record(self, due_s: float, latency_ms: float, code: str) -> None:
        self.due_s.append(due_s)
        self.latency_ms.append(latency_ms)
        self.codes.append(code)


def original_mode(message: bytes) -> bytes:
    """`message` with MSH-15 emptied: every message then gets an ACK (AA when accepted).

    The synthetic feed picks MSH-15 at random, and NE would leave nothing to time.
    """
    msh, _, rest = message.partition(b"\r")
    fields = msh.split(b"|")  # the bench's messages use the default delimiters
    if len(fields) > MSH_15_INDEX:  # else MSH-15 is already absent (trailing fields trimmed)
        fields[MSH_15_INDEX] = b""
    return b"|".join(fields) + b"\r" + rest


def build_connections(count: int, per_connection: int, run_id: str) -> list[Connection]:
    rng = random.Random(CORPUS_SEED)
    connections = []
    for index in range(count):
        application = f"BENCH{index:02d}"
        messages = []
        for seq in range(per_connection):
            control_id = f"B{index:02d}-{seq:07d}"
            common: dict[str, Any] = {
                "sending_application": application,
                "sending_facility": "BENCH_FACILITY",
                "control_id": control_id,
                "version": rng.choice(VERSIONS),
            }
            if rng.random() < 0.5:
                message = adt(rng, trigger=rng.choice(ADT_TRIGGERS), **common)
            else:
                message = oru(rng, **common)
            messages.append((control_id, original_mode(message)))
        connections.append(Connection(index, f"mllp-{run_id}-{index:02d}", application, messages))
    return connections


async def onboard(web_port: int, admin_token: str, connection: Connection, rate: float) -> None:
    body = {
        "id": connection.tenant_id,
        "name": f"MLLP bench {connection.index}",
        "senders": [{"application": connection.application, "facility": "BENCH_FACILITY"}],
        # The contract matches what the sender sends: no lane move, no throttling.
        "rate_per_s": rate,
        "burst": max(int(rate * 2), 1),
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{web_port}/api/tenants",
            json=body,
            headers={"Authorization": f"Bearer {admin_token}"},
        ) as response,
    ):
        if response.status != 201:
            raise BenchError(f"onboarding {connection.tenant_id}: {response.status}")


async def drive(port: int, connection: Connection, schedule: Schedule, samples: Samples) -> None:
    """Send on schedule and time each ACK; ACKs come back in sending order."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    in_flight: deque[tuple[float, str]] = deque()  # (due, control id)

    async def send() -> None:
        for seq, (control_id, payload) in enumerate(connection.messages):
            due = schedule.due(connection.index, seq)
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            in_flight.append((due, control_id))
            writer.write(frame(payload))
            samples.sent += 1
            await writer.drain()

    async def receive() -> None:
        decoder = MllpDecoder(MAX_ACK_BYTES)
        remaining = len(connection.messages)
        while remaining:
            data = await reader.read(READ_BYTES)
            arrived = loop.time()
            if not data:
                raise BenchError(f"the listener closed connection {connection.index}")
            for event in decoder.feed(data):
                if not isinstance(event, Frame):
                    raise BenchError(f"bad framing from the listener: {event.kind}")
                due, control_id = in_flight.popleft()
                code, acked_id = msa_code_and_id(event.payload)
                if acked_id != control_id:
                    raise BenchError(f"ACK for {acked_id!r} where {control_id!r} was due")
                samples.record(due - schedule.start, (arrived - due) * 1000, code)
                remaining -= 1

    try:
        await asyncio.gather(send(), receive())
    finally:
        writer.close()


def msa_code_and_id(ack: bytes) -> tuple[str, str]:
    """(MSA-1, MSA-2) of an ACK."""
    separator = ack[3:4]
    for segment in ack.split(b"\r"):
        if segment.startswith(b"MSA"):
            fields = segment.split(separator)
            return fields[1].decode(), fields[2].decode() if len(fields) > 2 else ""
    raise BenchError("an ACK without MSA")


async def report_progress(samples: Samples, schedule: Schedule, expected: int) -> None:
    """Once a second on stderr: messages sent and acknowledged, and the last second's p99."""
    loop = asyncio.get_running_loop()
    reported = 0
    while True:
        await asyncio.sleep(1.0)
        recent = samples.latency_ms[reported:]
        reported += len(recent)
        p99 = f"{np.percentile(recent, 99):6.1f} ms" if recent else "     - ms"
        log(
            f"  {loop.time() - schedule.start:5.1f}s  sent {samples.sent:>6,}/{expected:,}"
            f"  acked {reported:>6,}  last-second p99 {p99}"
        )


@dataclass
class Result:
    due_s: np.ndarray  # measured messages only, s since the end of the warm-up
    latency_ms: np.ndarray
    non_aa: int
    msgs_per_s: float
    warmup_p99_ms: float

    def percentile_ms(self, q: float) -> float:
        return round(float(np.percentile(self.latency_ms, q)), 2)


async def measure(port: int, connections: list[Connection], args: argparse.Namespace) -> Result:
    loop = asyncio.get_running_loop()
    schedule = Schedule(loop.time() + 0.5, args.rate, len(connections))
    samples = Samples()
    expected = sum(len(c.messages) for c in connections)
    log(
        f"sending {expected:,} messages over {len(connections)} connections at "
        f"{args.rate:,.0f} msg/s ({args.warmup_seconds:.0f} s warm-up, {args.seconds:.0f} s "
        "measured)"
    )
    progress = asyncio.create_task(report_progress(samples, schedule, expected))
    try:
        async with asyncio.timeout(args.warmup_seconds + args.seconds + 60):
            await asyncio.gather(*(drive(port, c, schedule, samples) for c in connections))
    finally:
        progress.cancel()
    due_s = np.array(samples.due_s)
    latency_ms = np.array(samples.latency_ms)
    measured = due_s >= args.warmup_seconds
    warmup_p99_ms = float(np.percentile(latency_ms[~measured], 99)) if args.warmup_seconds else 0.0
    due_s, latency_ms = due_s[measured] - args.warmup_seconds, latency_ms[measured]
    last_ack_s = float(np.max(due_s + latency_ms / 1000))
    non_aa = sum(code != "AA" for code, keep in zip(samples.codes, measured, strict=True) if keep)
    return Result(due_s, latency_ms, non_aa, len(due_s) / last_ack_s, round(warmup_p99_ms, 2))


def plot(result: Result, args: argparse.Namespace, path: Path) -> None:
    """Latency of every measured message over time, and its distribution."""
    figure = Figure(figsize=(13, 5), layout="constrained")
    FigureCanvasAgg(figure)  # render with Agg: no display needed
    time_axes, cdf_axes = figure.subplots(1, 2)
    time_axes.scatter(result.due_s, result.latency_ms, s=2, alpha=0.4, rasterized=True)
    time_axes.set(
        title=f"MLLP ACK latency, {args.connections} connections, {args.rate:,.0f} msg/s",
        xlabel="message due time (s)",
        ylabel="ACK latency (ms)",
    )
    ordered = np.sort(result.latency_ms)
    cdf_axes.plot(ordered, np.arange(1, len(ordered) + 1) / len(ordered) * 100)
    for q, style in ((50, ":"), (99, "--")):
        cdf_axes.axvline(
            result.percentile_ms(q),
            linestyle=style,
            color="grey",
            label=f"p{q} {result.percentile_ms(q):.1f} ms",
        )
    cdf_axes.set(
        title="ACK latency distribution", xlabel="ACK latency (ms)", ylabel="ACKs at or below (%)"
    )
    cdf_axes.legend(loc="lower right")
    for axes in (time_axes, cdf_axes):
        axes.grid(True, alpha=0.3)
    figure.savefig(path, dpi=100)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    run_id = new_run_id()
    run_dir = REPO / ".run" / "bench" / run_id
    per_connection = round(args.rate / args.connections * (args.warmup_seconds + args.seconds))
    connections = build_connections(args.connections, per_connection, run_id)
    # The bench's own worker: nothing shared with other workers on this broker.
    env = worker_env(args.bootstrap, f"lwbench-{run_id}-mllp", run_dir / "data")
    worker = WorkerProcess(env, run_dir / "worker.log", name="faust worker")
    log(f"starting a worker (log {worker.log_path})")
    worker.spawn()
    try:
        await worker.ready(READY_TIMEOUT_S)
        for connection in connections:
            await onboard(
                int(env["LANEWAY_WEB_PORT"]),
                env["LANEWAY_ADMIN_TOKEN"],
                connection,
                args.rate / args.connections,
            )
        result = await measure(int(env["LANEWAY_MLLP_PORT"]), connections, args)
        worker.check_alive()
    finally:
        worker.stop()
        kafka = Kafka(args.bootstrap)
        await kafka.start()
        await clean_up(kafka, f"lwbench-{run_id}-")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    plot(result, args, RESULTS_DIR / "mllp.png")
    return {
        "ack_p50_ms": result.percentile_ms(50),
        "ack_p99_ms": result.percentile_ms(99),
        "msgs_per_s": round(result.msgs_per_s, 1),
        "connections": args.connections,
        "messages": len(result.latency_ms),
        "ack_p90_ms": result.percentile_ms(90),
        "ack_p999_ms": result.percentile_ms(99.9),
        "ack_max_ms": round(float(np.max(result.latency_ms)), 2),
        "non_aa": result.non_aa,
        "rate": args.rate,
        "duration_s": args.seconds,
        "warmup_s": args.warmup_seconds,
        "warmup_ack_p99_ms": result.warmup_p99_ms,
        "kafka_version": kafka_version(args.bootstrap),
        "cpu_count": os.cpu_count(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "wall_time_s": round(time.monotonic() - started, 1),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="msg/s, all connections")
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured duration")
    parser.add_argument("--warmup-seconds", type=float, default=8.0)
    parser.add_argument("--bootstrap", default=default_bootstrap())
    args = parser.parse_args()
    if args.rate <= 0 or args.connections < 1 or args.seconds <= 0 or args.warmup_seconds < 0:
        parser.error("--rate, --connections and --seconds must be positive")
    return args


def _summary(results: dict[str, Any]) -> str:
    return (
        f"MLLP {results['connections']} connections at {results['rate']:,.0f} msg/s: "
        f"{results['msgs_per_s']:,.0f} msg/s acknowledged, ACK p50/p99/max "
        f"{results['ack_p50_ms']:.1f}/{results['ack_p99_ms']:.1f}/{results['ack_max_ms']:.1f} ms, "
        f"{results['non_aa']} not AA, {results['messages']:,} messages "
        f"-> bench/results/mllp.json, mllp.png"
    )


def main() -> None:
    run_bench(bench, parse_args(), "mllp", _summary)


if __name__ == "__main__":
    main()
