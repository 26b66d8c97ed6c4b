"""The router's tenant-state documents: published about once a second, adopted on taking
partitions.

Every active, placed or waiting tenant's document (volume windows, lane, recent moves, and a
cut or hold in progress: `streams.route_records`) goes to the compacted tenant-state topic that
every worker mirrors (acks=all). A hold's document must be acknowledged before the ingress
commit may pass the hold (`TenantRoutes.persisted`). The router that takes an ingress partition
adopts its tenants' documents: the next owner resumes where the last one stopped.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from agents.lanes.forwarding import Forwarder
from agents.state.tenant_state import TenantStateMirror
from streams.lanes import LaneMove
from streams.route_records import (
    RECENT_MOVES_KEPT,
    cut_entry,
    hold_entry,
    move_entry,
    restored_cut,
    restored_hold,
    servable_lane,
)

log = logging.getLogger(__name__)


class RouteStates:
    """Publishes and restores the tenant-state documents of the tenants this router owns."""

    def __init__(self, forwarder: Forwarder, tenant_states: TenantStateMirror) -> None:
        self.forwarder = forwarder
        self.mirror = tenant_states
        self.dedicated_lanes = forwarder.dedicated_lanes
        self.moves: dict[str, deque[dict[str, Any]]] = {}

    async def persist(self, now: float) -> None:
        """Publish the state of every tenant active since the last call, placed or waiting."""
        forwarder = self.forwarder
        active, forwarder.active = forwarder.active, set()
        tenants = active | set(forwarder.lanes.placed()) | set(forwarder.routes.waiting())
        # Together, so one producer batch carries them: one at a time, 1,000 tenants took 90 s.
        outcomes = await asyncio.gather(
            *(self.publish(tenant, now) for tenant in tenants), return_exceptions=True
        )
        for error in {type(o).__name__ for o in outcomes if isinstance(o, Exception)}:
            log.warning("tenant state not published: %s", error)  # the next second's supersedes

    async def publish(self, tenant: str, now: float) -> None:
        """Publish the tenant's state (acks=all); once acknowledged, the ingress commit may
        pass the hold it names."""
        routes = self.forwarder.routes
        hold = routes.hold_of(tenant)
        document = self.document(tenant, now)
        await self.mirror.publish(tenant, document)
        if hold is not None:
            routes.persisted(tenant, hold, document["hold"]["offset"])

    def document(self, tenant: str, now: float) -> dict[str, Any]:
        forwarder = self.forwarder
        volumes, lanes, routes = forwarder.volumes, forwarder.lanes, forwarder.routes
        return {
            "tenant": tenant,
            "lane": lanes.lane_of(tenant),
            "moved_at": lanes.assignment(tenant).moved_at,
            "moves": list(self.moves.get(tenant, ())),
            "volume": volumes.state(tenant),
            "rates": volumes.snapshot(tenant, now).as_dict(),
            "updated_at": now,
            # A cut in progress and a hold: what a restart (or the next owner) resumes.
            "cut": cut_entry(routes.cut_of(tenant)),
            "hold": hold_entry(routes.hold_of(tenant)),
        }

    def note(self, move: LaneMove) -> None:
        """Add a move made to the tenant's recent moves, and log it."""
        moves = self.moves.setdefault(move.tenant, deque(maxlen=RECENT_MOVES_KEPT))
        moves.append(move_entry(move))
        log.info(
            "tenant %s moved from lane %s to %s (%s)",
            move.tenant,
            move.from_lane,
            move.to_lane,
            move.reason,
        )

    def restore(self, partitions: set[int], now: float) -> None:
        """Adopt the persisted lane, windows, moves, cut and hold of the tenants of newly owned
        partitions (their drain targets come after: `Recovery.drains`)."""
        forwarder = self.forwarder
        for tenant, document in self.mirror.states.items():
            if forwarder.partition_of(tenant) not in partitions:
                continue
            if document.get("volume"):
                forwarder.volumes.restore(tenant, document["volume"], now)
            lane = servable_lane(document.get("lane"), self.dedicated_lanes)
            if lane is None and document.get("lane") is not None:
                log.warning(
                    "tenant %s was in lane %r, which no lane worker reads now: shared lane",
                    tenant,
                    document.get("lane"),
                )
            if lane is not None:
                forwarder.lanes.restore(tenant, lane, document.get("moved_at"))
            self.moves[tenant] = deque(document.get("moves", []), maxlen=RECENT_MOVES_KEPT)
            hold = restored_hold(document)
            if hold is not None:
                forwarder.routes.restore_hold(tenant, *hold)
            cut = restored_cut(tenant, document, self.dedicated_lanes)
            if cut is not None:
                forwarder.routes.restore_cut(cut)

    def tenants(self) -> set[str]:
        """The tenants whose moves are kept here."""
        return set(self.moves)

    def forget(self, tenant: str) -> None:
        self.moves.pop(tenant, None)
