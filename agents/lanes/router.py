"""The router: reads the tenant-keyed ingress, measures every tenant, forwards each record to its
tenant's lane.

Its per-record cost is what keeps a flooding tenant from slowing everyone else: the shared worker
reads every ingress record, the flood included. So the router is a plain aiokafka consumer that
takes records in batches (~10 µs each) rather than a Faust agent (~130 µs of Faust machinery per
event, measured), and forwards them in one record batch per lane partition. The processing of
each lane is a Faust agent (`agents.lanes.processor`), the same code for every lane.

- Records of tenants in the shared lane go to `laneway.lane.shared`, same partition as in
  ingress; those of promoted tenants go to partition N of `laneway.lane.dedicated` (lane N),
  read by the lane workers. The ingress origin travels in a header: events keep their `ref`
  and idempotency key.
- Co-partitioned state: the router reads exactly the ingress partitions whose shared-lane
  partitions Faust assigned to this worker, so the worker that processes a tenant's shared lane
  also measures and routes it.
- Hot path (`route`): a dict lookup and a few additions per record, no I/O, no table write.
  Volumes count by the record's ingress timestamp, so a backlog read late (after a restart)
  is not mistaken for a flood.
- Twice a second `_evaluate` applies the lane policy; once a second `_persist` publishes each
  active tenant's state (volume windows, lane, recent moves) to the compacted tenant-state topic
  that every worker mirrors.
- Every move is a cut (invariant 2, drain first): from the decision on, the tenant's new records
  are held until the consumer group of the lane it leaves has committed past the last record
  forwarded there, i.e. emitted all of the tenant's earlier messages. Then the move is applied
  and the held records go, in order, to the new lane. Other tenants are never held.
  A move out of a dedicated lane is decided only once that lane is within one batch of done
  with the tenant (the lane worker drains at a bounded rate): the cut then holds records for a
  moment, not for the whole backlog.
- A paused tenant's records are held the same way, while ingest refuses the tenant anything new
  (AR / 503), until it is resumed.
- A hold waits in Kafka, never in memory: it is one ingress offset. The read loop counts a held
  tenant's records and skips them; the hold is persisted in the tenant's state document
  (acks=all) before the ingress commit may pass it. Released (cut complete, or resumed), a
  replay with a consumer of its own re-reads the tenant's partition from that offset, forwards
  its records in order, moves the hold on as Kafka acknowledges (persisted each second, so a
  crash resumes there), and ends it under the forwarding lock once it has caught up with the
  read loop. Ingress is committed after Kafka acknowledged the forwards: a crash re-forwards
  (same idempotency keys), never loses.
- Restarts and rebalances: on taking ingress partitions the router adopts its tenants' persisted
  lanes, cuts and holds, and, not knowing what it forwarded before, reads the end offsets of
  their shared-lane partitions and of the dedicated lanes: a cut then also waits until those
  lanes' groups are past them, so a pin or demotion right after a restart keeps per-tenant
  order.
- No forward twice: each ingress commit's metadata names where in each lane this router's
  forwards of the uncommitted records start (`streams.cutover.LaneMarks`). The next router to
  read the partition scans the lanes from there to their ends, notes the ingress offsets of
  the records found (their origin header) and skips those when it re-reads them. Only what a
  replay forwarded since its progress was last persisted may be forwarded again.
- That bookkeeping (what is held, how far ingress may be committed, which cuts are complete,
  what a release forwards) is pure code with unit tests: `streams.cutover.TenantRoutes`, one
  `TenantRoute` per tenant. The router does the I/O and the timing: it reads and commits
  ingress, asks the lane policy (`streams.lanes`), looks up the lanes' committed offsets,
  forwards, and publishes tenant state.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions
from aiokafka.partitioner import DefaultPartitioner
from mode import Service

from agents.state.publisher import BatchPublisher
from agents.state.registry import TenantRegistry
from agents.state.tenant_state import TenantStateMirror
from streams.app import FETCH_MAX_WAIT_MS, FETCH_MIN_BYTES, LanewayApp
from streams.cutover import (
    Hold,
    LaneMarks,
    LanePartition,
    LanePosition,
    Reforwarded,
    TenantRoutes,
)
from streams.lanes import LaneAssignments, LaneMove, LanePolicy, decide
from streams.processing import (
    INTERNAL_ERROR,
    IngressRecord,
    Origin,
    OutgoingRecord,
    forward_to_lane,
    incarnation_of,
    internal_error,
    lane_record_origin,
    park,
    tenant_of_key,
)
from streams.volume import TenantVolumes

log = logging.getLogger(__name__)

RECENT_MOVES_KEPT = 10
COMMIT_EVERY_S = 0.5
RELEASE_EVERY_S = 0.1
RESTORE_RETRY_S = 1.0
RESTORE_TIMEOUT_S = 10.0
FETCH_TIMEOUT_MS = 100
# Records per pass: one produce request per pass, and fewer, larger requests cost less CPU
# (measured in `make bench-isolation`: 100 records per pass raised the quiet tenants' burst p99
# from ~105 to 144 ms).
READ_BATCH_MAX = 1000
ROUTER_FETCH_BYTES = 4 * 1024 * 1024
# A replay takes the forwarding lock for its last stretch once at most this many records of the
# partition are left to re-read: the read loop waits for about one batch.
LAST_STRETCH = READ_BATCH_MAX


class Router(Service):
    """Volume windows, rate contracts and lane assignment of the tenants this worker owns."""

    def __init__(
        self,
        app: LanewayApp,
        registry: TenantRegistry,
        tenant_states: TenantStateMirror,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.registry = registry
        self.tenant_states = tenant_states
        settings = app.laneway
        self.topics = app.topic_names
        self.enabled = settings.lanes_enabled
        self.policy = LanePolicy(
            promote_factor=settings.promote_factor,
            promote_min_rate=settings.promote_min_rate,
            calm_factor=settings.calm_factor,
            hold_down_s=settings.hold_down_s,
            dedicated_lanes=settings.dedicated_lanes,
        )
        self.volumes = TenantVolumes()
        self.lanes = LaneAssignments(settings.dedicated_lanes)
        # Cuts, holds, the last forward per tenant and the ingress offsets safe to commit.
        self.routes = TenantRoutes(self.lanes)
        # Stored with each ingress commit, read back after a crash: no forward made twice.
        self.marks = LaneMarks()
        self.reforwarded = Reforwarded()
        self.moves: dict[str, deque[dict[str, Any]]] = {}
        self.publisher = BatchPublisher(app)
        self._partitioner = DefaultPartitioner()
        self._tenant_names: dict[bytes, str | None] = {}
        self._active: set[str] = set()
        self._wanted: set[int] | None = None  # ingress partitions to read, set by Faust's rebalance
        self._owned: set[int] = set()
        # ingress partition -> the next offset the read loop handles: where a replay ends
        self._position: dict[int, int] = {}
        self._replays: dict[int, asyncio.Task[None]] = {}  # ingress partition -> its replay
        self._last_commit = 0.0
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._forwarding = asyncio.Lock()  # the read loop and the release timer take turns
        self.ready = asyncio.Event()
        app.on_partitions_assigned.connect(self._on_faust_assignment)  # type: ignore[arg-type]  # mode's receiver type is narrower than what it calls

    async def on_start(self) -> None:
        settings = self.app.laneway
        lanes = self.topics.dedicated_lanes
        await self.app.declare(
            self.topics.ingress, self.topics.control, self.topics.shared_lane, lanes
        )
        self.publisher.declared(self.topics.shared_lane, lanes)
        self._admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
        await self._admin.start()
        await self._grow_dedicated_lanes()
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
        await self.tenant_states.ready.wait()
        self.ready.set()

    async def _grow_dedicated_lanes(self) -> None:
        """A deployment that raised LANEWAY_DEDICATED_LANES gets the new lanes' partitions
        (`declare` keeps an existing topic as it is). The router picks a lane's partition by
        number, not by the key's hash, so adding partitions moves no tenant."""
        assert self._admin is not None
        topic, wanted = self.topics.dedicated_lanes, self.app.laneway.dedicated_lanes
        [description] = await self._admin.describe_topics([topic])
        present = len(description["partitions"])
        if present < wanted:
            await self._admin.create_partitions({topic: NewPartitions(wanted)})
            log.info("dedicated lanes grown from %d to %d", present, wanted)

    async def on_stop(self) -> None:
        await self._stop_replays(list(self._replays))
        async with self._forwarding:
            await self._commit(force=True)
        if self._consumer is not None:
            await self._consumer.stop()
        if self._admin is not None:
            await self._admin.close()

    async def _on_faust_assignment(self, sender: Any, assigned: set[Any], **_: Any) -> None:
        # Only noted here: the read loop applies it, so a rebalance never waits on a forward.
        self._wanted = {tp.partition for tp in assigned if tp.topic == self.topics.shared_lane}

    # ---------------------------------------------------------------- the read loop

    @Service.task
    async def _read_ingress(self) -> None:
        await self.ready.wait()
        await self.registry.ready.wait()
        assert self._consumer is not None
        while not self.should_stop:
            if self._wanted is not None:
                await self._take_partitions(self._wanted)
            if not self._owned:
                await asyncio.sleep(FETCH_TIMEOUT_MS / 1000)
                continue
            batches = await self._consumer.getmany(
                timeout_ms=FETCH_TIMEOUT_MS, max_records=READ_BATCH_MAX
            )
            async with self._forwarding:
                now = time.time()
                forwards: list[OutgoingRecord] = []
                read_to: dict[int, int] = {}
                for tp, messages in batches.items():
                    if tp.partition not in self._owned:
                        continue  # revoked while fetched
                    self.marks.read(tp.partition, messages[0].offset)
                    for message in messages:
                        if self.reforwarded.contains(message.partition, message.offset):
                            continue
                        destination = self._route_contained(_ingress_record(message), now)
                        if destination is not None:
                            forwards.append(destination)
                    read_to[tp.partition] = messages[-1].offset + 1
                await self._forward(forwards)
                self.routes.advance(read_to)
                self._position.update(read_to)
                await self._commit()

    async def _take_partitions(self, wanted: set[int]) -> None:
        """Follow Faust's assignment of the shared lane: read the same ingress partitions."""
        assert self._consumer is not None
        self._wanted = None
        dropped = self._owned - wanted
        for partition in dropped:  # no replay starts there any more
            self._position.pop(partition, None)
        await self._stop_replays(dropped)
        async with self._forwarding:
            await self._commit(force=True)
            added = wanted - self._owned
            for tenant in [t for t in self._known_tenants() if self._partition_of(t) in dropped]:
                self._forget(tenant)
            self.routes.drop_partitions(dropped)
            self.marks.drop(dropped)
            self.reforwarded.drop(dropped)
            self._owned = set(wanted)
            ingress = self.topics.ingress
            self._consumer.assign([TopicPartition(ingress, p) for p in sorted(self._owned)])
            # The previous owner persisted its holds before it committed past them: read all of
            # its state before adopting it.
            await self.tenant_states.caught_up(timeout_s=RESTORE_TIMEOUT_S)
            self._restore(added)
            ends = await self._recover_drains(added)
            await self._recover_forwards(added, ends)
            for partition in added:
                tp = TopicPartition(ingress, partition)
                self._position[partition] = await self._consumer.position(tp)
            log.info("router reads ingress partitions %s", sorted(self._owned))

    def _restore(self, partitions: set[int]) -> None:
        """Adopt the persisted lane and windows of the tenants of newly owned partitions."""
        now = time.time()
        for tenant_id, document in self.tenant_states.states.items():
            if self._partition_of(tenant_id) not in partitions:
                continue
            if document.get("volume"):
                self.volumes.restore(tenant_id, document["volume"], now)
            lane = servable_lane(document.get("lane"), self.app.laneway.dedicated_lanes)
            if lane is None and document.get("lane") is not None:
                log.warning(
                    "tenant %s was in lane %r, which no lane worker reads now: shared lane",
                    tenant_id,
                    document.get("lane"),
                )
            if lane is not None:
                self.lanes.restore(tenant_id, lane, document.get("moved_at"))
            self.moves[tenant_id] = deque(document.get("moves", []), maxlen=RECENT_MOVES_KEPT)
            self._restore_waiting(tenant_id, document)

    def _restore_waiting(self, tenant: str, document: dict[str, Any]) -> None:
        """Adopt the persisted cut and hold of a tenant (their drain targets come after, in
        `_recover_drains`)."""
        hold = document.get("hold")
        if isinstance(hold, dict):
            self.routes.restore_hold(tenant, int(hold["partition"]), int(hold["offset"]))
        cut = document.get("cut")
        dedicated = self.app.laneway.dedicated_lanes
        if isinstance(cut, dict) and all(
            lane is None or servable_lane(lane, dedicated) is not None
            for lane in (cut["from"], cut["to"])
        ):
            self.routes.restore_cut(
                LaneMove(tenant, cut["from"], cut["to"], cut["reason"], float(cut["at"]))
            )

    async def _recover_drains(self, partitions: set[int]) -> dict[LanePartition, int]:
        """What this router forwarded before it took `partitions` is unknown: the tenants of
        those partitions may have records in their shared-lane partition and in their dedicated
        lane up to the lanes' current ends. Read the ends, and make every cut wait for them."""
        if not partitions:
            return {}
        settings = self.app.laneway
        lane_partitions = [(self.topics.shared_lane, p) for p in sorted(partitions)] + [
            (self.topics.dedicated_lanes, lane) for lane in range(settings.dedicated_lanes)
        ]
        ends = await self._end_offsets(lane_partitions)
        self.routes.lane_ends(ends)
        for lane_partition, end in ends.items():
            self.marks.written(lane_partition, end)
        directory = self.registry.directory
        restored = {*self.tenant_states.states, *self.routes.tenants(), *directory.pinned()}
        for tenant in restored:
            if self._partition_of(tenant) in partitions:
                self.routes.expect_drain(tenant, self._lanes_of(tenant))
        return ends

    async def _recover_forwards(self, partitions: set[int], ends: dict[LanePartition, int]) -> None:
        """Find the records of `partitions` forwarded but not committed before a crash: scan
        each lane partition from where the last ingress commit's metadata says those forwards
        start, up to its end, and note the ingress offsets found, which are not forwarded again.
        Without metadata (or readable commits) nothing is skipped: a re-forward, never a loss."""
        assert self._admin is not None
        ingress = self.topics.ingress
        tps = [TopicPartition(ingress, p) for p in sorted(partitions)]
        try:
            commits = await self._admin.list_consumer_group_offsets(
                self.app.laneway.router_group, partitions=tps
            )
        except Exception as error:
            log.warning("ingress commits unreadable, may forward again: %s", type(error).__name__)
            return
        starts: dict[LanePartition, int] = {}
        for meta in commits.values():
            for lane_partition, offset in _lane_marks(meta.metadata).items():
                if lane_partition in ends:
                    starts[lane_partition] = min(offset, starts.get(lane_partition, offset))
        ranges = {lp: (start, ends[lp]) for lp, start in starts.items() if start < ends[lp]}
        if not ranges:
            return
        found = await self._scan_origins(ranges)
        for partition in partitions:
            self.reforwarded.found(partition, found.get(partition, ()))
        total = sum(len(found.get(partition, ())) for partition in partitions)
        log.info("%d records forwarded before a restart are not forwarded again", total)

    async def _scan_origins(
        self, ranges: dict[LanePartition, tuple[int, int]]
    ) -> dict[int, set[int]]:
        """ingress partition -> the ingress offsets of the lane records in `ranges` (lane
        partition -> [start, end)) that came from this deployment's ingress."""
        settings = self.app.laneway
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=max(settings.max_fetch_bytes, ROUTER_FETCH_BYTES),
        )
        await consumer.start()
        found: dict[int, set[int]] = {}
        try:
            left = {TopicPartition(*lp): end for lp, (_, end) in ranges.items()}
            consumer.assign(list(left))
            for lp, (start, _) in ranges.items():
                consumer.seek(TopicPartition(*lp), start)
            deadline = time.monotonic() + RESTORE_TIMEOUT_S
            while left:
                if time.monotonic() > deadline:  # what is not found is forwarded again
                    log.warning("lane scan incomplete: %s", sorted(map(str, left)))
                    break
                batches = await consumer.getmany(*left, timeout_ms=FETCH_TIMEOUT_MS)
                for tp, messages in batches.items():
                    for message in messages:
                        origin = lane_record_origin(message.key, message.value, message.headers)
                        if origin is not None and origin.topic == self.topics.ingress:
                            found.setdefault(origin.partition, set()).add(origin.offset)
                    if messages and messages[-1].offset + 1 >= left.get(tp, 0):
                        left.pop(tp, None)
        finally:
            await consumer.stop()
        return found

    async def _end_offsets(self, lane_partitions: list[LanePartition]) -> dict[LanePartition, int]:
        """The lane partitions' end offsets; retried until Kafka answers: without them no cut
        could know what to wait for."""
        assert self._consumer is not None
        tps = [TopicPartition(topic, partition) for topic, partition in lane_partitions]
        while True:
            try:
                ends = await self._consumer.end_offsets(tps)
            except Exception as error:
                log.warning("lane end offsets unavailable: %s", type(error).__name__)
                await asyncio.sleep(RESTORE_RETRY_S)
                continue
            return {(tp.topic, tp.partition): offset for tp, offset in ends.items()}

    def _lanes_of(self, tenant: str) -> list[LanePartition]:
        """The lane partitions the tenant may have records in: its shared-lane partition, its
        dedicated lane, and the lanes of a cut in progress."""
        dedicated = {self.lanes.lane_of(tenant)}
        cut = self.routes.cut_of(tenant)
        if cut is not None:
            dedicated |= {cut.from_lane, cut.to_lane}
        shared = (self.topics.shared_lane, self._partition_of(tenant))
        lanes = sorted(lane for lane in dedicated if lane is not None)
        return [shared, *((self.topics.dedicated_lanes, lane) for lane in lanes)]

    def _forget(self, tenant: str) -> None:
        self.volumes.forget(tenant)
        self.routes.forget(tenant)
        self.moves.pop(tenant, None)
        self._active.discard(tenant)

    def _known_tenants(self) -> set[str]:
        return {*self.routes.tenants(), *self.moves, *self._active}

    def _partition_of(self, tenant: str) -> int:
        partitions = list(range(self.app.laneway.ingress_partitions))
        return self._partitioner(tenant.encode(), partitions, partitions)

    # ---------------------------------------------------------------- hot path

    def _route_contained(self, record: IngressRecord, now: float) -> OutgoingRecord | None:
        """`route`, but a record it cannot route (a bug) goes to the unrouted DLQ, counted,
        and the partition moves on."""
        try:
            return self.route(record, now)
        except Exception as error:
            log.error("routing an ingress record failed (%s): parked", type(error).__name__)
            self.app.dlq_reasons[INTERNAL_ERROR] += 1
            error_code = internal_error(error)
            settings = self.app.laneway
            return park(
                Origin(record), self.topics, error_code, settings.max_value_bytes, unrouted=True
            )

    def route(self, record: IngressRecord, now: float) -> OutgoingRecord | None:
        """Count the record for its tenant and return its forward, or None when it is held
        because the tenant is being cut over to another lane or is paused."""
        key = record.key or b""
        tenant = self._tenant_names.get(key, "")
        if tenant == "":
            tenant = self._tenant_names[key] = tenant_of_key(key)
        if tenant is not None:  # not a tenant: the shared lane DLQs it
            sent_at = min(record.timestamp_ms / 1000, now)
            self.volumes.record(tenant, sent_at, len(record.value or b""))
            self._active.add(tenant)
            if self.routes.hold(tenant, record, paused=self._paused(tenant)):
                return None
        return self._forward_record(tenant, record)

    def _paused(self, tenant: str) -> bool:
        config = self.registry.directory.get(tenant)
        return config is not None and config.paused

    def _forward_record(self, tenant: str | None, record: IngressRecord) -> OutgoingRecord:
        lane = self.lanes.lane_of(tenant) if tenant is not None and self.enabled else None
        lane = servable_lane(lane, self.app.laneway.dedicated_lanes)
        if lane is None:
            return forward_to_lane(record, self.topics.shared_lane, record.partition)
        return forward_to_lane(record, self.topics.dedicated_lanes, lane)

    async def _forward(self, forwards: list[OutgoingRecord]) -> None:
        if not forwards:
            return
        last_offsets = await self.publisher.publish(forwards)
        for forward in forwards:
            tenant = self._tenant_names.get(forward.key)
            destination = (forward.topic, forward.partition)
            if not forward.is_dlq and destination in last_offsets:
                self.marks.written(destination, last_offsets[destination] + 1)
            # A record parked in a DLQ (by the router or, refused, by the publisher) is nothing
            # for a lane to drain.
            if tenant and not forward.is_dlq and destination in last_offsets:
                self.routes.forwarded(tenant, LanePosition(*destination, last_offsets[destination]))

    async def _commit(self, force: bool = False) -> None:
        """Commit each owned partition as far as `TenantRoutes.commit_offsets` allows."""
        now = time.monotonic()
        if self._consumer is None or not (force or now - self._last_commit >= COMMIT_EVERY_S):
            return
        self._last_commit = now
        offsets = self.routes.commit_offsets()
        if not offsets:
            return
        ingress = self.topics.ingress
        commits = {
            TopicPartition(ingress, p): (o, _marks_metadata(self.marks.at(p, o)))
            for p, o in offsets.items()
        }
        try:
            await self._consumer.commit(commits)
        except Exception as error:  # the next commit covers it; a crash meanwhile re-forwards
            log.warning("ingress offsets not committed: %s", type(error).__name__)
            return
        self.routes.committed(offsets)

    @Service.timer(RELEASE_EVERY_S)
    async def _release_held(self) -> None:
        """Start a replay for each hold that may go now (its cut complete, or its tenant
        resumed): one at a time per ingress partition."""
        for tenant, hold in self.routes.releasable(self._paused):
            partition = hold.partition
            if partition in self._replays or partition not in self._position:
                continue
            task = asyncio.create_task(self._replay(tenant, partition))
            self._replays[partition] = task
            task.add_done_callback(functools.partial(self._replay_done, partition))

    def _replay_done(self, partition: int, task: asyncio.Task[None]) -> None:
        if self._replays.get(partition) is task:
            del self._replays[partition]
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            log.error("replay of held records failed (%s): retried", type(error).__name__)

    async def _stop_replays(self, partitions: Iterable[int]) -> None:
        tasks = [task for p in partitions if (task := self._replays.get(p)) is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _replay(self, tenant: str, partition: int) -> None:
        """Forward a released hold: re-read the tenant's ingress partition from the hold's
        offset with a consumer of its own (no group), forward that tenant's records in order to
        its lane, and move the hold on as Kafka acknowledges them (persisted each second, so a
        crash resumes here). The last stretch, up to where the read loop is, runs under the
        forwarding lock; then the hold ends and the read loop forwards the tenant again."""
        settings = self.app.laneway
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # past retention: what is left (docs/limits.md)
            max_partition_fetch_bytes=max(settings.max_fetch_bytes, ROUTER_FETCH_BYTES),
        )
        await consumer.start()
        try:
            tp = TopicPartition(self.topics.ingress, partition)
            consumer.assign([tp])
            hold = self.routes.hold_of(tenant)
            if hold is None:
                return
            consumer.seek(tp, hold.offset)
            first = True  # the first fetch may take a while: never under the lock
            while self._releasable(tenant, hold):
                left = self._position[partition] - hold.offset
                if left > LAST_STRETCH or (first and left > 0):
                    first = False
                    forwards, read_to = await self._reread(consumer, tp, tenant, hold)
                    async with self._forwarding:
                        if not self._releasable(tenant, hold):
                            return  # cut or paused again: the hold stays where it is
                        await self._forward(forwards)
                        self.routes.replayed(tenant, read_to)
                    continue
                async with self._forwarding:
                    while (
                        self._releasable(tenant, hold) and hold.offset < self._position[partition]
                    ):
                        forwards, read_to = await self._reread(consumer, tp, tenant, hold)
                        await self._forward(forwards)
                        self.routes.replayed(tenant, read_to)
                    if not self._releasable(tenant, hold):
                        return
                    self.routes.end_hold(tenant)
                await self._publish_state(tenant, time.time())  # the hold's end
                return
        finally:
            await consumer.stop()

    def _releasable(self, tenant: str, hold: Hold) -> bool:
        """True while `hold` is the tenant's and may go: its partition still read here, no cut
        started, not paused again."""
        return (
            self.routes.hold_of(tenant) is hold
            and hold.partition in self._position
            and not self.routes.cutting(tenant)
            and not self._paused(tenant)
        )

    async def _reread(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, tenant: str, hold: Hold
    ) -> tuple[list[OutgoingRecord], int]:
        """The next batch of the hold's records up to where the read loop is, as forwards, and
        the offset after the batch."""
        until = self._position[tp.partition]
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
        forwards = [
            self._forward_record(tenant, _ingress_record(m))
            for m in messages
            if m.key == key and not self.reforwarded.contains(m.partition, m.offset)
        ]
        return forwards, read_to

    def count_dlq(self, keys: Iterable[bytes]) -> None:
        now = time.time()
        for key in keys:
            tenant = self._tenant_names.get(key)
            if tenant:
                self.volumes.record_dlq(tenant, now)

    # ---------------------------------------------------------------- decisions

    @Service.timer(0.5)
    async def _evaluate(self) -> None:
        if not self.enabled:
            return
        try:
            await self._evaluate_lanes(time.time())
        except Exception:  # a bug here must not stop the worker: lanes stay as they are
            log.exception("lane evaluation failed")

    async def _evaluate_lanes(self, now: float) -> None:
        if self.routes.cuts():
            await self._complete_cuts()
        # Pinned tenants too: a pin takes effect even while the tenant sends nothing.
        known = self._active | set(self.lanes.placed()) | self.registry.directory.pinned()
        candidates = [
            tenant
            for tenant in known
            if not self.routes.cutting(tenant) and self._partition_of(tenant) in self._owned
        ]
        # A tenant leaves a dedicated lane only once that lane has (nearly) caught up with it,
        # so the cut holds its new records for a moment, not for the whole backlog's drain.
        in_lanes = [tenant for tenant in candidates if self.lanes.lane_of(tenant) is not None]
        commits = await self._lane_commits_for(in_lanes)
        caught_up = self.routes.drained(in_lanes, commits, slack=self.app.laneway.batch_max)
        for tenant in candidates:
            move = self._decision(tenant, now, lane_caught_up=tenant in caught_up)
            if move is not None:
                self.routes.start_cut(move, may_be_in=self._lanes_of(tenant))
        if self.routes.cuts():
            await self._complete_cuts()  # a tenant with nothing left in its old lane moves now

    async def _complete_cuts(self) -> None:
        commits = await self._lane_commits_for(self.routes.cuts())
        # Under the lock: a forward in flight has updated the tenant's last position when Kafka
        # acknowledged it, so a cut cannot complete before it.
        async with self._forwarding:
            moves = self.routes.complete_cuts(commits)
        for move in moves:  # all made: note each before publishing, which may fail
            self._note(move)
        for move in moves:
            await self._announce(move)

    def _decision(self, tenant: str, now: float, lane_caught_up: bool) -> LaneMove | None:
        record = self.registry.directory.get(tenant)
        settings = self.app.laneway
        contract = record.rate_per_s if record is not None else settings.default_rate_per_s
        if record is not None:
            pinned_lane = record.lane.dedicated_lane if record.lane.pinned == "dedicated" else None
            self.lanes.pin(tenant, record.lane.pinned, pinned_lane)
        snapshot = self.volumes.snapshot(tenant, now)
        return decide(
            self.lanes.assignment(tenant),
            recent_rate=self.volumes.recent_rate(tenant, now),
            rate_10s=snapshot.rate_10s,
            contract_rate=contract,
            now=now,
            backlog_empty=lane_caught_up,  # the rest of the drain is the cut's job
            lane_loads=self.lanes.loads(),
            policy=self.policy,
        )

    def _note(self, move: LaneMove) -> None:
        """Add a move made to the tenant's recent moves, and log it."""
        self.moves.setdefault(move.tenant, deque(maxlen=RECENT_MOVES_KEPT)).append(_entry(move))
        log.info(
            "tenant %s moved from lane %s to %s (%s)",
            move.tenant,
            move.from_lane,
            move.to_lane,
            move.reason,
        )

    async def _announce(self, move: LaneMove) -> None:
        """Publish a move made on the control topic, and the tenant's new state."""
        tenant = move.tenant
        await self.app.producer.send(
            self.topics.control, tenant.encode(), orjson.dumps(_entry(move)), None, None, None
        )
        await self.tenant_states.publish(tenant, self.state_document(tenant, time.time()))

    async def _lane_commits_for(self, tenants: Iterable[str]) -> dict[LanePartition, int]:
        """The lane commits `TenantRoutes.drained` needs for these tenants."""
        partitions = self.routes.lane_partitions(tenants)
        return await self._lane_commits(partitions) if partitions else {}

    async def _lane_commits(self, partitions: Iterable[LanePartition]) -> dict[LanePartition, int]:
        """(lane topic, partition) -> the committed offset (the next record its worker reads)
        of the consumer group that processes that lane."""
        assert self._admin is not None
        settings = self.app.laneway
        by_group: dict[str, set[TopicPartition]] = {}
        for topic, partition in partitions:
            shared = topic == self.topics.shared_lane
            group = settings.app_id if shared else settings.lane_worker_app_id
            by_group.setdefault(group, set()).add(TopicPartition(topic, partition))
        committed: dict[LanePartition, int] = {}
        for group, group_partitions in by_group.items():
            try:
                offsets = await self._admin.list_consumer_group_offsets(
                    group, partitions=sorted(group_partitions)
                )
            except Exception as error:  # no commit yet, or broker busy: nothing counts as drained
                log.debug("lane offsets unavailable: %s", type(error).__name__)
                continue
            for tp, meta in offsets.items():
                if meta.offset >= 0:
                    committed[tp.topic, tp.partition] = meta.offset
        return committed

    # ---------------------------------------------------------------- state

    @Service.timer(1.0)
    async def _persist(self) -> None:
        now = time.time()
        active, self._active = self._active, set()
        tenants = active | set(self.lanes.placed()) | set(self.routes.waiting())
        # Together, so one producer batch carries them: one at a time, 1,000 tenants took 90 s.
        outcomes = await asyncio.gather(
            *(self._publish_state(tenant, now) for tenant in tenants), return_exceptions=True
        )
        for error in {type(o).__name__ for o in outcomes if isinstance(o, Exception)}:
            log.warning("tenant state not published: %s", error)  # the next second's supersedes

    async def _publish_state(self, tenant: str, now: float) -> None:
        """Publish the tenant's state (acks=all); once acknowledged, the ingress commit may
        pass the hold it names."""
        hold = self.routes.hold_of(tenant)
        document = self.state_document(tenant, now)
        await self.tenant_states.publish(tenant, document)
        if hold is not None:
            self.routes.persisted(tenant, hold, document["hold"]["offset"])

    def state_document(self, tenant: str, now: float) -> dict[str, Any]:
        snapshot = self.volumes.snapshot(tenant, now)
        lane = self.lanes.lane_of(tenant)
        return {
            "tenant": tenant,
            "lane": lane,
            "moved_at": self.lanes.assignment(tenant).moved_at,
            "moves": list(self.moves.get(tenant, ())),
            "volume": self.volumes.state(tenant),
            "rates": snapshot.as_dict(),
            "updated_at": now,
            # A cut in progress and a hold: what a restart (or the next owner) resumes.
            "cut": _cut_entry(self.routes.cut_of(tenant)),
            "hold": _hold_entry(self.routes.hold_of(tenant)),
        }


def _ingress_record(message: ConsumerRecord[bytes, bytes]) -> IngressRecord:
    return IngressRecord(
        message.key,
        message.value,
        message.topic,
        message.partition,
        message.offset,
        message.timestamp,
        incarnation_of(message.headers),
    )


def servable_lane(lane: object, dedicated_lanes: int) -> int | None:
    """`lane` if a lane worker reads it (0 <= lane < dedicated_lanes), else None: the shared
    lane. A lane index restored from state written with more lanes would reach no one."""
    if isinstance(lane, int) and not isinstance(lane, bool) and 0 <= lane < dedicated_lanes:
        return lane
    return None


def _entry(move: LaneMove) -> dict[str, Any]:
    """A move as the control topic and the tenant's recent moves show it."""
    return {
        "tenant": move.tenant,
        "from": move.from_lane,
        "to": move.to_lane,
        "reason": move.reason,
        "at": _iso(move.at),
    }


def _marks_metadata(marks: dict[LanePartition, int]) -> str:
    """An ingress commit's metadata: where this router's later forwards start in each lane."""
    return orjson.dumps(
        {f"{topic}|{partition}": o for (topic, partition), o in marks.items()}
    ).decode()


def _lane_marks(metadata: str | None) -> dict[LanePartition, int]:
    """`_marks_metadata` read back; {} for a commit without (or with unreadable) metadata."""
    try:
        marks = orjson.loads(metadata or "{}")
        parsed = {}
        for key, offset in marks.items():
            topic, partition = key.rsplit("|", 1)
            parsed[topic, int(partition)] = int(offset)
    except (ValueError, AttributeError):
        return {}
    return parsed


def _cut_entry(move: LaneMove | None) -> dict[str, Any] | None:
    if move is None:
        return None
    return {"from": move.from_lane, "to": move.to_lane, "reason": move.reason, "at": move.at}


def _hold_entry(hold: Hold | None) -> dict[str, int] | None:
    return None if hold is None else {"partition": hold.partition, "offset": hold.offset}


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")
