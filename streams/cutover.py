"""The router's cut-over and hold bookkeeping: pure, no I/O.

Each tenant the router routes has one `TenantRoute`:
- `last_forwarded`: where its last record went (lane topic, partition, offset), once Kafka
  acknowledged it: what a lane must have emitted before the tenant may leave it;
- `cut`: the lane move decided for it, waiting for the lane it leaves to drain;
- `hold`: its ingress records kept back, in order, while a cut is in progress or the tenant is
  paused.
Its lane itself lives in the `LaneAssignments` (`streams.lanes`) that the lane policy reads and
`TenantRoutes` shares: a tenant changes lane only when its cut completes here.

`TenantRoutes` answers the router's questions (the router does the I/O and the scheduling):
- `hold`: does this record wait, or go to its tenant's lane now? A record waits if its tenant is
  being cut over, is paused, or has earlier records waiting. No other tenant ever waits.
- `commit_offsets`: how far each ingress partition may be committed: up to what the router read
  and Kafka acknowledged forwarding (`advance`), never past the first held record.
- `drained` / `complete_cuts`: given the committed offsets of the lanes' consumer groups (the next
  record each reads), which tenants' lanes have emitted everything forwarded to them, and so
  which cuts are complete. A completed cut changes the tenant's lane; its held records become
  releasable.
- `releasable` / `released`: the held records that may go now (no cut in progress, not paused),
  in order; they stay held, their offsets uncommitted, until their forwards are acknowledged.
- `forget`: drop a tenant another router owns now.

A hold records the ingress offset it starts from per partition (`Hold.first`), which is all the
commit needs: a hold could be kept as an offset range and re-read from Kafka instead of a list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from streams.lanes import LaneAssignments, LaneMove
from streams.processing import IngressRecord

LanePartition = tuple[str, int]  # (lane topic, partition)


class LanePosition(NamedTuple):
    """The offset of a record in a lane topic partition."""

    topic: str
    partition: int
    offset: int


@dataclass(slots=True)
class Hold:
    """Ingress records kept back, in ingress order."""

    records: list[IngressRecord] = field(default_factory=list)
    first: dict[int, int] = field(default_factory=dict)  # partition -> offset of its first record

    def add(self, record: IngressRecord) -> None:
        self.records.append(record)
        self.first.setdefault(record.partition, record.offset)

    def drop_first(self, count: int) -> None:
        del self.records[:count]
        self.first = {}
        for record in self.records:
            self.first.setdefault(record.partition, record.offset)


@dataclass(slots=True)
class TenantRoute:
    """One tenant's routing state; its lane is in the shared `LaneAssignments`."""

    last_forwarded: LanePosition | None = None
    cut: LaneMove | None = None
    hold: Hold | None = None  # None: nothing held

    def waiting(self) -> bool:
        """True while the tenant's new records must be held whatever its pause."""
        return self.cut is not None or self.hold is not None


class TenantRoutes:
    """tenant id -> TenantRoute, and the ingress offsets that may be committed."""

    __slots__ = ("_acknowledged", "_committed", "_routes", "_waiting", "lanes")

    def __init__(self, lanes: LaneAssignments) -> None:
        self.lanes = lanes
        self._routes: dict[str, TenantRoute] = {}
        # The routes with a cut or a hold: the release timer and the commit look only at these,
        # not at every tenant the router knows.
        self._waiting: dict[str, TenantRoute] = {}
        # partition -> next offset: every record before it was forwarded and acknowledged, or held
        self._acknowledged: dict[int, int] = {}
        self._committed: dict[int, int] = {}

    # ---------------------------------------------------------------- hot path

    def hold(self, tenant: str, record: IngressRecord, paused: bool) -> bool:
        """Keep `record` back and return True if it must wait; False: forward it now."""
        route = self._routes.get(tenant)
        if not paused and (route is None or (route.cut is None and route.hold is None)):
            return False
        if route is None:
            route = self._routes[tenant] = TenantRoute()
        if route.hold is None:
            route.hold = Hold()
            self._waiting[tenant] = route
        route.hold.add(record)
        return True

    def forwarded(self, tenant: str, position: LanePosition) -> None:
        """Kafka acknowledged a record of `tenant` at `position` (or a later one there)."""
        route = self._routes.get(tenant)
        if route is None:
            route = self._routes[tenant] = TenantRoute()
        route.last_forwarded = position

    def advance(self, read_to: Mapping[int, int]) -> None:
        """partition -> next offset: every record read before it was forwarded and acknowledged,
        or is held."""
        self._acknowledged.update(read_to)

    # ---------------------------------------------------------------- ingress commits

    def commit_offsets(self) -> dict[int, int]:
        """partition -> the ingress offset to commit now, for each partition where it changed
        since the last `committed`: never past a record held or not yet acknowledged."""
        safe = dict(self._acknowledged)
        for route in self._waiting.values():
            if route.hold is None:
                continue
            for partition, first in route.hold.first.items():
                if partition in safe:
                    safe[partition] = min(safe[partition], first)
        return {p: offset for p, offset in safe.items() if self._committed.get(p) != offset}

    def committed(self, offsets: Mapping[int, int]) -> None:
        self._committed.update(offsets)

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        """Another router reads these ingress partitions now (`forget` their tenants too)."""
        for partition in partitions:
            self._acknowledged.pop(partition, None)
            self._committed.pop(partition, None)

    # ---------------------------------------------------------------- drains and cuts

    def last_forwarded(self, tenant: str) -> LanePosition | None:
        route = self._routes.get(tenant)
        return None if route is None else route.last_forwarded

    def lane_partitions(self, tenants: Iterable[str]) -> set[LanePartition]:
        """The lane partitions whose committed offsets `drained` needs for these tenants."""
        positions = (self.last_forwarded(tenant) for tenant in tenants)
        return {(p.topic, p.partition) for p in positions if p is not None}

    def drained(
        self, tenants: Iterable[str], lane_commits: Mapping[LanePartition, int], slack: int = 0
    ) -> set[str]:
        """The tenants whose lane has emitted every record forwarded to it for them, but for at
        most `slack`. `lane_commits`: (lane topic, partition) -> the committed offset of the
        group that reads it, i.e. the next record it reads. A tenant with nothing forwarded, or
        nothing acknowledged yet, counts as drained."""
        done = set()
        for tenant in tenants:
            position = self.last_forwarded(tenant)
            if position is None:
                done.add(tenant)
                continue
            committed = lane_commits.get((position.topic, position.partition), -1)
            if committed > position.offset - slack:
                done.add(tenant)
        return done

    def start_cut(self, move: LaneMove) -> None:
        """From now on the tenant's records are held until the lane it leaves is drained."""
        route = self._routes.get(move.tenant)
        if route is None:
            route = self._routes[move.tenant] = TenantRoute()
        route.cut = move
        self._waiting[move.tenant] = route

    def cutting(self, tenant: str) -> bool:
        route = self._routes.get(tenant)
        return route is not None and route.cut is not None

    def cuts(self) -> list[str]:
        """The tenants with a cut in progress."""
        return [tenant for tenant, route in self._waiting.items() if route.cut is not None]

    def complete_cuts(self, lane_commits: Mapping[LanePartition, int]) -> list[LaneMove]:
        """Complete the cuts whose old lane is drained (see `drained`): apply their moves to the
        lanes and return them. A move made stale by a lane change since it was decided is
        dropped, not applied; the tenant's held records go to the lane it is in."""
        applied = []
        for tenant in self.drained(self.cuts(), lane_commits):
            route = self._routes[tenant]
            move, route.cut = route.cut, None
            self._settle(tenant, route)
            if move is not None and self.lanes.lane_of(tenant) == move.from_lane:
                self.lanes.apply(move)
                applied.append(move)
        return applied

    # ---------------------------------------------------------------- releases

    def releasable(self, paused: Callable[[str], bool]) -> list[tuple[str, list[IngressRecord]]]:
        """Per tenant, in order: the held records that may go now, those of tenants with no cut
        in progress that `paused` says are not paused. They stay held until `released`."""
        return [
            (tenant, list(route.hold.records))
            for tenant, route in self._waiting.items()
            if route.hold is not None and route.cut is None and not paused(tenant)
        ]

    def released(self, tenant: str, count: int) -> None:
        """Kafka acknowledged the forwards of the first `count` records `releasable` gave."""
        route = self._routes.get(tenant)
        if route is None or route.hold is None:
            return
        route.hold.drop_first(count)
        if not route.hold.records:
            route.hold = None
            self._settle(tenant, route)

    # ---------------------------------------------------------------- tenants

    def tenants(self) -> set[str]:
        """Every tenant with routing state here: a route, or a lane or pin."""
        return {*self._routes, *self.lanes.placed()}

    def forget(self, tenant: str) -> None:
        """Drop all of a tenant's routing state, its lane included (another router owns it)."""
        self._routes.pop(tenant, None)
        self._waiting.pop(tenant, None)
        self.lanes.forget(tenant)

    def _settle(self, tenant: str, route: TenantRoute) -> None:
        """Keep `_waiting` in step after a cut or hold ended."""
        if not route.waiting():
            self._waiting.pop(tenant, None)
