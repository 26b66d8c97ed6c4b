"""The DLQ records of this router's tenants in dedicated lanes, into their volume windows
(`streams.lane_dlq`): the lane worker processes them in another process, so the router counts
the growth of their DLQ topics, once a second and at the completion of each cut into or out of
a dedicated lane."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import TopicPartition

from agents.lanes.forwarding import Forwarder
from agents.lanes.offsets import LaneOffsets
from streams.lane_dlq import LaneDlqCounts
from streams.lanes import LaneMove

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 2.0
# At a cut's completion the read holds the forwarding lock (the read loop waits): kept short.
MOVED_READ_TIMEOUT_S = 1.0


class LaneDlq:
    """Counts the lane workers' DLQ records of this router's tenants."""

    def __init__(self, forwarder: Forwarder, offsets: LaneOffsets) -> None:
        self.forwarder = forwarder
        self.offsets = offsets
        self.counts = LaneDlqCounts()

    async def count(self, now: float) -> None:
        """Count the DLQ growth of every tenant in a dedicated lane since the last call."""
        lanes = self.forwarder.lanes
        tenants = self.counts.watch(t for t in lanes.placed() if lanes.lane_of(t) is not None)
        if not tenants:
            return
        try:
            ends = await asyncio.wait_for(self._ends(tenants), READ_TIMEOUT_S)
        except Exception as error:  # Kafka away: counted at the next read
            log.debug("DLQ end offsets unavailable: %s", type(error).__name__)
            return
        for tenant, added in self.counts.counted(ends).items():
            self.forwarder.volumes.record_dlq(tenant, now, added)

    async def moved(self, moves: Sequence[LaneMove], now: float) -> None:
        """Cuts just completed, under the forwarding lock: no record of these tenants has
        reached its new lane yet, and the lane left has emitted all of them. Bound each count
        there."""
        entering = [m.tenant for m in moves if m.from_lane is None and m.to_lane is not None]
        leaving = [m.tenant for m in moves if m.from_lane is not None and m.to_lane is None]
        if not entering and not leaving:
            return
        try:
            ends = await asyncio.wait_for(self._ends(entering + leaving), MOVED_READ_TIMEOUT_S)
        except Exception as error:  # entering: counted from its first read; leaving: lost
            log.warning("DLQ end offsets unavailable at a lane move: %s", type(error).__name__)
            ends = {}
        for tenant in entering:
            if tenant in ends:
                self.counts.start(tenant, ends[tenant])
        for tenant in leaving:
            added = self.counts.stop(tenant, ends.get(tenant))
            if added:
                self.forwarder.volumes.record_dlq(tenant, now, added)

    async def _ends(self, tenants: Sequence[str]) -> dict[str, int]:
        """tenant -> its DLQ topic's end offset; 0 while it has no DLQ topic (one may come
        with its first reject)."""
        names = {self.forwarder.topics.dlq(tenant): tenant for tenant in tenants}
        present = await self.offsets.existing(list(names))
        ends = {tenant: 0 for name, tenant in names.items() if name not in present}
        if present:
            partitions = {TopicPartition(name, 0): names[name] for name in present}
            found = await self.offsets.end_offsets(list(partitions))
            ends.update((partitions[tp], end) for tp, end in found.items())
        return ends
