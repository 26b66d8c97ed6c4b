"""Lane policy: promotion, hold-down demotion, pins, lane choice and the lazy LaneAssignments."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.lanes import LaneAssignment, LaneAssignments, LaneMove, LanePolicy, choose_lane, decide

POLICY = LanePolicy()  # promote above max(4 x contract, 20/s); calm below 1 x contract for 120 s
T0 = 1_700_000_000.0


@dataclass(frozen=True)
class Sample:
    at: float
    rate: float  # used as both the recent rate and the 10-s rate
    backlog_empty: bool = True


def step(
    assignments: LaneAssignments,
    tenant: str,
    sample: Sample,
    contract: float = 10.0,
    policy: LanePolicy = POLICY,
) -> LaneMove | None:
    """One evaluation as the router runs it: decide, then apply."""
    move = decide(
        assignments.assignment(tenant),
        recent_rate=sample.rate,
        rate_10s=sample.rate,
        contract_rate=contract,
        now=sample.at,
        backlog_empty=sample.backlog_empty,
        lane_loads=assignments.loads(),
        policy=policy,
    )
    if move is not None:
        assignments.apply(move)
    return move


def run(
    assignments: LaneAssignments, tenant: str, samples: list[Sample], contract: float = 10.0
) -> list:
    return [m for s in samples if (m := step(assignments, tenant, s, contract)) is not None]


def every_half_second(start: float, seconds: float, rate: float, **kw: bool) -> list[Sample]:
    return [Sample(start + k / 2, rate, **kw) for k in range(int(seconds * 2))]


# ---------------------------------------------------------------- promotion


def test_promotes_when_the_recent_rate_is_far_above_the_contract() -> None:
    assignments = LaneAssignments()
    assert step(assignments, "t", Sample(T0, 40.0)) is None  # 4 x 10/s is not above 4 x 10/s
    move = step(assignments, "t", Sample(T0 + 1, 40.5))
    assert move == LaneMove(
        "t", None, choose_lane("t", [0, 0, 0, 0]), "rate_above_contract", T0 + 1
    )
    assert assignments.lane_of("t") == move.to_lane


def test_never_promotes_below_the_minimum_rate() -> None:
    assignments = LaneAssignments()
    assert (
        step(assignments, "t", Sample(T0, 20.0), contract=1.0) is None
    )  # 20x the contract, but 20/s
    assert step(assignments, "t", Sample(T0, 20.5), contract=1.0) is not None


# ---------------------------------------------------------------- demotion


def test_demotes_after_a_calm_hold_down_once_drained() -> None:
    assignments = LaneAssignments()
    step(assignments, "t", Sample(T0, 100.0))
    assert run(assignments, "t", every_half_second(T0 + 1, 120, 5.0)) == []  # calm for 119.5 s
    assert run(assignments, "t", [Sample(T0 + 121, 5.0, backlog_empty=False)]) == []
    moves = run(assignments, "t", [Sample(T0 + 121.5, 5.0)])
    assert moves == [LaneMove("t", moves[0].from_lane, None, "calm_and_drained", T0 + 121.5)]
    assert assignments.lane_of("t") is None
    assert len(assignments) == 0  # back in the shared lane: nothing stored


def test_any_busy_moment_restarts_the_hold_down() -> None:
    assignments = LaneAssignments()
    step(assignments, "t", Sample(T0, 100.0))
    assert run(assignments, "t", every_half_second(T0 + 1, 100, 5.0)) == []
    assert step(assignments, "t", Sample(T0 + 101, 10.0)) is None  # at the contract: not calm
    assert assignments.assignment("t").calm_since is None
    assert run(assignments, "t", every_half_second(T0 + 102, 119, 5.0)) == []
    assert run(assignments, "t", [Sample(T0 + 222, 5.0)]) != []


# ---------------------------------------------------------------- hysteresis properties

phase = st.tuples(
    st.floats(0.5, POLICY.hold_down_s - 1),  # every phase is shorter than the hold-down
    st.floats(0, 1),  # where in its band the rate sits
)


@settings(max_examples=200, deadline=None)
@given(
    contract=st.floats(1, 200),
    high_first=st.booleans(),
    phases=st.lists(phase, min_size=1, max_size=40),
)
def test_oscillating_faster_than_the_hold_down_never_flaps(
    contract: float, high_first: bool, phases: list[tuple[float, float]]
) -> None:
    promote_at = max(POLICY.promote_factor * contract, POLICY.promote_min_rate)
    assignments = LaneAssignments()
    moves = []
    start = T0
    for index, (duration, level) in enumerate(phases):
        high = (index % 2 == 0) == high_first
        rate = promote_at * (1.01 + 9 * level) if high else promote_at * level
        moves += run(assignments, "t", every_half_second(start, duration, rate), contract)
        start += duration
    assert len([m for m in moves if m.to_lane is not None]) <= 1
    assert [m for m in moves if m.to_lane is None] == []


@settings(max_examples=200, deadline=None)
@given(
    contract=st.floats(1, 50),
    samples=st.lists(
        st.tuples(
            st.floats(0.1, 60),  # gap to the previous evaluation
            st.sampled_from([0.0, 0.5, 0.99, 1.0, 2.0, 4.0, 4.01, 50.0]),  # x contract
            st.booleans(),  # backlog empty
        ),
        max_size=120,
    ),
)
def test_demotion_needs_an_unbroken_calm_hold_down_and_a_drained_lane(
    contract: float, samples: list[tuple[float, float, bool]]
) -> None:
    assignments = LaneAssignments()
    at = T0
    trace: list[Sample] = []
    for gap, factor, drained in samples:
        at += gap
        trace.append(Sample(at, factor * contract, drained))
    promoted_index = None
    for index, sample in enumerate(trace):
        move = step(assignments, "t", sample, contract)
        if move is not None and move.to_lane is not None:
            promoted_index = index
        if move is not None and move.to_lane is None:
            assert promoted_index is not None and sample.backlog_empty
            streak = _calm_tail(trace[promoted_index + 1 : index + 1], contract)
            assert streak and sample.at - streak[0].at >= POLICY.hold_down_s


def _calm_tail(samples: list[Sample], contract: float) -> list[Sample]:
    """The unbroken run of calm samples at the end of `samples`."""
    tail: list[Sample] = []
    for sample in reversed(samples):
        if sample.rate >= POLICY.calm_factor * contract:
            break
        tail.append(sample)
    return tail[::-1]


# ---------------------------------------------------------------- pins


def test_a_dedicated_pin_moves_a_quiet_tenant_at_once_and_keeps_it() -> None:
    assignments = LaneAssignments()
    assignments.pin("t", "dedicated", lane=6)  # beyond the pool of 4: wraps to lane 2
    move = step(assignments, "t", Sample(T0, 0.0))
    assert move == LaneMove("t", None, 2, "pinned", T0)
    assert run(assignments, "t", every_half_second(T0 + 1, 300, 0.0)) == []
    assert assignments.lane_of("t") == 2


def test_a_dedicated_pin_without_a_lane_keeps_the_current_one() -> None:
    assignments = LaneAssignments()
    step(assignments, "t", Sample(T0, 100.0))
    lane = assignments.lane_of("t")
    assignments.pin("t", "dedicated")
    assert run(assignments, "t", every_half_second(T0 + 1, 300, 0.0)) == []
    assert assignments.lane_of("t") == lane


def test_a_shared_pin_moves_a_hot_tenant_back_once_drained() -> None:
    assignments = LaneAssignments()
    step(assignments, "t", Sample(T0, 100.0))
    assignments.pin("t", "shared")
    assert step(assignments, "t", Sample(T0 + 1, 100.0, backlog_empty=False)) is None
    move = step(assignments, "t", Sample(T0 + 2, 100.0))
    assert move is not None and (move.to_lane, move.reason) == (None, "pinned")
    assert run(assignments, "t", every_half_second(T0 + 3, 60, 1000.0)) == []  # never promoted
    assert len(assignments) == 1  # the pin itself is remembered


def test_moving_between_pinned_lanes_waits_for_the_drain() -> None:
    assignments = LaneAssignments()
    assignments.pin("t", "dedicated", lane=0)
    step(assignments, "t", Sample(T0, 0.0))
    assignments.pin("t", "dedicated", lane=3)
    assert step(assignments, "t", Sample(T0 + 1, 0.0, backlog_empty=False)) is None
    assert step(assignments, "t", Sample(T0 + 2, 0.0)) == LaneMove("t", 0, 3, "pinned", T0 + 2)


def test_unpinning_a_calm_tenant_returns_it_to_the_shared_lane_once_drained() -> None:
    assignments = LaneAssignments()
    assignments.pin("t", "dedicated")
    step(assignments, "t", Sample(T0, 0.0))
    assignments.pin("t", "auto")
    assert step(assignments, "t", Sample(T0 + 1, 5.0, backlog_empty=False)) is None
    move = step(assignments, "t", Sample(T0 + 2, 5.0))
    assert move is not None and (move.to_lane, move.reason) == (None, "unpinned")
    assert len(assignments) == 0


def test_unpinning_a_hot_tenant_leaves_it_to_the_traffic_rules() -> None:
    assignments = LaneAssignments()
    assignments.pin("t", "dedicated")
    step(assignments, "t", Sample(T0, 0.0))
    assignments.pin("t", "auto")
    assert step(assignments, "t", Sample(T0 + 1, 100.0)) is None
    assert not assignments.assignment("t").pin_held
    # From now on only a full calm hold-down brings it back.
    assert run(assignments, "t", every_half_second(T0 + 2, 120, 5.0)) == []
    assert [m.reason for m in run(assignments, "t", [Sample(T0 + 122.5, 5.0)])] == [
        "calm_and_drained"
    ]


def test_a_lane_index_needs_a_dedicated_pin() -> None:
    with pytest.raises(ValueError):
        LaneAssignments().pin("t", "shared", lane=1)


# ---------------------------------------------------------------- lane choice


def test_lane_choice_is_stable_across_processes() -> None:
    # Golden values: Python's salted hash() would change them from run to run.
    assert [choose_lane(t, [0, 0, 0, 0]) for t in ("st-marys", "acme", "tenant-0")] == [2, 3, 2]
    assert [choose_lane(t, [0] * 8) for t in ("st-marys", "acme", "tenant-0")] == [6, 3, 2]


@given(st.text(min_size=1, max_size=40), st.integers(2, 16))
def test_the_two_choices_are_distinct_and_the_less_loaded_wins(tenant: str, lanes: int) -> None:
    first = choose_lane(tenant, [0] * lanes)
    loads = [0] * lanes
    loads[first] = 1
    second = choose_lane(tenant, loads)
    assert second != first
    loads[second] = 2
    assert choose_lane(tenant, loads) == first


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_two_noisy_tenants_share_a_lane_only_when_forced(first: str, second: str) -> None:
    loads = [0, 0, 0, 0]
    loads[choose_lane(first, loads)] += 1
    assert loads[choose_lane(second, loads)] == 0
    assert choose_lane(second, [1]) == 0  # one lane: no choice


def test_lane_choice_spreads_tenants_evenly() -> None:
    first_choices = Counter(choose_lane(f"tenant-{i}", [0, 0, 0, 0]) for i in range(4000))
    assert all(900 <= first_choices[lane] <= 1100 for lane in range(4))
    loads = [0] * 4
    for i in range(400):
        loads[choose_lane(f"noisy-{i}", loads)] += 1
    assert max(loads) - min(loads) <= 2


# ---------------------------------------------------------------- the assignments


def test_lane_assignments_stores_only_tenants_outside_the_shared_lane_or_pinned() -> None:
    assignments = LaneAssignments(dedicated_lanes=2)
    assert assignments.assignment("quiet") == LaneAssignment("quiet")
    assignments.pin("quiet", "auto")
    assert len(assignments) == 0
    assignments.apply(LaneMove("a", None, 1, "rate_above_contract", T0))
    assignments.apply(LaneMove("b", None, 1, "rate_above_contract", T0))
    assignments.pin("c", "shared")
    assert (assignments.lane_of("a"), assignments.lane_of("c"), assignments.lane_of("quiet")) == (
        1,
        None,
        None,
    )
    assert assignments.loads() == [0, 2]
    assert sorted(assignments.placed()) == ["a", "b", "c"]
    assert assignments.assignment("a").moved_at == T0
    assignments.apply(LaneMove("a", 1, None, "calm_and_drained", T0 + 200))
    assert sorted(assignments.placed()) == ["b", "c"]


def test_lane_assignments_refuses_a_stale_move() -> None:
    assignments = LaneAssignments()
    assignments.apply(LaneMove("a", None, 1, "rate_above_contract", T0))
    with pytest.raises(ValueError):
        assignments.apply(LaneMove("a", None, 2, "rate_above_contract", T0 + 1))


def test_lane_assignments_restores_persisted_lanes() -> None:
    assignments = LaneAssignments()
    assignments.restore("a", 3, T0)
    assignments.restore("b", None, None)
    assert (assignments.lane_of("a"), assignments.assignment("a").moved_at, len(assignments)) == (
        3,
        T0,
        1,
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"calm_factor": 5.0},
        {"hold_down_s": -1.0},
        {"dedicated_lanes": 0},
    ],
)
def test_policies_without_a_hysteresis_band_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        LanePolicy(**kwargs)
