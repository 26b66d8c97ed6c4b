"""What a router recovers from Kafka when it takes ingress partitions, not knowing what it (or
the previous owner) forwarded before.

- Drains: the tenants of those partitions may have records in their shared-lane partition and
  in the dedicated lanes up to the lanes' current ends. Every cut waits until the lanes'
  groups are past those ends, so a pin or demotion right after a restart keeps per-tenant
  order.
- Forwards: each ingress commit's metadata names where in each lane the forwards of the
  records after it start (`streams.cutover.LaneMarks`). The lanes are scanned from there to
  their ends; the ingress offsets found (the records' origin header) are not forwarded again.
  Without metadata (or readable commits) nothing is skipped: a re-forward, never a loss.
"""

from __future__ import annotations

import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.lanes.forwarding import Forwarder
from agents.lanes.offsets import LaneOffsets
from agents.state.tenant_state import TenantStateMirror
from streams.cutover import LanePartition
from streams.processing import lane_record_origin
from streams.route_records import lane_marks

log = logging.getLogger(__name__)

SCAN_TIMEOUT_S = 10.0
FETCH_TIMEOUT_MS = 100
SCAN_FETCH_BYTES = 4 * 1024 * 1024


class Recovery:
    """Recovers the drains and the forwards of newly owned ingress partitions."""

    def __init__(
        self, forwarder: Forwarder, offsets: LaneOffsets, tenant_states: TenantStateMirror
    ) -> None:
        self.forwarder = forwarder
        self.offsets = offsets
        self.mirror = tenant_states
        self.app = forwarder.app
        self.topics = forwarder.topics

    async def recover(self, partitions: set[int]) -> None:
        """Both recoveries, for the tenants of `partitions` (their states adopted already)."""
        if partitions:
            ends = await self.drains(partitions)
            await self.forwards(partitions, ends)

    async def drains(self, partitions: set[int]) -> dict[LanePartition, int]:
        """Read the ends of the lanes the tenants of `partitions` may have records in, and make
        every cut wait for them; returns the ends."""
        forwarder = self.forwarder
        lane_partitions = [(self.topics.shared_lane, p) for p in sorted(partitions)] + [
            (self.topics.dedicated_lanes, lane) for lane in range(forwarder.dedicated_lanes)
        ]
        ends = await self.offsets.lane_ends(lane_partitions)
        forwarder.routes.lane_ends(ends)
        for lane_partition, end in ends.items():
            forwarder.marks.written(lane_partition, end)
        pinned = forwarder.registry.directory.pinned()
        restored = {*self.mirror.states, *forwarder.routes.tenants(), *pinned}
        for tenant in restored:
            if forwarder.partition_of(tenant) in partitions:
                forwarder.routes.expect_drain(tenant, forwarder.lanes_of(tenant))
        return ends

    async def forwards(self, partitions: set[int], ends: dict[LanePartition, int]) -> None:
        """Find the records of `partitions` forwarded but not committed before a crash, and note
        them in `Forwarder.reforwarded`."""
        ingress = self.topics.ingress
        tps = [TopicPartition(ingress, p) for p in sorted(partitions)]
        try:
            commits = await self.offsets.group_commits(self.app.laneway.router_group, tps)
        except Exception as error:
            log.warning("ingress commits unreadable, may forward again: %s", type(error).__name__)
            return
        starts: dict[LanePartition, int] = {}
        for meta in commits.values():
            for lane_partition, offset in lane_marks(meta.metadata).items():
                if lane_partition in ends:
                    starts[lane_partition] = min(offset, starts.get(lane_partition, offset))
        ranges = {lp: (start, ends[lp]) for lp, start in starts.items() if start < ends[lp]}
        if not ranges:
            return
        found = await self._scan_origins(ranges)
        for partition in partitions:
            self.forwarder.reforwarded.found(partition, found.get(partition, ()))
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
            max_partition_fetch_bytes=max(settings.max_fetch_bytes, SCAN_FETCH_BYTES),
        )
        await consumer.start()
        found: dict[int, set[int]] = {}
        try:
            left = {TopicPartition(*lp): end for lp, (_, end) in ranges.items()}
            consumer.assign(list(left))
            for lp, (start, _) in ranges.items():
                consumer.seek(TopicPartition(*lp), start)
            deadline = time.monotonic() + SCAN_TIMEOUT_S
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
