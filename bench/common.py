"""Helpers shared by the benchmarks: topic admin, the source header and consumer subprocesses."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from streams.auth import hash_token, new_token
from streams.tenants import TenantRecord, TenantSpec
from streams.topics import TopicNames

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"

# Benchmarks run against the single-node development broker: one replica is all there is.
REPLICATION = 1

# The pass-through copies the ingress position into this header, so its outputs can be joined
# to ingress records like the pipeline's events, whose JSON `source` field carries the same.
SOURCE_HEADER = "lwbench-source"

SourceId = tuple[int, int]
"""(partition, offset) of an ingress record."""


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says why."""


def log(line: str) -> None:
    """Progress goes to stderr; stdout carries the one-line summary."""
    print(line, file=sys.stderr, flush=True)


def run_bench(
    bench: Callable[[argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]],
    args: argparse.Namespace,
    name: str,
    summary: Callable[[dict[str, Any]], str],
    failures: tuple[type[BaseException], ...] = (BenchError,),
) -> None:
    """Run one benchmark, write bench/results/<name>.json and print its summary line.

    A failure exits 1 and an interrupt 130; the benchmarks clean up their processes and topics
    on the way out either way.
    """
    try:
        results = asyncio.run(bench(args))
    except failures as error:
        log(f"bench failed: {error!r}")
        sys.exit(1)
    except KeyboardInterrupt:
        log("interrupted; bench processes stopped and bench topics deleted")
        sys.exit(130)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(summary(results))


def targets_verdict(name: str, results: dict[str, Any]) -> str:
    """The end of a bench's summary line: the targets missed (or none) and where results are."""
    missed = results["targets_missed"]
    verdict = f"MISSED: {', '.join(missed)}" if missed else "all targets met"
    return f"{verdict} -> bench/results/{name}.json, {name}.png"


def exit_on_missed_targets(name: str) -> None:
    """Exit 1, naming each one, if bench/results/<name>.json lists targets missed."""
    missed = json.loads((RESULTS_DIR / f"{name}.json").read_text())["targets_missed"]
    for target in missed:
        log(f"target missed: {target}")
    if missed:
        sys.exit(1)


def default_bootstrap() -> str:
    return os.environ.get("LANEWAY_KAFKA_BOOTSTRAP", "localhost:9092")


def encode_source(partition: int, offset: int) -> bytes:
    return f"{partition}-{offset}".encode()


def decode_source(value: bytes) -> SourceId:
    partition, offset = value.split(b"-")
    return int(partition), int(offset)


async def create_topics(
    admin: AIOKafkaAdminClient,
    names: Iterable[str],
    partitions: int,
    config: dict[str, str] | None = None,
) -> None:
    """Create the topics; ones that already exist are fine (another worker may have won)."""
    response = await admin.create_topics(
        [NewTopic(name, partitions, REPLICATION, topic_configs=config) for name in names]
    )
    # aiokafka reports per-topic errors in the response instead of raising them.
    for entry in response.topic_errors:
        topic, code = entry[0], entry[1]
        if code not in (0, TopicAlreadyExistsError.errno):
            raise for_code(code)(f"creating topic {topic}")


async def write_tenant_configs(
    admin: AIOKafkaAdminClient,
    producer: AIOKafkaProducer,
    topics: TopicNames,
    specs: Iterable[TenantSpec],
) -> None:
    """Onboard tenants as POST /api/tenants stores them, straight into the tenants topic: fast
    for thousands, and the workers read them at start (their out/DLQ topics come on first use).
    Records of tenants nobody onboarded are parked, never processed."""
    await create_topics(admin, [topics.tenants], 1, {"cleanup.policy": "compact"})
    now = datetime.now(UTC)
    for spec in specs:
        record = TenantRecord.create(spec, hash_token(new_token()), now)
        await producer.send(topics.tenants, record.to_json(), key=record.id.encode())
    await producer.flush()


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024  # the kernel reports kB
    raise BenchError(f"no VmRSS for process {pid}")


# Below Linux's ephemeral range (32768-60999): a port picked there can be taken as the source
# port of some outgoing connection before (or while) the worker binds it, e.g. on a restart.
_LISTEN_PORTS = range(20000, 32000)


def free_port() -> int:
    """A port nothing listens on now, outside the range the kernel hands to client sockets."""
    for port in random.sample(_LISTEN_PORTS, 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise BenchError("no free port found between 20000 and 32000")


class ConsumerProcess:
    """A consumer subprocess (Faust worker or pass-through) writing to its own log file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._command = command
        self._env = {**os.environ, **env}
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            # A session of its own keeps the terminal's Ctrl-C away from it: the bench stops it.
            self._process = subprocess.Popen(
                self._command,
                cwd=REPO,
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def wait_for_log(self, marker: bytes, timeout_s: float) -> None:
        """Return once `marker` shows up in the log; fail if the process dies or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            if marker in self.log_path.read_bytes():
                return
            await asyncio.sleep(0.2)
        raise BenchError(
            f"{self.name} did not log {marker.decode()!r} within {timeout_s:.0f}s; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    @property
    def pid(self) -> int:
        if self._process is None:
            raise BenchError(f"{self.name} was not started")
        return self._process.pid

    def check_alive(self) -> None:
        if self._process is None or self._process.poll() is not None:
            raise BenchError(f"{self.name} is not running; log {self.log_path}:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM for a clean shutdown, SIGKILL if it does not come in time."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
