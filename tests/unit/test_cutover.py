"""The router's cut-over and hold bookkeeping (streams.cutover): drain first, holds, commits."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st

from streams.cutover import LanePosition, TenantRoutes
from streams.lanes import LaneAssignments, LaneMove
from streams.processing import IngressRecord

SHARED = "laneway.lane.shared"
DEDICATED = "laneway.lane.dedicated"
T0 = 1_700_000_000.0


def rec(tenant: str, offset: int, partition: int = 0) -> IngressRecord:
    return IngressRecord(tenant.encode(), b"MSH|", "laneway.ingress", partition, offset, 0)


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
    assert routes.releasable(never) == [("a", held)]
    # Until those forwards are acknowledged, a newer record waits behind them.
    assert routes.hold("a", rec("a", 4), paused=False)
    routes.released("a", len(held))
    assert routes.releasable(never) == [("a", [rec("a", 4)])]
    routes.released("a", 1)
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


def test_the_ingress_commit_stops_at_the_first_held_record_and_unacknowledged_forwards() -> None:
    routes = TenantRoutes(LaneAssignments(4))
    move = LaneMove("a", None, 1, "pinned", T0)
    routes.forwarded("a", LanePosition(SHARED, 0, 3))
    routes.start_cut(move)
    records = [rec("b", 10), rec("a", 11), rec("b", 12), rec("a", 13), rec("c", 5, partition=1)]
    for record in records:
        routes.hold((record.key or b"").decode(), record, paused=False)

    assert routes.commit_offsets() == {}  # read, but no forward acknowledged yet
    routes.advance({0: 14, 1: 6})
    assert routes.commit_offsets() == {0: 11, 1: 6}
    routes.committed({0: 11, 1: 6})
    assert routes.commit_offsets() == {}  # nothing new to commit

    assert routes.complete_cuts({(SHARED, 0): 4}) == [move]
    assert routes.releasable(never) == [("a", [records[1], records[3]])]
    assert routes.commit_offsets() == {}  # released, but not acknowledged yet
    routes.released("a", 1)
    assert routes.commit_offsets() == {0: 13}
    routes.released("a", 1)
    assert routes.commit_offsets() == {0: 14}


def test_a_paused_tenant_is_held_and_released_in_order_on_resume() -> None:
    routes = TenantRoutes(LaneAssignments(4))
    paused = {"p"}
    held = [rec("p", offset) for offset in (4, 5, 6)]
    assert all(routes.hold("p", record, paused=True) for record in held)
    routes.advance({0: 7})

    assert routes.releasable(paused_in(paused)) == []
    assert routes.commit_offsets() == {0: 4}

    paused.clear()
    assert routes.hold("p", rec("p", 7), paused=False)  # resumed, but behind its held records
    assert routes.releasable(paused_in(paused)) == [("p", [*held, rec("p", 7)])]
    routes.released("p", 4)
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
    assert routes.releasable(never) == [("a", [held])]


def test_drained_allows_slack_for_a_lane_nearly_caught_up() -> None:
    routes = TenantRoutes(LaneAssignments(4))
    routes.forwarded("a", LanePosition(DEDICATED, 1, 100))

    assert routes.drained(["a", "new"], {(DEDICATED, 1): 60}, slack=50) == {"a", "new"}
    assert routes.drained(["a"], {(DEDICATED, 1): 60}, slack=40) == set()
    assert routes.drained(["a"], {(DEDICATED, 1): 100}) == set()
    assert routes.drained(["a"], {}) == set()  # no commit known: not drained


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


TENANTS = ["a", "b", "c"]
STEPS = st.lists(
    st.tuples(
        st.sampled_from(["record", "record", "pause", "resume", "cut", "drain", "release"]),
        st.sampled_from(TENANTS),
    ),
    max_size=80,
)


@given(STEPS)
def test_any_interleaving_keeps_each_tenants_order_and_commits_only_what_was_sent(
    steps: list[tuple[str, str]],
) -> None:
    """A model of the router: records arrive, tenants are paused, resumed and cut over, lanes
    drain and held records are released in any order."""
    routes = TenantRoutes(LaneAssignments(2))
    paused: set[str] = set()
    sent: dict[str, list[int]] = {tenant: [] for tenant in TENANTS}  # ingress offsets, in order
    waiting = dict.fromkeys(TENANTS, 0)  # records held and not yet released
    read = lane_offset = committed = 0

    def forward(tenant: str, record: IngressRecord) -> None:
        nonlocal lane_offset
        sent[tenant].append(record.offset)
        routes.forwarded(tenant, LanePosition(SHARED, 0, lane_offset))
        lane_offset += 1

    def release() -> None:
        for tenant, records in routes.releasable(paused_in(paused)):
            for record in records:
                forward(tenant, record)
            routes.released(tenant, len(records))
            waiting[tenant] -= len(records)

    for step, tenant in steps:
        if step == "record":
            record = rec(tenant, read)
            must_wait = tenant in paused or routes.cutting(tenant) or waiting[tenant] > 0
            held = routes.hold(tenant, record, paused=tenant in paused)
            assert held == must_wait
            if held:
                waiting[tenant] += 1
            else:
                forward(tenant, record)
            read += 1
            routes.advance({0: read})
        elif step == "pause":
            paused.add(tenant)
        elif step == "resume":
            paused.discard(tenant)
        elif step == "cut" and not routes.cutting(tenant):
            lane = routes.lanes.lane_of(tenant)
            routes.start_cut(LaneMove(tenant, lane, 1 if lane is None else None, "pinned", T0))
        elif step == "drain":
            routes.complete_cuts({(SHARED, 0): lane_offset})
        elif step == "release":
            release()
        committed = routes.commit_offsets().get(0, committed)
        routes.committed({0: committed})
        all_sent = {offset for offsets in sent.values() for offset in offsets}
        assert set(range(committed)) <= all_sent  # a crash now re-forwards, never loses

    paused.clear()
    routes.complete_cuts({(SHARED, 0): lane_offset})
    release()
    assert all(offsets == sorted(offsets) for offsets in sent.values())
    assert sorted(offset for offsets in sent.values() for offset in offsets) == list(range(read))
    assert routes.commit_offsets().get(0, committed) == read
