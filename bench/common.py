"""What the benchmarks share beyond the harness: results, progress log, targets, the bench's Kafka
clients and topic admin, the source header and run metadata.

Processes, worker settings, ports and the API and MLLP clients come from tests/harness.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from agents.state.topic_admin import create_topics as agents_create_topics
from streams.auth import hash_token, new_token
from streams.settings import Settings
from streams.tenants import TenantRecord, TenantSpec
from streams.topics import TopicTable
from tests.harness import REPO, HarnessError, log

RESULTS_DIR = REPO / "bench" / "results"

# Benchmarks run against the single-node development broker: one replica is all there is.
REPLICATION = 1

# The producer must not be what limits a bench: big batches, a few ms of linger.
PRODUCER_LINGER_MS = 5
PRODUCER_MAX_BATCH_BYTES = 256 * 1024

# The pass-through copies the ingress position into this header, so its outputs can be joined
# to ingress records like the pipeline's events, whose JSON `source` field carries the same.
SOURCE_HEADER = "lwbench-source"

SourceId = tuple[int, int]
"""(partition, offset) of an ingress record."""


class BenchError(HarnessError):
    """The benchmark cannot go on; the message says why."""


def run_bench(
    bench: Callable[[argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]],
    args: argparse.Namespace,
    name: str,
    summary: Callable[[dict[str, Any]], str],
    failures: tuple[type[BaseException], ...] = (HarnessError,),
) -> None:
    """Run one benchmark, write bench/results/<name>.json and print its summary line.

    A failure (a BenchError, or a harness process that died or never got ready) exits 1 and an
    interrupt 130; the benchmarks clean up their processes and topics on the way out either way.
    Results that list `targets_missed` exit 1 too, naming each.
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
    missed = results.get("targets_missed", [])
    for target in missed:
        log(f"target missed: {target}")
    if missed:
        sys.exit(1)


def targets_verdict(name: str, results: dict[str, Any]) -> str:
    """The end of a bench's summary line: the targets missed (or none) and where results are."""
    missed = results["targets_missed"]
    verdict = f"MISSED: {', '.join(missed)}" if missed else "all targets met"
    return f"{verdict} -> bench/results/{name}.json, {name}.png"


def encode_source(partition: int, offset: int) -> bytes:
    return f"{partition}-{offset}".encode()


def decode_source(value: bytes) -> SourceId:
    partition, offset = value.split(b"-")
    return int(partition), int(offset)


async def create_topics(admin: AIOKafkaAdminClient, names: Iterable[str], partitions: int) -> None:
    """Create plain topics of the baselines (no Laneway topic: those go through
    `declare_topics`); ones that already exist are fine."""
    await _create(admin, [NewTopic(name, partitions, REPLICATION) for name in names])


def topic_table(prefix: str, **settings: Any) -> TopicTable:
    """The topic table of a bench's deployment: its prefix, other settings from the environment."""
    return TopicTable(Settings(topic_prefix=prefix, **settings))


async def declare_topics(
    admin: AIOKafkaAdminClient, table: TopicTable, names: Iterable[str]
) -> None:
    """Create Laneway topics as the topic table specifies them, as the workers would."""
    failed = await agents_create_topics(admin, [table.spec(name) for name in names])
    if failed:
        raise BenchError(f"topics not created: {failed}")


async def _create(admin: AIOKafkaAdminClient, topics: list[NewTopic]) -> None:
    """Create the topics; ones that already exist are fine (another worker may have won)."""
    response = await admin.create_topics(topics)
    # aiokafka reports per-topic errors in the response instead of raising them.
    for entry in response.topic_errors:
        topic, code = entry[0], entry[1]
        if code not in (0, TopicAlreadyExistsError.errno):
            raise for_code(code)(f"creating topic {topic}")


async def write_tenant_configs(
    admin: AIOKafkaAdminClient,
    producer: AIOKafkaProducer,
    table: TopicTable,
    specs: Iterable[TenantSpec],
) -> None:
    """Onboard tenants as POST /api/tenants stores them, straight into the tenants topic: fast
    for thousands, and the workers read them at start (their out/DLQ topics come on first use).
    Records of tenants nobody onboarded are parked, never processed."""
    topics = table.names
    await declare_topics(admin, table, [topics.tenants])
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


class Kafka:
    """The bench's own clients: admin, the ingress producer and a group-less reader."""

    def __init__(self, bootstrap: str) -> None:
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=PRODUCER_LINGER_MS,
            max_batch_size=PRODUCER_MAX_BATCH_BYTES,
        )
        self.reader = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )

    async def start(self) -> None:
        await self.admin.start()
        await self.producer.start()
        await self.reader.start()

    async def stop(self) -> None:
        await self.reader.stop()
        await self.producer.stop()
        await self.admin.close()

    async def existing_topics(self) -> set[str]:
        return set(await self.reader.topics())  # fetches fresh metadata

    async def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return dict(await self.reader.end_offsets(list(partitions))) if partitions else {}

    async def read(self, ranges: dict[TopicPartition, tuple[int, int]]) -> list[ConsumerRecord]:
        """Every record in [start, end) of each partition."""
        wanted = {tp: span for tp, span in ranges.items() if span[1] > span[0]}
        self.reader.assign(list(wanted))
        for tp, (start, _) in wanted.items():
            self.reader.seek(tp, start)
        records: list[ConsumerRecord] = []
        remaining = set(wanted)
        async with asyncio.timeout(300):
            while remaining:
                batch = await self.reader.getmany(*remaining, timeout_ms=1000)
                for tp, partition_records in batch.items():
                    end = wanted[tp][1]
                    records.extend(r for r in partition_records if r.offset < end)
                    if await self.reader.position(tp) >= end:
                        remaining.discard(tp)
        return records

    async def delete_run_topics(self, run_prefix: str) -> list[str]:
        """Delete every topic of this run, including Faust's internal ones (named by app id)."""
        doomed = sorted(t for t in await self.existing_topics() if t.startswith(run_prefix))
        if doomed:
            await self.admin.delete_topics(doomed)
        return doomed


async def clean_up(kafka: Kafka, run_prefix: str) -> None:
    """Delete the run's topics so the broker does not fill up; a cleanup failure is reported."""
    try:
        deleted = await kafka.delete_run_topics(run_prefix)
        log(f"deleted {len(deleted)} bench topics")
    except KafkaError as error:
        log(f"could not delete the topics {run_prefix}*: {error}")
    finally:
        await kafka.stop()


def kafka_version(bootstrap: str) -> str | None:
    """Version of the local development broker; unknown for any other bootstrap."""
    if bootstrap not in ("localhost:9092", "127.0.0.1:9092"):
        return None
    status = subprocess.run(
        ["bash", "scripts/kafka.sh", "status"], cwd=REPO, capture_output=True, text=True
    )
    match = re.search(r"Kafka (\S+)", status.stdout)
    return match.group(1) if match else None


def git_commit() -> str | None:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def new_run_id() -> str:
    """A bench run's id, for its topic prefix, app ids and log folder: sortable by start time,
    distinct between runs started in the same second."""
    return f"{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(2)}"
