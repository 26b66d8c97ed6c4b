"""The router's ingress: which partitions it reads, the read loop's passes, and the commits.

- Co-partitioned state: the router reads exactly the ingress partitions whose shared-lane
  partitions Faust assigned to this worker, so the worker that processes a tenant's shared lane
  also measures and routes it. On taking partitions it adopts their tenants' persisted states
  (`RouteStates.restore`) and recovers drains and forwards from Kafka (`Recovery`).
- A plain aiokafka consumer takes records in batches (~10 µs each) rather than a Faust agent
  (~130 µs of Faust machinery per event, measured): the shared worker reads every ingress
  record, the flood included. Each pass forwards its records in one record batch per lane
  partition.
- Ingress is committed after Kafka acknowledged the forwards, never past a hold that is not
  persisted (`TenantRoutes.commit_offsets`): a crash re-forwards (same idempotency keys),
  never loses. Each commit's metadata names where the forwards of the records after it start
  in each lane (`LaneMarks`), for the next owner's `Recovery.forwards`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from agents.lanes.forwarding import Forwarder
from agents.lanes.recovery import Recovery
from agents.lanes.state import RouteStates
from agents.state.tenant_state import TenantStateMirror
from streams.app import FETCH_MAX_WAIT_MS, FETCH_MIN_BYTES
from streams.processing import IngressRecord, OutgoingRecord, incarnation_of
from streams.route_records import marks_metadata

log = logging.getLogger(__name__)

COMMIT_EVERY_S = 0.5
RESTORE_TIMEOUT_S = 10.0
FETCH_TIMEOUT_MS = 100
# Records per pass: one produce request per pass, and fewer, larger requests cost less CPU
# (measured in `make bench-isolation`: 100 records per pass raised the quiet tenants' burst p99
# from ~105 to 144 ms).
READ_BATCH_MAX = 1000
ROUTER_FETCH_BYTES = 4 * 1024 * 1024


class IngressReader:
    """Reads, routes and commits the ingress partitions this router owns."""

    def __init__(
        self,
        forwarder: Forwarder,
        states: RouteStates,
        recovery: Recovery,
        tenant_states: TenantStateMirror,
    ) -> None:
        self.forwarder = forwarder
        self.states = states
        self.recovery = recovery
        self.mirror = tenant_states
        self.app = forwarder.app
        self.owned: set[int] = set()
        # ingress partition -> the next offset the read loop handles: where a replay ends
        self.position: dict[int, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._last_commit = 0.0

    async def start(self) -> None:
        settings = self.app.laneway
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            group_id=settings.router_group,  # offsets only: partitions follow Faust's
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # a new deployment reads all retained ingress
            # Fetch sizes past the size contract's minimum: fewer, larger fetches cost less CPU.
            max_partition_fetch_bytes=max(settings.max_fetch_bytes, ROUTER_FETCH_BYTES),
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            fetch_min_bytes=FETCH_MIN_BYTES,
        )
        await self._consumer.start()

    async def stop(self) -> None:
        """The last commit, then the consumer."""
        async with self.forwarder.lock:
            await self.commit(force=True)
        if self._consumer is not None:
            await self._consumer.stop()

    async def read_once(self) -> None:
        """One pass: fetch a batch of the owned partitions, route it, forward, commit."""
        assert self._consumer is not None
        batches = await self._consumer.getmany(
            timeout_ms=FETCH_TIMEOUT_MS, max_records=READ_BATCH_MAX
        )
        forwarder = self.forwarder
        async with forwarder.lock:
            now = time.time()
            forwards: list[OutgoingRecord] = []
            read_to: dict[int, int] = {}
            for tp, messages in batches.items():
                if tp.partition not in self.owned:
                    continue  # revoked while fetched
                forwarder.marks.read(tp.partition, messages[0].offset)
                for message in messages:
                    if forwarder.reforwarded.contains(message.partition, message.offset):
                        continue
                    destination = forwarder.route_contained(ingress_record(message), now)
                    if destination is not None:
                        forwards.append(destination)
                read_to[tp.partition] = messages[-1].offset + 1
            await forwarder.forward(forwards)
            forwarder.routes.advance(read_to)
            self.position.update(read_to)
            await self.commit()

    async def take_partitions(
        self, wanted: set[int], stop_replays: Callable[[set[int]], Awaitable[None]]
    ) -> None:
        """Follow Faust's assignment of the shared lane: read the same ingress partitions.
        `stop_replays` ends the replays of the partitions dropped."""
        assert self._consumer is not None
        forwarder = self.forwarder
        dropped = self.owned - wanted
        for partition in dropped:  # no replay starts there any more
            self.position.pop(partition, None)
        await stop_replays(dropped)
        async with forwarder.lock:
            await self.commit(force=True)
            added = wanted - self.owned
            known = {*forwarder.routes.tenants(), *self.states.tenants(), *forwarder.active}
            for tenant in [t for t in known if forwarder.partition_of(t) in dropped]:
                forwarder.forget(tenant)
                self.states.forget(tenant)
            forwarder.routes.drop_partitions(dropped)
            forwarder.marks.drop(dropped)
            forwarder.reforwarded.drop(dropped)
            self.owned = set(wanted)
            ingress = self.app.topic_names.ingress
            self._consumer.assign([TopicPartition(ingress, p) for p in sorted(self.owned)])
            # The previous owner persisted its holds before it committed past them: read all of
            # its state before adopting it.
            await self.mirror.caught_up(timeout_s=RESTORE_TIMEOUT_S)
            self.states.restore(added, time.time())
            await self.recovery.recover(added)
            for partition in added:
                tp = TopicPartition(ingress, partition)
                self.position[partition] = await self._consumer.position(tp)
            log.info("router reads ingress partitions %s", sorted(self.owned))

    async def commit(self, force: bool = False) -> None:
        """Commit each owned partition as far as `TenantRoutes.commit_offsets` allows."""
        now = time.monotonic()
        if self._consumer is None or not (force or now - self._last_commit >= COMMIT_EVERY_S):
            return
        self._last_commit = now
        routes, marks = self.forwarder.routes, self.forwarder.marks
        offsets = routes.commit_offsets()
        if not offsets:
            return
        ingress = self.app.topic_names.ingress
        commits = {
            TopicPartition(ingress, p): (o, marks_metadata(marks.at(p, o)))
            for p, o in offsets.items()
        }
        try:
            await self._consumer.commit(commits)
        except Exception as error:  # the next commit covers it; a crash meanwhile re-forwards
            log.warning("ingress offsets not committed: %s", type(error).__name__)
            return
        routes.committed(offsets)


def ingress_record(message: ConsumerRecord[bytes, bytes]) -> IngressRecord:
    return IngressRecord(
        message.key,
        message.value,
        message.topic,
        message.partition,
        message.offset,
        message.timestamp,
        incarnation_of(message.headers),
    )
