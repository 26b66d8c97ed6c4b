"""The router's cut-over and hold bookkeeping (streams.cutover): drain first, holds, commits."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st

from streams.cutover import Hold, LaneMarks, LanePosition, Reforwarded, TenantRoutes
from streams.lanes import LaneAssignments, LaneMove
from streams.processing import IngressRecord

SHARED = "laneway.lane.shared"
DEDICATED = "laneway.lane.dedicated"
T0 = 1_700_000_000.0


def rec(tenant: str, offset: int, partition: int = 0) -> IngressRecord:
    return IngressRecord(tenant.encode(), b"MSH|", "laneway.ingress", partition, offset, 0)


def hold_of(routes: TenantRoutes, tenant: str) -> Hold:
    hold = routes.hold_of(tenant)
    assert hold is not None
    return hold


def never(tenant: str) -> bool:
    return False


def paused_in(tenants: set[str]) -> Callable[[str], bool]:
    return tenants.__contains__


def test_a_moved_tenant_waits_for_its_old_lane_to_drain_then_goes_in_order() -> None:
    routes = TenantRoutes(LaneAssignments(4))
    assert not routes.hold("a", rec("a", 0), paused=False)
    routes.forwarded("a", LanePosition(SHARED, 0, 41))
    move = LaneMove("a", None, 1, "rate_above_contract", T0)

    routes.start_cut(move)
    held = [rec("a", offset) for offset in (1, 2, 3)]
    assert all(routes.hold("a", record, paused=False) for record in held)

    assert routes.lane_partitions(routes.cuts()) == {(SHARED, 0)}
    # The shared lane's group will read 41 next: the last forward is not processed yet.
    assert routes.complete_cuts({(SHARED, 0): 41}) == []
    assert routes.lanes.lane_of("a") is None
    assert routes.releasable(never) == []

    assert routes.complete_cuts({(SHARED, 0): 42}) == [move]
    assert routes.lanes.lane_of("a") == 1
    assert not routes.cutting("a")
    assert routes.releasable(never) == [("a", Hold(0, 1))]
    # Until the replay has caught up, a newer record waits behind the held ones.
    assert routes.hold("a", rec("a", 4), paused=False)
    routes.replayed("a", 3)  # the replay's forwards of 1 and 2 were acknowledged
    assert routes.releasable(never) == [("a", Hold(0, 3))]
    routes.replayed("a", 5)
    routes.end_hold("a")
    assert routes.releasable(never) == []
    assert not routes.hold("a", rec("a", 5), paused=False)


def test_a_tenant_with_nothing_forwarded_moves_at_once() -> None:
    routes = TenantRoutes(LaneAssignments(4))
    move = LaneMove("a", None, 2, "pinned", T0)
    routes.start_cut(move)

    assert routes.lane_partitions(routes.cuts()) == set()
    assert routes.complete_cuts({}) == [move]
    assert routes.lanes.lane_of("a") == 2


def test_other_tenants_are_never_held() -> None:
    routes = TenantRoutes(LaneAssignments(4))
    routes.forwarded("a", LanePosition(SHARED, 0, 7))
    routes.start_cut(LaneMove("a", None, 1, "rate_above_contract", T0))
    assert routes.hold("a", rec("a", 0), paused=False)
    assert routes.hold("p", rec("p", 1), paused=True)

    assert not routes.hold("b", rec("b", 2), paused=False)
    routes.forwarded("b", LanePosition(SHARED, 0, 8))
    assert not routes.hold("b", rec("b", 3), paused=False)
    assert routes.cuts() == ["a"]
    assert [tenant for tenant, _ in routes.releasable(never)] == ["p"]


def test_the_ingress_commit_passes_a_hold_only_once_it_is_persisted() -> None:
    routes = TenantRoutes(LaneAssignments(4))
    move = LaneMove("a", None, 1, "pinned", T0)
    routes.forwarded("a", LanePosition(SHARED, 0, 3))
    routes.start_cut(move)
    records = [rec("b", 10), rec("a", 11), rec("b", 12), rec("a", 13), rec("c", 5, partition=1)]
    held = [routes.hold((r.key or b"").decode(), r, paused=False) for r in records]
    assert held == [False, True, False, True, False]
    assert routes.hold_of("a") == Hold(0, 11)  # an offset, never the records

    assert routes.commit_offsets() == {}  # read, but no forward acknowledged yet
    routes.advance({0: 14, 1: 6})
    assert routes.commit_offsets() == {0: 11, 1: 6}
    routes.committed({0: 11, 1: 6})
    assert routes.commit_offsets() == {}  # nothing new to commit

    assert routes.unpersisted() == ["a"]
    routes.persisted("a", hold_of(routes, "a"), 11)
    assert routes.unpersisted() == []
    assert routes.commit_offsets() == {0: 14}  # a restart finds the hold in the tenant's state
    routes.committed({0: 14})

    # The replay's progress is persisted as it goes; meanwhile the older document covers it.
    assert routes.complete_cuts({(SHARED, 0): 4}) == [move]
    routes.replayed("a", 12)
    assert routes.unpersisted() == ["a"]
    assert routes.commit_offsets() == {}
    routes.persisted("a", hold_of(routes, "a"), 12)
    assert routes.unpersisted() == []


def test_a_late_acknowledgement_of_an_ended_hold_covers_no_new_one() -> None:
    """The state naming an old hold was overwritten by its end: it protects no later hold."""
    routes = TenantRoutes(LaneAssignments(4))
    assert routes.hold("p", rec("p", 5), paused=True)
    old = hold_of(routes, "p")
    routes.replayed("p", 6)
    routes.end_hold("p")
    assert routes.hold("p", rec("p", 9), paused=True)
    routes.advance({0: 10})

    routes.persisted("p", old, 6)
    assert routes.commit_offsets() == {0: 9}


def test_a_hold_reread_from_before_its_offset_starts_there_and_pins_the_commit() -> None:
    """After a restart the read loop may re-read a held tenant's records from before its
    persisted hold (forwarded, but perhaps never acknowledged): they wait with the rest."""
    routes = TenantRoutes(LaneAssignments(4))
    routes.restore_hold("p", 0, 20)
    routes.advance({0: 15})
    assert routes.commit_offsets() == {0: 15}

    assert routes.hold("p", rec("p", 16), paused=True)
    assert routes.hold_of("p") == Hold(0, 16, persisted=20)
    routes.advance({0: 30})
    assert routes.commit_offsets() == {0: 16}
    routes.persisted("p", hold_of(routes, "p"), 16)
    assert routes.commit_offsets() == {0: 30}


def test_a_paused_tenant_is_held_and_released_in_order_on_resume() -> None:
    routes = TenantRoutes(LaneAssignments(4))
    paused = {"p"}
    assert all(routes.hold("p", rec("p", offset), paused=True) for offset in (4, 5, 6))
    routes.advance({0: 7})

    assert routes.releasable(paused_in(paused)) == []
    assert routes.commit_offsets() == {0: 4}

    paused.clear()
    assert routes.hold("p", rec("p", 7), paused=False)  # resumed, but behind its held records
    assert routes.releasable(paused_in(paused)) == [("p", Hold(0, 4))]
    routes.replayed("p", 8)
    routes.end_hold("p")
    routes.advance({0: 8})
    assert routes.commit_offsets() == {0: 8}
    assert not routes.hold("p", rec("p", 8), paused=False)


def test_a_repeated_or_stale_completion_is_harmless() -> None:
    routes = TenantRoutes(LaneAssignments(4))
    routes.forwarded("a", LanePosition(SHARED, 0, 9))
    promote = LaneMove("a", None, 1, "rate_above_contract", T0)
    routes.start_cut(promote)
    assert routes.complete_cuts({(SHARED, 0): 10}) == [promote]

    assert routes.complete_cuts({(SHARED, 0): 10}) == []  # the same commits again
    assert routes.lanes.lane_of("a") == 1

    routes.forwarded("a", LanePosition(DEDICATED, 1, 30))
    demote = LaneMove("a", 1, None, "calm_and_drained", T0 + 200)
    routes.start_cut(demote)
    held = rec("a", 50)
    assert routes.hold("a", held, paused=False)
    # Commits read before the last forward (a stale answer) complete nothing.
    assert routes.complete_cuts({(SHARED, 0): 10, (DEDICATED, 1): 30}) == []
    assert routes.cutting("a")

    # The lane changed since the move was decided: the move is dropped, not applied, and the
    # held record goes to the lane the tenant is in.
    routes.lanes.restore("a", 2, T0 + 300)
    assert routes.complete_cuts({(DEDICATED, 1): 31}) == []
    assert not routes.cutting("a")
    assert routes.lanes.lane_of("a") == 2
    assert routes.releasable(never) == [("a", Hold(0, held.offset))]


def test_drained_allows_slack_for_a_lane_nearly_caught_up() -> None:
    routes = TenantRoutes(LaneAssignments(4))
    routes.forwarded("a", LanePosition(DEDICATED, 1, 100))

    assert routes.drained(["a", "new"], {(DEDICATED, 1): 60}, slack=50) == {"a", "new"}
    assert routes.drained(["a"], {(DEDICATED, 1): 60}, slack=40) == set()
    assert routes.drained(["a"], {(DEDICATED, 1): 100}) == set()
    assert routes.drained(["a"], {}) == set()  # no commit known: not drained


def test_after_a_restore_a_cut_waits_for_what_the_lanes_held_then() -> None:
    """The router forgot what it forwarded before a restart: a tenant counts as drained of
    each lane it may have records in only once that lane's group is past the lane's end at the
    restore."""
    lanes = LaneAssignments(4)
    routes = TenantRoutes(lanes)
    lanes.restore("a", 1, T0)
    routes.lane_ends({(SHARED, 0): 500, (DEDICATED, 1): 80, (SHARED, 1): 0})
    routes.expect_drain("a", [(SHARED, 0), (DEDICATED, 1)])

    assert routes.lane_partitions(["a"]) == {(SHARED, 0), (DEDICATED, 1)}
    assert routes.drained(["a"], {(SHARED, 0): 500, (DEDICATED, 1): 60}, slack=10) == set()
    assert routes.drained(["a"], {(SHARED, 0): 500, (DEDICATED, 1): 79}) == set()
    assert routes.drained(["a"], {(SHARED, 0): 500, (DEDICATED, 1): 80}) == {"a"}
    assert routes.lane_partitions(["a"]) == set()  # past them for good: forgotten

    # A tenant nobody knew at the restore and pinned right after it: its cut out of the shared
    # lane waits for the shared lane's backlog, not just for what was forwarded since.
    move = LaneMove("new", None, 2, "pinned", T0)
    routes.lane_ends({(SHARED, 1): 40})
    routes.start_cut(move, may_be_in=[(SHARED, 1)])
    routes.forwarded("new", LanePosition(SHARED, 1, 45))
    assert routes.complete_cuts({(SHARED, 1): 39}) == []
    assert routes.complete_cuts({(SHARED, 1): 46}) == [move]
    # Once a lane's group is past its end at the restore, later cuts do not wait for it.
    routes.start_cut(LaneMove("b", None, 3, "pinned", T0), may_be_in=[(SHARED, 1)])
    assert routes.complete_cuts({}) == [LaneMove("b", None, 3, "pinned", T0)]


def test_a_persisted_cut_resumes_unless_the_tenant_left_that_lane() -> None:
    lanes = LaneAssignments(4)
    routes = TenantRoutes(lanes)
    lanes.restore("a", 1, T0)
    routes.lane_ends({(DEDICATED, 1): 10})
    demote = LaneMove("a", 1, None, "calm_and_drained", T0)
    routes.restore_cut(demote, may_be_in=[(DEDICATED, 1)])
    routes.restore_hold("a", 0, 7)
    assert routes.cut_of("a") == demote
    assert routes.hold("a", rec("a", 8), paused=False)
    assert routes.complete_cuts({(DEDICATED, 1): 9}) == []
    assert routes.complete_cuts({(DEDICATED, 1): 10}) == [demote]
    assert routes.releasable(never) == [("a", Hold(0, 7, persisted=7))]

    routes.restore_cut(LaneMove("b", 2, None, "pinned", T0))  # b is in the shared lane
    assert not routes.cutting("b")


def test_a_forgotten_tenant_leaves_nothing_behind() -> None:
    lanes = LaneAssignments(4)
    routes = TenantRoutes(lanes)
    lanes.restore("a", 1, T0)
    routes.forwarded("a", LanePosition(DEDICATED, 1, 5))
    routes.start_cut(LaneMove("a", 1, None, "calm_and_drained", T0 + 200))
    assert routes.hold("a", rec("a", 10), paused=False)
    routes.forwarded("b", LanePosition(SHARED, 0, 6))
    routes.advance({0: 20})

    routes.forget("a")

    assert routes.tenants() == {"b"}
    assert lanes.lane_of("a") is None and lanes.placed() == []
    assert routes.last_forwarded("a") is None
    assert not routes.cutting("a") and routes.cuts() == []
    assert routes.releasable(never) == []
    assert routes.commit_offsets() == {0: 20}
    assert not routes.hold("a", rec("a", 21), paused=False)


def test_a_dropped_partition_is_no_longer_committed() -> None:
    routes = TenantRoutes(LaneAssignments(4))
    routes.advance({0: 5, 1: 7})
    routes.committed({0: 5, 1: 7})

    routes.drop_partitions([1])
    routes.advance({0: 6})
    assert routes.commit_offsets() == {0: 6}

    routes.advance({1: 7})  # owned again: committed again, whatever was committed before
    assert routes.commit_offsets() == {0: 6, 1: 7}


def test_a_commits_lane_marks_are_where_the_forwards_of_its_uncommitted_records_start() -> None:
    marks = LaneMarks()
    marks.written((SHARED, 0), 100)  # the lane's end at the restore
    marks.read(0, 10)  # a batch from ingress offset 10: its forwards land at 100 or later
    marks.written((SHARED, 0), 130)
    marks.written((DEDICATED, 1), 7)
    marks.read(0, 40)
    marks.written((SHARED, 0), 150)

    # A commit inside the first batch (a hold there): its later records may be at 100.
    assert marks.at(0, 25) == {(SHARED, 0): 100}
    assert marks.at(0, 40) == {(SHARED, 0): 130, (DEDICATED, 1): 7}
    assert marks.at(0, 25) == {(SHARED, 0): 130, (DEDICATED, 1): 7}  # older notes are dropped
    assert marks.at(1, 0) == {(SHARED, 0): 150, (DEDICATED, 1): 7}  # nothing read there: now


def test_records_found_forwarded_after_a_restore_are_skipped() -> None:
    found = Reforwarded()
    found.found(0, [5, 6])
    assert found.contains(0, 5) and found.contains(0, 6)
    assert not found.contains(0, 7) and not found.contains(1, 5)
    found.drop([0])
    assert not found.contains(0, 5)


TENANTS = ["a", "b", "c"]
STEPS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                *("record", "record", "record", "pause", "resume", "cut", "drain"),
                *("replay_part", "release", "persist", "crash"),
            ]
        ),
        st.sampled_from(TENANTS),
    ),
    max_size=80,
)


@given(STEPS)
def test_any_interleaving_keeps_each_tenants_order_and_loses_nothing(
    steps: list[tuple[str, str]],
) -> None:
    """A model of the router: records arrive, tenants are paused, resumed and cut over, lanes
    drain, holds are persisted and replayed from the ingress log (in part or to the end), and
    the router crashes and restores its holds and cuts from the persisted state."""
    lanes = LaneAssignments(2)
    routes = TenantRoutes(lanes)
    paused: set[str] = set()
    log: list[IngressRecord] = []  # the ingress partition
    sent: dict[str, list[int]] = {tenant: [] for tenant in TENANTS}  # forwards, in order
    documents: dict[str, int] = {}  # tenant -> the persisted hold's offset
    read = lane_offset = committed = 0

    def forward(tenant: str, record: IngressRecord) -> None:
        nonlocal lane_offset
        sent[tenant].append(record.offset)
        routes.forwarded(tenant, LanePosition(SHARED, 0, lane_offset))
        lane_offset += 1

    def read_record(record: IngressRecord) -> None:
        nonlocal read
        tenant = (record.key or b"").decode()
        if not routes.hold(tenant, record, paused=tenant in paused):
            forward(tenant, record)
        read = record.offset + 1
        routes.advance({0: read})

    def replay(tenant: str, hold: Hold, until: int) -> None:
        for record in log[hold.offset : until]:
            if record.key == tenant.encode():
                forward(tenant, record)
        routes.replayed(tenant, until)

    def release() -> None:
        for tenant, hold in routes.releasable(paused_in(paused)):
            replay(tenant, hold, read)
            routes.end_hold(tenant)
            documents.pop(tenant, None)  # the router persists the end at once

    for step, tenant in steps:
        if step == "record":
            log.append(rec(tenant, len(log)))
            read_record(log[-1])
        elif step == "pause":
            paused.add(tenant)
        elif step == "resume":
            paused.discard(tenant)
        elif step == "cut" and not routes.cutting(tenant):
            lane = lanes.lane_of(tenant)
            routes.start_cut(LaneMove(tenant, lane, 1 if lane is None else None, "pinned", T0))
        elif step == "drain":
            routes.complete_cuts({(SHARED, 0): lane_offset})
        elif step == "replay_part":
            for held, hold in routes.releasable(paused_in(paused)):
                replay(held, hold, (hold.offset + read + 1) // 2)
        elif step == "release":
            release()
        elif step == "persist":
            for held in routes.unpersisted():
                hold = routes.hold_of(held)
                assert hold is not None
                documents[held] = hold.offset
                routes.persisted(held, hold, hold.offset)
        elif step == "crash":
            cuts = [move for t in TENANTS if (move := routes.cut_of(t)) is not None]
            routes = TenantRoutes(lanes)
            for held, offset in documents.items():
                routes.restore_hold(held, 0, offset)
            for move in cuts:  # as if persisted with the hold
                routes.restore_cut(move)
            read = committed
            routes.advance({0: read})
            for record in log[committed:]:
                read_record(record)
        committed = routes.commit_offsets().get(0, committed)
        routes.committed({0: committed})
        forwarded = {offset for offsets in sent.values() for offset in offsets}
        for record in log[:committed]:  # a crash now re-forwards or replays, never loses
            tenant_of = (record.key or b"").decode()
            persisted_hold = documents.get(tenant_of)
            assert record.offset in forwarded or (
                persisted_hold is not None and persisted_hold <= record.offset
            )

    paused.clear()
    routes.complete_cuts({(SHARED, 0): lane_offset})
    release()
    for offsets in sent.values():
        first_seen = list(dict.fromkeys(offsets))  # a crash may forward a record again
        assert first_seen == sorted(first_seen)
    forwarded = sorted({offset for offsets in sent.values() for offset in offsets})
    assert forwarded == list(range(len(log)))
    assert routes.commit_offsets().get(0, committed) == len(log)


def test_a_cut_in_progress_can_be_sent_to_another_lane() -> None:
    """A spread (streams.placement) re-targets a promotion still waiting for its old lane."""
    routes = TenantRoutes(LaneAssignments(4))
    routes.forwarded("a", LanePosition(SHARED, 0, 41))
    routes.start_cut(LaneMove("a", None, 1, "rate_above_contract", T0))

    routes.retarget("a", 3)

    assert routes.complete_cuts({(SHARED, 0): 41}) == []  # still waits for the same drain
    assert routes.complete_cuts({(SHARED, 0): 42}) == [
        LaneMove("a", None, 3, "rate_above_contract", T0)
    ]
    assert routes.lanes.lane_of("a") == 3
    routes.retarget("a", 0)  # no cut in progress: nothing to re-target
    assert routes.lanes.lane_of("a") == 3
