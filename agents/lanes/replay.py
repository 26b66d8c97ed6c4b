"""Replays of released holds: a held tenant's records come back from Kafka, in order.

A hold waits in Kafka, never in memory: it is one ingress offset (`streams.cutover.Hold`).
Released (its cut complete, or its tenant resumed), a replay with a consumer of its own
re-reads the tenant's ingress partition from the hold's offset, forwards the tenant's records in
order to its lane, moves the hold on as Kafka acknowledges (persisted each second, so a crash
resumes there), and ends it under the forwarding lock once it has caught up with the read loop.
One replay at a time per ingress partition.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from agents.lanes.forwarding import Forwarder
from agents.lanes.ingress import (
    FETCH_TIMEOUT_MS,
    READ_BATCH_MAX,
    ROUTER_FETCH_BYTES,
    IngressReader,
    ingress_record,
)
from agents.lanes.state import RouteStates
from streams.cutover import Hold
from streams.processing import OutgoingRecord

log = logging.getLogger(__name__)

# A replay takes the forwarding lock for its last stretch once at most this many records of the
# partition are left to re-read: the read loop waits for about one batch.
LAST_STRETCH = READ_BATCH_MAX


class HoldReplays:
    """Starts, runs and stops the replays of released holds."""

    def __init__(self, forwarder: Forwarder, reader: IngressReader, states: RouteStates) -> None:
        self.forwarder = forwarder
        self.reader = reader
        self.states = states
        self.app = forwarder.app
        self._replays: dict[int, asyncio.Task[None]] = {}  # ingress partition -> its replay

    def release(self) -> None:
        """Start a replay for each hold that may go now (its cut complete, or its tenant
        resumed): one at a time per ingress partition."""
        position = self.reader.position
        for tenant, hold in self.forwarder.routes.releasable(self.forwarder.paused):
            partition = hold.partition
            if partition in self._replays or partition not in position:
                continue
            task = asyncio.create_task(self._replay(tenant, partition))
            self._replays[partition] = task
            task.add_done_callback(functools.partial(self._done, partition))

    def _done(self, partition: int, task: asyncio.Task[None]) -> None:
        if self._replays.get(partition) is task:
            del self._replays[partition]
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            log.error("replay of held records failed (%s): retried", type(error).__name__)

    async def stop(self, partitions: Iterable[int] | None = None) -> None:
        """Stop the replays of `partitions` (None: all); their holds stay where they are."""
        chosen = list(self._replays) if partitions is None else partitions
        tasks = [task for p in chosen if (task := self._replays.get(p)) is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _replay(self, tenant: str, partition: int) -> None:
        """Forward a released hold: re-read the tenant's ingress partition from the hold's
        offset with a consumer of its own (no group), forward that tenant's records in order to
        its lane, and move the hold on as Kafka acknowledges them. The last stretch, up to where
        the read loop is, runs under the forwarding lock; then the hold ends and the read loop
        forwards the tenant again."""
        settings = self.app.laneway
        forwarder, routes, position = self.forwarder, self.forwarder.routes, self.reader.position
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # past retention: what is left (docs/limits.md)
            max_partition_fetch_bytes=max(settings.max_fetch_bytes, ROUTER_FETCH_BYTES),
        )
        await consumer.start()
        try:
            tp = TopicPartition(self.app.topic_names.ingress, partition)
            consumer.assign([tp])
            hold = routes.hold_of(tenant)
            if hold is None:
                return
            consumer.seek(tp, hold.offset)
            first = True  # the first fetch may take a while: never under the lock
            while self._releasable(tenant, hold):
                left = position[partition] - hold.offset
                if left > LAST_STRETCH or (first and left > 0):
                    first = False
                    forwards, read_to = await self._reread(consumer, tp, tenant, hold)
                    async with forwarder.lock:
                        if not self._releasable(tenant, hold):
                            return  # cut or paused again: the hold stays where it is
                        await forwarder.forward(forwards)
                        routes.replayed(tenant, read_to)
                    continue
                async with forwarder.lock:
                    while self._releasable(tenant, hold) and hold.offset < position[partition]:
                        forwards, read_to = await self._reread(consumer, tp, tenant, hold)
                        await forwarder.forward(forwards)
                        routes.replayed(tenant, read_to)
                    if not self._releasable(tenant, hold):
                        return
                    routes.end_hold(tenant)
                await self.states.publish(tenant, time.time())  # the hold's end
                return
        finally:
            await consumer.stop()

    def _releasable(self, tenant: str, hold: Hold) -> bool:
        """True while `hold` is the tenant's and may go: its partition still read here, no cut
        started, not paused again."""
        routes = self.forwarder.routes
        return (
            routes.hold_of(tenant) is hold
            and hold.partition in self.reader.position
            and not routes.cutting(tenant)
            and not self.forwarder.paused(tenant)
        )

    async def _reread(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, tenant: str, hold: Hold
    ) -> tuple[list[OutgoingRecord], int]:
        """The next batch of the hold's records up to where the read loop is, as forwards, and
        the offset after the batch."""
        until = self.reader.position[tp.partition]
        fetched: list[ConsumerRecord[bytes, bytes]] = []
        while not fetched:
            batches = await consumer.getmany(
                tp, timeout_ms=FETCH_TIMEOUT_MS, max_records=READ_BATCH_MAX
            )
            fetched = batches.get(tp, [])
        if fetched[0].offset > hold.offset:
            log.error(
                "held records of tenant %s at ingress %d:%d-%d are past retention: lost",
                tenant,
                tp.partition,
                hold.offset,
                min(fetched[0].offset, until) - 1,
            )
        messages = [m for m in fetched if m.offset < until]
        read_to = messages[-1].offset + 1 if messages else until
        if len(messages) < len(fetched):
            consumer.seek(tp, read_to)  # what was fetched beyond is the read loop's, or later
        key = tenant.encode()
        reforwarded = self.forwarder.reforwarded
        forwards = [
            self.forwarder.forward_record(tenant, ingress_record(m))
            for m in messages
            if m.key == key and not reforwarded.contains(m.partition, m.offset)
        ]
        return forwards, read_to
