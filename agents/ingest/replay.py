"""DLQ replay: `POST /api/tenants/{tenant_id}/dlq/replay` (admin) re-injects a tenant's rejects.

After a fix (a config change, a corrected sender), the originals parked in
`laneway.dlq.<tenant>` are written back to ingress, in DLQ order, with acks=all. A message that
fails again lands in the DLQ again, as a new record, and can be replayed after the next fix.

Optional query filters: `reason` (one or more DLQ reason codes: repeated or comma-separated) and
`since` / `until` (ISO 8601 with a UTC offset; `since <= parked time < until`, where the parked
time is the DLQ record's Kafka timestamp).

Each DLQ record is written back at most once, across filters, repeats and failures:
- A replay of a tenant runs alone in its worker: a second one answers 409 `replay_running`.
- The replay position is a consumer-group commit per tenant whose offset is the first record
  not yet replayed. Its metadata holds the ranges above it already replayed (a filter leaves
  gaps) and, while a record is being written, that record's offset with the ingress end offsets
  taken just before the write. It is committed before each write and again after it.
- A replay that failed between those two commits (a timeout, a crash) left that "pending" mark.
  The next replay reads ingress from the marked end offsets: if the tenant's record with the very
  same bytes is there, the write happened and is not repeated; otherwise it is written now.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata
from faust.web import View
from multidict import MultiMapping

from agents.ingest.writer import IngestUnavailable, IngressWriter
from agents.state.topic_admin import existing_topics
from agents.web.auth import Guard
from agents.web.common import ApiError, api_errors
from agents.web.fetch import original_by_ref
from streams.app import LanewayApp

FETCH_TIMEOUT_MS = 1000
# Consecutive empty fetches below the end offset after which the DLQ counts as unreadable.
MAX_EMPTY_FETCHES = 10
# Kafka refuses commit metadata above offset.metadata.max.bytes (4096 by default).
MAX_STATE_BYTES = 4000


@dataclass(frozen=True)
class ReplayFilter:
    """Which DLQ records a replay writes back; the default takes every one."""

    reasons: frozenset[str] = frozenset()
    since_ms: int | None = None
    until_ms: int | None = None

    def matches(self, reason: str, timestamp_ms: int) -> bool:
        return (
            (not self.reasons or reason in self.reasons)
            and (self.since_ms is None or timestamp_ms >= self.since_ms)
            and (self.until_ms is None or timestamp_ms < self.until_ms)
        )

    @classmethod
    def from_query(cls, query: MultiMapping[str]) -> ReplayFilter:
        """The filter of `?reason=&since=&until=`; ValueError names a bad parameter."""
        reasons = frozenset(
            reason.strip()
            for value in query.getall("reason", [])
            for reason in value.split(",")
            if reason.strip()
        )
        since_ms, until_ms = (_epoch_ms(name, query.get(name)) for name in ("since", "until"))
        if since_ms is not None and until_ms is not None and until_ms <= since_ms:
            raise ValueError("'until' must be later than 'since'")
        return cls(reasons, since_ms, until_ms)


def _epoch_ms(name: str, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as error:
        raise ValueError(f"'{name}' is not an ISO 8601 timestamp") from error
    if moment.tzinfo is None:  # a local time would mean a different instant on every worker
        raise ValueError(f"'{name}' needs a UTC offset, e.g. 2024-05-01T08:00:00Z")
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True)
class PendingWrite:
    """A DLQ record being written back, and the ingress end offsets just before that write."""

    offset: int
    ingress_ends: Mapping[int, int]


@dataclass(frozen=True)
class ReplayPosition:
    """Which DLQ records of a tenant are already back in ingress; see the module docstring."""

    next_offset: int = 0
    # Sorted, disjoint, half-open [start, end) ranges, each starting above next_offset.
    done: tuple[tuple[int, int], ...] = ()
    pending: PendingWrite | None = field(default=None)

    def is_done(self, offset: int) -> bool:
        return offset < self.next_offset or any(start <= offset < end for start, end in self.done)

    def with_done(self, offset: int) -> ReplayPosition:
        """This position with `offset` replayed (and no write pending)."""
        ranges = sorted([*self.done, (offset, offset + 1)])
        merged: list[tuple[int, int]] = []
        for start, end in ranges:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        next_offset = self.next_offset
        while merged and merged[0][0] <= next_offset:
            next_offset = max(next_offset, merged.pop(0)[1])
        return ReplayPosition(next_offset, tuple(merged))

    def with_pending(self, pending: PendingWrite | None) -> ReplayPosition:
        return replace(self, pending=pending)

    def to_metadata(self) -> str:
        state: dict[str, Any] = {"done": [list(r) for r in self.done]}
        if self.pending is not None:
            state["pending"] = {
                "offset": self.pending.offset,
                "ingress_ends": {str(p): end for p, end in self.pending.ingress_ends.items()},
            }
        return json.dumps(state, separators=(",", ":"))

    @classmethod
    def from_commit(cls, committed: OffsetAndMetadata | None) -> ReplayPosition:
        """The position a commit holds; the start of the DLQ when there is none.

        A commit without state (an older Laneway's plain offset) keeps its offset.
        """
        if committed is None or committed.offset < 0:
            return cls()
        state = json.loads(committed.metadata) if committed.metadata else {}
        pending = state.get("pending")
        return cls(
            committed.offset,
            tuple((start, end) for start, end in state.get("done", [])),
            None
            if pending is None
            else PendingWrite(
                pending["offset"], {int(p): end for p, end in pending["ingress_ends"].items()}
            ),
        )


def install(app: LanewayApp, writer: IngressWriter, guard: Guard) -> None:
    """Register the replay view on `app`."""
    running: set[str] = set()  # tenants whose replay runs in this worker

    @app.page("/api/tenants/{tenant_id}/dlq/replay")
    class Replay(View):
        @api_errors
        async def post(self, request: web.Request, tenant_id: str) -> web.Response:
            await guard.admin(request)
            await guard.tenant_or_admin(request, tenant_id)  # 404 for an unknown tenant
            try:
                replay_filter = ReplayFilter.from_query(request.query)
            except ValueError as error:
                raise ApiError(400, "invalid_query", str(error)) from error
            # Checked and marked with no await in between: two requests cannot both pass.
            if tenant_id in running:
                raise ApiError(409, "replay_running", "a DLQ replay of this tenant is running")
            running.add(tenant_id)
            try:
                result = await DlqReplay(app, writer, tenant_id, replay_filter).run()
            except IngestUnavailable as error:
                raise ApiError(
                    503, "broker_unavailable", "Kafka did not accept the replay; run it again"
                ) from error
            finally:
                running.discard(tenant_id)
            return web.json_response(result)


class DlqReplay:
    """One replay run of one tenant's DLQ."""

    def __init__(
        self, app: LanewayApp, writer: IngressWriter, tenant_id: str, replay_filter: ReplayFilter
    ) -> None:
        self.app = app
        self.writer = writer
        self.tenant_id = tenant_id
        self.filter = replay_filter
        self.group = f"{app.laneway.app_id}-dlq-replay-{tenant_id}"
        self.dlq = TopicPartition(app.topic_names.dlq(tenant_id), 0)
        bootstrap = app.laneway.bootstrap_servers
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            # A position below the log start (retention removed old records) means: from there.
            auto_offset_reset="earliest",
        )
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self._ingress: list[TopicPartition] = []

    async def run(self) -> dict[str, int]:
        await self.consumer.start()
        try:
            await self.admin.start()
            try:
                return await self._replay()
            finally:
                await self.admin.close()
        finally:
            await self.consumer.stop()

    async def _replay(self) -> dict[str, int]:
        counts = {"replayed": 0, "skipped": 0, "already_replayed": 0}
        if not await existing_topics(self.admin, [self.dlq.topic]):
            # No reject yet: the publisher creates the DLQ topic with the first.
            return {**counts, "from_offset": 0, "to_offset": 0}
        committed = await self.admin.list_consumer_group_offsets(self.group, partitions=[self.dlq])
        position = ReplayPosition.from_commit(committed.get(self.dlq))
        self.consumer.assign([self.dlq])
        end = (await self.consumer.end_offsets([self.dlq]))[self.dlq]
        if position.pending is not None:
            position = await self._settle(position, position.pending)
        start = position.next_offset
        async for record in self._records(start, end):
            if position.is_done(record.offset):
                counts["already_replayed"] += 1
                continue
            parked = orjson.loads(record.value)
            if not self.filter.matches(parked.get("reason", ""), record.timestamp):
                counts["skipped"] += 1
                continue
            if len(position.with_done(record.offset).to_metadata()) > MAX_STATE_BYTES:
                # Filtered replays left more gaps than a commit can describe.
                raise ApiError(
                    409, "replay_state_full", "run a replay without filters first", **counts
                )
            pending = PendingWrite(record.offset, await self._ingress_ends())
            await self._commit(position.with_pending(pending))
            await self.writer.write(self.tenant_id, await self._original(parked))
            position = position.with_done(record.offset)
            await self._commit(position)
            counts["replayed"] += 1
        return {**counts, "from_offset": start, "to_offset": end}

    async def _records(self, start: int, end: int) -> AsyncIterator[ConsumerRecord]:
        """The DLQ records in [start, end), in order."""
        self.consumer.seek(self.dlq, start)
        async for batch in _batches(self.consumer, {self.dlq: end}):
            for record in batch:
                if record.offset >= end:
                    return
                yield record

    async def _settle(self, position: ReplayPosition, pending: PendingWrite) -> ReplayPosition:
        """Resolve a write an earlier replay left pending: done if ingress holds it."""
        original: bytes | None = None
        async for record in self._records(pending.offset, pending.offset + 1):
            original = await self._original(orjson.loads(record.value))
        # A record gone from the DLQ (retention) can neither be checked nor replayed.
        written = original is None or await self._in_ingress(original, pending.ingress_ends)
        settled = position.with_done(pending.offset) if written else position.with_pending(None)
        await self._commit(settled)
        return settled

    async def _original(self, parked: Mapping[str, Any]) -> bytes:
        if parked.get("original_base64") is None:  # by reference: read it from ingress
            return await original_by_ref(self.writer.registry, self.tenant_id, parked["ref"])
        return base64.b64decode(parked["original_base64"])

    async def _ingress_ends(self) -> dict[int, int]:
        if not self._ingress:  # once per run: the write of every record needs the ends
            ingress = self.app.topic_names.ingress
            [topic] = await self.admin.describe_topics([ingress])
            self._ingress = [TopicPartition(ingress, p["partition"]) for p in topic["partitions"]]
        ends = await self.consumer.end_offsets(self._ingress)
        return {tp.partition: offset for tp, offset in ends.items()}

    async def _in_ingress(self, original: bytes, ends_before: Mapping[int, int]) -> bool:
        """True if the tenant's record with exactly these bytes was written after `ends_before`."""
        ingress = self.app.topic_names.ingress
        key = self.tenant_id.encode()
        reader = AIOKafkaConsumer(
            bootstrap_servers=self.app.laneway.bootstrap_servers, enable_auto_commit=False
        )
        await reader.start()
        try:
            partitions = [TopicPartition(ingress, p) for p in ends_before]
            reader.assign(partitions)
            for tp in partitions:
                reader.seek(tp, ends_before[tp.partition])
            async for batch in _batches(reader, await reader.end_offsets(partitions)):
                if any(r.key == key and r.value == original for r in batch):
                    return True
            return False
        finally:
            await reader.stop()

    async def _commit(self, position: ReplayPosition) -> None:
        commit = OffsetAndMetadata(position.next_offset, position.to_metadata())
        await self.consumer.commit({self.dlq: commit})


async def _batches(
    consumer: AIOKafkaConsumer, ends: Mapping[TopicPartition, int]
) -> AsyncIterator[list[ConsumerRecord]]:
    """Batches of records of the assigned partitions, until each is read up to its end offset.

    Raises IngestUnavailable when fetches keep coming back empty below the end: the broker is
    away, and a replay must fail rather than hang or report a record as absent.
    """
    empty_fetches = 0
    while unread := [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
        batches = await consumer.getmany(*unread, timeout_ms=FETCH_TIMEOUT_MS)
        empty_fetches = 0 if batches else empty_fetches + 1
        if empty_fetches >= MAX_EMPTY_FETCHES:
            raise IngestUnavailable(f"{unread[0].topic} could not be read")
        for records in batches.values():
            yield records
