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

Placement is the deployment's, not this router's (`streams.placement`): the lane loads count
every tenant's claim, this router's from its own routes and the others' from the tenant-state
documents every worker mirrors. A cut into a dedicated lane is published at once, so the other
routers see the claim within the mirror's latency. Two routers deciding within it can still pick
one lane: on the next evaluation the later claim moves to a free lane, if there is one
("spread"): re-targeted if its cut is still in progress, else a drain-first cut of its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import orjson

from agents.lanes.forwarding import Forwarder
from agents.lanes.ingress import IngressReader
from agents.lanes.lane_dlq import LaneDlq
from agents.lanes.offsets import LaneOffsets
from agents.lanes.state import RouteStates
from streams.cutover import LanePartition
from streams.lanes import LaneMove, LanePolicy, decide
from streams.placement import Claim, document_claim, lane_loads, route_claim, spread
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
        lane_dlq: LaneDlq,
    ) -> None:
        self.forwarder = forwarder
        self.reader = reader
        self.states = states
        self.offsets = offsets
        self.lane_dlq = lane_dlq
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
        loads = lane_loads(self._claims(), self.policy.dedicated_lanes)
        claimed: list[str] = []  # tenants whose cut now claims a dedicated lane
        for tenant in candidates:
            move = self._decision(tenant, now, tenant in caught_up, loads)
            if move is not None:
                routes.start_cut(move, may_be_in=self.forwarder.lanes_of(tenant))
                if move.from_lane is not None:  # its claim ends at once
                    loads[move.from_lane] -= 1
                if move.to_lane is not None:  # the next decision of this pass sees it
                    loads[move.to_lane] += 1
                    claimed.append(tenant)
        claimed += self._spread(now)
        try:
            for tenant in claimed:  # the other routers see the claim at once, not in a second
                await self.states.publish(tenant, now)
        except Exception as error:  # the broker is away: the next `persist` publishes it
            log.warning("lane claim not published: %s", type(error).__name__)
        if routes.cuts():
            await self.complete_cuts()  # a tenant with nothing left in its old lane moves now

    async def complete_cuts(self) -> None:
        routes = self.forwarder.routes
        commits = await self._lane_commits_for(routes.cuts())
        # Under the lock: a forward in flight has updated the tenant's last position when Kafka
        # acknowledged it, so a cut cannot complete before it.
        async with self.forwarder.lock:
            moves = routes.complete_cuts(commits)
            await self.lane_dlq.moved(moves, time.time())  # before any forward to a new lane
        for move in moves:  # all made: note each before publishing, which may fail
            self.states.note(move)
        for move in moves:
            await self._announce(move)

    def _claims(self) -> list[Claim]:
        """Every tenant's claim on a dedicated lane: this router's tenants from its routes,
        the others' from their published documents."""
        forwarder, owned = self.forwarder, self.reader.owned
        claims = []
        for tenant, document in self.states.mirror.states.items():
            # Most tenants are in the shared lane: two lookups each, no hashing.
            if document.get("lane") is None and document.get("cut") is None:
                continue
            if forwarder.partition_of(tenant) not in owned:
                claims.append(document_claim(tenant, document, self._pinned_lane(tenant)))
        lanes, routes = forwarder.lanes, forwarder.routes
        for tenant in {*lanes.placed(), *routes.cuts()}:
            cut = routes.cut_of(tenant)
            claims.append(
                route_claim(
                    tenant,
                    lanes.lane_of(tenant),
                    lanes.assignment(tenant).moved_at,
                    cut.to_lane if cut is not None else None,
                    cut.at if cut is not None else None,
                    self._pinned_lane(tenant),
                )
            )
        return [claim for claim in claims if claim is not None]

    def _pinned_lane(self, tenant: str) -> int | None:
        """The dedicated lane an operator pinned the tenant to, if any."""
        record = self.forwarder.registry.directory.get(tenant)
        lane = record.lane.dedicated_lane if record is not None else None
        if record is None or record.lane.pinned != "dedicated" or lane is None:
            return None
        return lane % self.policy.dedicated_lanes  # as `decide` wraps it

    def _spread(self, now: float) -> list[str]:
        """Move this router's tenants that share a lane with an earlier claim to a free lane;
        returns those re-targeted or cut."""
        forwarder, owned = self.forwarder, self.reader.owned
        routes, lanes = forwarder.routes, forwarder.lanes
        mine = {t for t in {*lanes.placed(), *routes.cuts()} if forwarder.partition_of(t) in owned}
        moved = []
        for tenant, lane in spread(self._claims(), mine, self.policy.dedicated_lanes).items():
            cut, current = routes.cut_of(tenant), lanes.lane_of(tenant)
            if cut is not None:
                routes.retarget(tenant, lane)
            else:
                move = LaneMove(tenant, current, lane, "spread", now)
                routes.start_cut(move, may_be_in=forwarder.lanes_of(tenant))
            log.info("tenant %s shares its lane with an earlier claim: to lane %d", tenant, lane)
            moved.append(tenant)
        return moved

    def _decision(
        self, tenant: str, now: float, lane_caught_up: bool, loads: list[int]
    ) -> LaneMove | None:
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
            lane_loads=loads,
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
