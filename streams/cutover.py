"""The router's cut-over and hold bookkeeping: pure, no I/O.

Each tenant the router routes has one `TenantRoute`:
- `last_forwarded`: where its last record went (lane topic, partition, offset), once Kafka
  acknowledged it: what a lane must have emitted before the tenant may leave it;
- `drain_to`: after a restart or rebalance, the lane partitions it may still have records in
  and their end offsets then (the router does not know what it forwarded before): a cut waits
  for those too;
- `cut`: the lane move decided for it, waiting for the lane it leaves to drain;
- `hold`: while a cut is in progress or the tenant is paused, its records wait in Kafka: the
  hold is one ingress offset (a tenant's records all live in one ingress partition), never
  records, so router memory stays bounded whatever a tenant does.
Its lane itself lives in the `LaneAssignments` (`streams.lanes`) that the lane policy reads and
`TenantRoutes` shares: a tenant changes lane only when its cut completes here.

`TenantRoutes` answers the router's questions (the router does the I/O and the scheduling):
- `hold`: does this record wait (the read loop counts and skips it), or go to its tenant's lane
  now? A record waits if its tenant is being cut over, is paused, or has a hold. No other
  tenant ever waits.
- `commit_offsets`: how far each ingress partition may be committed: up to what the router read
  and Kafka acknowledged forwarding (`advance`), and past a hold only once the hold is
  persisted (`persisted`: the tenant-state document that names it was acknowledged), so a
  restart finds it (`restore_hold`) instead of losing the skipped records.
- `drained` / `complete_cuts`: given the committed offsets of the lanes' consumer groups (the next
  record each reads), which tenants' lanes have emitted everything forwarded to them (and, after
  a restore, everything that was in them: `lane_ends`, `expect_drain`), and so which cuts are
  complete. A completed cut changes the tenant's lane; its hold becomes releasable.
- `releasable` / `replayed` / `end_hold`: the holds that may be replayed now (no cut in
  progress, not paused); the router re-reads the tenant's records from Kafka from the hold's
  offset, forwards them and moves the hold on as Kafka acknowledges, and ends the hold once it
  has caught up with the read loop.
- `forget`: drop a tenant another router owns now.

`LaneMarks` and `Reforwarded` keep a restart from forwarding a record twice: the first says,
for each ingress commit, where in the lanes the forwards of the records after it start (the
commit's metadata); the second holds the ingress offsets a restored router found there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
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
    """Every record of a tenant from `offset` on in ingress `partition` waits in Kafka: the read
    loop skips them, a replay forwards them once the hold is released."""

    partition: int
    offset: int  # the first held record not yet forwarded (and acknowledged)
    persisted: int | None = None  # the offset that the tenant's acknowledged state document names

    def covered(self) -> bool:
        """True if a restart would find every record still held (the commit may pass them)."""
        return self.persisted is not None and self.persisted <= self.offset


@dataclass(slots=True)
class TenantRoute:
    """One tenant's routing state; its lane is in the shared `LaneAssignments`."""

    last_forwarded: LanePosition | None = None
    # Lane partition -> the last offset there that may hold a record of the tenant, from before
    # a restore: each entry goes once its lane's group has committed past it.
    drain_to: dict[LanePartition, int] = field(default_factory=dict)
    cut: LaneMove | None = None
    hold: Hold | None = None  # None: nothing held

    def waiting(self) -> bool:
        """True while the tenant's new records must be held whatever its pause."""
        return self.cut is not None or self.hold is not None


class TenantRoutes:
    """tenant id -> TenantRoute, and the ingress offsets that may be committed."""

    __slots__ = ("_acknowledged", "_committed", "_lane_ends", "_routes", "_waiting", "lanes")

    def __init__(self, lanes: LaneAssignments) -> None:
        self.lanes = lanes
        self._routes: dict[str, TenantRoute] = {}
        # The routes with a cut or a hold: the release timer and the commit look only at these,
        # not at every tenant the router knows.
        self._waiting: dict[str, TenantRoute] = {}
        # partition -> next offset: every record before it was forwarded and acknowledged, or held
        self._acknowledged: dict[int, int] = {}
        self._committed: dict[int, int] = {}
        # Lane partition -> its last offset when the router took partitions, until its group has
        # committed past it: what any tenant of theirs may still have in that lane.
        self._lane_ends: dict[LanePartition, int] = {}

    def _route(self, tenant: str) -> TenantRoute:
        route = self._routes.get(tenant)
        if route is None:
            route = self._routes[tenant] = TenantRoute()
        return route

    # ---------------------------------------------------------------- hot path

    def hold(self, tenant: str, record: IngressRecord, paused: bool) -> bool:
        """True if `record` must wait (the hold covers it from now on); False: forward it now."""
        route = self._routes.get(tenant)
        if not paused and (route is None or (route.cut is None and route.hold is None)):
            return False
        if route is None:
            route = self._routes[tenant] = TenantRoute()
        hold = route.hold
        if hold is None:
            route.hold = Hold(record.partition, record.offset)
            self._waiting[tenant] = route
        elif record.offset < hold.offset:  # re-read after a restore: the hold starts earlier
            hold.offset = record.offset
        return True

    def forwarded(self, tenant: str, position: LanePosition) -> None:
        """Kafka acknowledged a record of `tenant` at `position` (or a later one there)."""
        self._route(tenant).last_forwarded = position

    def advance(self, read_to: Mapping[int, int]) -> None:
        """partition -> next offset: every record read before it was forwarded and acknowledged,
        or is held."""
        self._acknowledged.update(read_to)

    # ---------------------------------------------------------------- ingress commits

    def commit_offsets(self) -> dict[int, int]:
        """partition -> the ingress offset to commit now, for each partition where it changed
        since the last `committed`: never past a record not yet acknowledged, nor past the first
        record of a hold that is not persisted yet."""
        safe = dict(self._acknowledged)
        for route in self._waiting.values():
            hold = route.hold
            if hold is not None and not hold.covered() and hold.partition in safe:
                safe[hold.partition] = min(safe[hold.partition], hold.offset)
        return {p: offset for p, offset in safe.items() if self._committed.get(p) != offset}

    def committed(self, offsets: Mapping[int, int]) -> None:
        self._committed.update(offsets)

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        """Another router reads these ingress partitions now (`forget` their tenants too)."""
        for partition in partitions:
            self._acknowledged.pop(partition, None)
            self._committed.pop(partition, None)

    # ---------------------------------------------------------------- holds

    def hold_of(self, tenant: str) -> Hold | None:
        route = self._routes.get(tenant)
        return None if route is None else route.hold

    def unpersisted(self) -> list[str]:
        """The tenants whose hold (or its progress) their persisted state does not name yet."""
        return [
            tenant
            for tenant, route in self._waiting.items()
            if route.hold is not None and route.hold.persisted != route.hold.offset
        ]

    def persisted(self, tenant: str, hold: Hold, offset: int) -> None:
        """Kafka acknowledged a state document of `tenant` that names `hold` at `offset`. A
        hold ended (and persisted as ended) since is not covered by it, even if a new one began."""
        if self.hold_of(tenant) is hold and offset <= hold.offset:
            hold.persisted = offset

    def restore_hold(self, tenant: str, partition: int, offset: int) -> None:
        """Adopt a persisted hold: the tenant's records from `offset` on wait in Kafka."""
        route = self._route(tenant)
        route.hold = Hold(partition, offset, persisted=offset)
        self._waiting[tenant] = route

    def releasable(self, paused: Callable[[str], bool]) -> list[tuple[str, Hold]]:
        """The holds that may be replayed now: those of tenants with no cut in progress that
        `paused` says are not paused."""
        return [
            (tenant, route.hold)
            for tenant, route in self._waiting.items()
            if route.hold is not None and route.cut is None and not paused(tenant)
        ]

    def replayed(self, tenant: str, offset: int) -> None:
        """Kafka acknowledged the forwards of the tenant's held records before `offset`."""
        hold = self.hold_of(tenant)
        if hold is not None:
            hold.offset = max(hold.offset, offset)

    def end_hold(self, tenant: str) -> None:
        """The replay caught up with the read loop: the tenant's records go straight on again."""
        route = self._routes.get(tenant)
        if route is not None and route.hold is not None:
            route.hold = None
            self._settle(tenant, route)

    # ---------------------------------------------------------------- drains and cuts

    def last_forwarded(self, tenant: str) -> LanePosition | None:
        route = self._routes.get(tenant)
        return None if route is None else route.last_forwarded

    def lane_ends(self, ends: Mapping[LanePartition, int]) -> None:
        """The end offsets (next offset) of lane partitions, read when the router took ingress
        partitions: until their groups commit past them, any tenant may have records there."""
        for lane_partition, end in ends.items():
            if end > 0:
                last = max(end - 1, self._lane_ends.get(lane_partition, -1))
                self._lane_ends[lane_partition] = last

    def expect_drain(self, tenant: str, lane_partitions: Iterable[LanePartition]) -> None:
        """`tenant` may have records in these lane partitions up to their `lane_ends`: it counts
        as drained of them only once their groups have committed past those ends."""
        route: TenantRoute | None = None
        for lane_partition in lane_partitions:
            last = self._lane_ends.get(lane_partition)
            if last is None:
                continue
            route = route or self._route(tenant)
            route.drain_to[lane_partition] = max(last, route.drain_to.get(lane_partition, -1))

    def lane_partitions(self, tenants: Iterable[str]) -> set[LanePartition]:
        """The lane partitions whose committed offsets `drained` needs for these tenants."""
        needed: set[LanePartition] = set()
        for tenant in tenants:
            route = self._routes.get(tenant)
            if route is None:
                continue
            if route.last_forwarded is not None:
                needed.add((route.last_forwarded.topic, route.last_forwarded.partition))
            needed.update(route.drain_to)
        return needed

    def drained(
        self, tenants: Iterable[str], lane_commits: Mapping[LanePartition, int], slack: int = 0
    ) -> set[str]:
        """The tenants whose lanes have emitted every record forwarded to them for them, and
        every record that was in them at a restore (`expect_drain`), but for at most `slack`.
        `lane_commits`: (lane topic, partition) -> the committed offset of the group that reads
        it, i.e. the next record it reads. A tenant with nothing forwarded nor expected counts
        as drained."""
        for lane_partition, last in list(self._lane_ends.items()):
            if lane_commits.get(lane_partition, -1) > last:
                del self._lane_ends[lane_partition]  # every tenant is past it for good
        done = set()
        for tenant in tenants:
            route = self._routes.get(tenant)
            if route is None:
                done.add(tenant)
                continue
            targets = list(route.drain_to.items())
            if route.last_forwarded is not None:
                position = route.last_forwarded
                targets.append(((position.topic, position.partition), position.offset))
            if all(lane_commits.get(lp, -1) > last - slack for lp, last in targets):
                done.add(tenant)
            for lane_partition, last in list(route.drain_to.items()):
                if lane_commits.get(lane_partition, -1) > last:
                    del route.drain_to[lane_partition]
        return done

    def start_cut(self, move: LaneMove, may_be_in: Iterable[LanePartition] = ()) -> None:
        """From now on the tenant's records are held until the lanes it may have records in
        are drained: those it was forwarded to, and `may_be_in` up to their `lane_ends`."""
        self.expect_drain(move.tenant, may_be_in)
        route = self._route(move.tenant)
        route.cut = move
        self._waiting[move.tenant] = route

    def retarget(self, tenant: str, to_lane: int) -> None:
        """Send the tenant's cut in progress to another dedicated lane instead: nothing went to
        the lane it was heading to (its records wait until the cut completes)."""
        route = self._routes.get(tenant)
        if route is not None and route.cut is not None:
            route.cut = replace(route.cut, to_lane=to_lane)

    def restore_cut(self, move: LaneMove, may_be_in: Iterable[LanePartition] = ()) -> None:
        """Resume a persisted cut, unless the tenant is no longer in the lane it leaves."""
        if self.lanes.lane_of(move.tenant) == move.from_lane:
            self.start_cut(move, may_be_in)

    def cut_of(self, tenant: str) -> LaneMove | None:
        route = self._routes.get(tenant)
        return None if route is None else route.cut

    def cutting(self, tenant: str) -> bool:
        return self.cut_of(tenant) is not None

    def cuts(self) -> list[str]:
        """The tenants with a cut in progress."""
        return [tenant for tenant, route in self._waiting.items() if route.cut is not None]

    def waiting(self) -> list[str]:
        """The tenants with a cut in progress or a hold."""
        return list(self._waiting)

    def complete_cuts(self, lane_commits: Mapping[LanePartition, int]) -> list[LaneMove]:
        """Complete the cuts whose old lanes are drained (see `drained`): apply their moves to
        the lanes and return them. A move made stale by a lane change since it was decided is
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


class LaneMarks:
    """Where in each lane partition the forwards of an ingress partition's uncommitted records
    can start, for the ingress commit's metadata: after a crash the next router scans the lanes
    from there and skips the records already forwarded (`Reforwarded`), instead of forwarding
    them twice.

    `written` keeps, per lane partition, the offset after this router's last acknowledged write
    there: its later forwards land at or past it. `read` notes it when the read loop takes a
    batch; `at` gives the note for a commit: the one of the batch that holds the commit offset.
    Replays are not covered: a crash may re-forward what a replay forwarded since its hold's
    progress was last persisted."""

    __slots__ = ("_notes", "_written")

    def __init__(self) -> None:
        self._written: dict[LanePartition, int] = {}
        # ingress partition -> (first offset of a batch, `_written` then), oldest first
        self._notes: dict[int, list[tuple[int, dict[LanePartition, int]]]] = {}

    def written(self, lane_partition: LanePartition, next_offset: int) -> None:
        """Kafka acknowledged a write there (or the router read its end offset)."""
        if next_offset > self._written.get(lane_partition, -1):
            self._written[lane_partition] = next_offset

    def read(self, partition: int, first_offset: int) -> None:
        """The read loop took a batch of `partition` from `first_offset` on."""
        notes = self._notes.setdefault(partition, [])
        if not notes or notes[-1][1] != self._written:
            notes.append((first_offset, dict(self._written)))

    def at(self, partition: int, offset: int) -> dict[LanePartition, int]:
        """The lane offsets to store with a commit of `partition` at `offset`; the notes of
        earlier batches are dropped (commits only move forward)."""
        notes = self._notes.get(partition, [])
        keep = 0
        for index, (first, _) in enumerate(notes):
            if first <= offset:
                keep = index
        del notes[:keep]
        return dict(notes[0][1]) if notes else dict(self._written)

    def drop(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self._notes.pop(partition, None)


class Reforwarded:
    """ingress partition -> the offsets of its records found in the lanes after a restore
    (forwarded, not committed, before the crash): the read loop and replays skip them. Kept
    until the partition is dropped: a scan finds about one commit interval of forwards."""

    __slots__ = ("_offsets",)

    def __init__(self) -> None:
        self._offsets: dict[int, set[int]] = {}

    def found(self, partition: int, offsets: Iterable[int]) -> None:
        self._offsets.setdefault(partition, set()).update(offsets)

    def contains(self, partition: int, offset: int) -> bool:
        """True if that record was forwarded already."""
        offsets = self._offsets.get(partition)
        return offsets is not None and offset in offsets

    def drop(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self._offsets.pop(partition, None)
