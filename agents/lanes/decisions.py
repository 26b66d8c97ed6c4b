"""Lane decisions and the completion of cuts.

Twice a second the router asks the lane policy (`streams.lanes.decide`) about every tenant it
owns that is active, placed or pinned. Every move is a cut (invariant 2, drain first): from the
decision on, the tenant's new records are held until the consumer group of the lane it leaves
has committed past the last record forwarded there, i.e. emitted all of the tenant's earlier
messages (`TenantRoutes.complete_cuts`). Then the move is applied, announced on the control
topic and in the tenant's state, and the held records are replayed to the new lane.

A move out of a dedicated lane is decided only once that lane is within one batch of done with
the tenant (the lane worker drains at a bounded rate): the cut then holds records for a moment,
not for the whole backlog.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import orjson

from agents.lanes.forwarding import Forwarder
from agents.lanes.ingress import IngressReader
from agents.lanes.offsets import LaneOffsets
from agents.lanes.state import RouteStates
from streams.cutover import LanePartition
from streams.lanes import LaneMove, LanePolicy, decide
from streams.route_records import move_entry

log = logging.getLogger(__name__)


class LaneDecisions:
    """Decides the lane moves of the tenants this router owns and completes their cuts."""

    def __init__(
        self,
        forwarder: Forwarder,
        reader: IngressReader,
        states: RouteStates,
        offsets: LaneOffsets,
    ) -> None:
        self.forwarder = forwarder
        self.reader = reader
        self.states = states
        self.offsets = offsets
        self.app = forwarder.app
        settings = self.app.laneway
        self.policy = LanePolicy(
            promote_factor=settings.promote_factor,
            promote_min_rate=settings.promote_min_rate,
            calm_factor=settings.calm_factor,
            hold_down_s=settings.hold_down_s,
            dedicated_lanes=settings.dedicated_lanes,
        )

    async def evaluate(self, now: float) -> None:
        routes, lanes = self.forwarder.routes, self.forwarder.lanes
        if routes.cuts():
            await self.complete_cuts()
        # Pinned tenants too: a pin takes effect even while the tenant sends nothing.
        pinned = self.forwarder.registry.directory.pinned()
        known = self.forwarder.active | set(lanes.placed()) | pinned
        owned = self.reader.owned
        candidates = [
            tenant
            for tenant in known
            if not routes.cutting(tenant) and self.forwarder.partition_of(tenant) in owned
        ]
        # A tenant leaves a dedicated lane only once that lane has (nearly) caught up with it,
        # so the cut holds its new records for a moment, not for the whole backlog's drain.
        in_lanes = [tenant for tenant in candidates if lanes.lane_of(tenant) is not None]
        commits = await self._lane_commits_for(in_lanes)
        caught_up = routes.drained(in_lanes, commits, slack=self.app.laneway.batch_max)
        for tenant in candidates:
            move = self._decision(tenant, now, lane_caught_up=tenant in caught_up)
            if move is not None:
                routes.start_cut(move, may_be_in=self.forwarder.lanes_of(tenant))
        if routes.cuts():
            await self.complete_cuts()  # a tenant with nothing left in its old lane moves now

    async def complete_cuts(self) -> None:
        routes = self.forwarder.routes
        commits = await self._lane_commits_for(routes.cuts())
        # Under the lock: a forward in flight has updated the tenant's last position when Kafka
        # acknowledged it, so a cut cannot complete before it.
        async with self.forwarder.lock:
            moves = routes.complete_cuts(commits)
        for move in moves:  # all made: note each before publishing, which may fail
            self.states.note(move)
        for move in moves:
            await self._announce(move)

    def _decision(self, tenant: str, now: float, lane_caught_up: bool) -> LaneMove | None:
        forwarder = self.forwarder
        record = forwarder.registry.directory.get(tenant)
        settings = self.app.laneway
        contract = record.rate_per_s if record is not None else settings.default_rate_per_s
        if record is not None:
            pinned_lane = record.lane.dedicated_lane if record.lane.pinned == "dedicated" else None
            forwarder.lanes.pin(tenant, record.lane.pinned, pinned_lane)
        snapshot = forwarder.volumes.snapshot(tenant, now)
        return decide(
            forwarder.lanes.assignment(tenant),
            recent_rate=forwarder.volumes.recent_rate(tenant, now),
            rate_10s=snapshot.rate_10s,
            contract_rate=contract,
            now=now,
            backlog_empty=lane_caught_up,  # the rest of the drain is the cut's job
            lane_loads=forwarder.lanes.loads(),
            policy=self.policy,
        )

    async def _announce(self, move: LaneMove) -> None:
        """Publish a move made on the control topic, and the tenant's new state."""
        tenant = move.tenant
        await self.app.producer.send(
            self.app.topic_names.control,
            tenant.encode(),
            orjson.dumps(move_entry(move)),
            None,
            None,
            None,
        )
        await self.states.publish(tenant, time.time())

    async def _lane_commits_for(self, tenants: Iterable[str]) -> dict[LanePartition, int]:
        """The lane commits `TenantRoutes.drained` needs for these tenants."""
        partitions = self.forwarder.routes.lane_partitions(tenants)
        return await self.offsets.lane_commits(partitions) if partitions else {}
