"""Lane policy: promotion, hold-down demotion, pins, lane choice, the lazy LaneAssignments, and
the policy fed by the volume windows across a failover."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.lanes import (
    LaneAssignment,
    LaneAssignments,
    LaneMove,
    LanePolicy,
    choose_lane,
    decide,
    drain_share,
)
from streams.volume import TenantVolumes

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


# ---------------------------------------------------------------- failover (issue 14, point 3)

CONTRACT = 100.0  # msg/s
STEADY = 50.0  # about half the contract: the tenants a restore used to promote all at once
READ_BATCH = 1000  # records per pass of the router's read loop, a pass every 0.1 s
EVALUATE_EVERY = 5  # passes: the router decides every 0.5 s


@dataclass(frozen=True)
class Written:
    at: float  # when the record reached ingress
    stamp: float  # its timestamp: `at`, but for an ingest worker whose clock is off


def written(start: float, end: float, rate: float, skew: float = 0.0) -> list[Written]:
    return [
        Written(start + k / rate, start + k / rate + skew) for k in range(int((end - start) * rate))
    ]


class ReplayRouter:
    """One tenant's ingress partition read and decided as `agents.lanes.router` does: a pass
    every 0.1 s reads up to READ_BATCH records that exist by then, in ingress order, and counts
    each at its timestamp capped at the router's clock; every EVALUATE_EVERY passes it decides."""

    def __init__(self, tenant: str, partition: list[Written]) -> None:
        self.tenant = tenant
        self.partition = sorted(partition, key=lambda record: record.at)
        self.volumes = TenantVolumes()
        self.assignments = LaneAssignments()
        self.read = 0  # the router's position in the partition
        self.moves: list[LaneMove] = []
        self.recent_rates: list[float] = []

    def start_at(self, at: float) -> None:
        """Commit position: the first record written at `at` or later is read next."""
        self.read = next(i for i, record in enumerate(self.partition) if record.at >= at)

    def run(self, start: float, until: float) -> None:
        for tick in range(round((until - start) * 10)):
            now = start + tick / 10
            batch_end = min(self.read + READ_BATCH, len(self.partition))
            while self.read < batch_end and self.partition[self.read].at <= now:
                self.volumes.record(self.tenant, min(self.partition[self.read].stamp, now), 300)
                self.read += 1
            if tick % EVALUATE_EVERY == 0:
                self.evaluate(now)

    def evaluate(self, now: float) -> None:
        recent_rate = self.volumes.recent_rate(self.tenant, now)
        self.recent_rates.append(recent_rate)
        move = decide(
            self.assignments.assignment(self.tenant),
            recent_rate=recent_rate,
            rate_10s=self.volumes.snapshot(self.tenant, now).rate_10s,
            contract_rate=CONTRACT,
            now=now,
            backlog_empty=True,
            lane_loads=self.assignments.loads(),
            policy=POLICY,
        )
        if move is not None:
            self.assignments.apply(move)
            self.moves.append(move)

    def fail_over_to(self, restored_at: float, committed_at: float) -> ReplayRouter:
        """The router that adopts the tenant at `restored_at` from this one's last state, and
        reads again from this one's last ingress commit."""
        state = self.volumes.state(self.tenant)
        assert state is not None
        successor = ReplayRouter(self.tenant, self.partition)
        successor.volumes.restore(self.tenant, state, restored_at)
        successor.start_at(committed_at)
        return successor


def crash_and_restore(
    partition: list[Written], backlog_s: float, commit_lag_s: float
) -> tuple[ReplayRouter, float]:
    """5 min on a first router, which persists at `persisted`, dies 0.6 s later with its ingress
    commit `commit_lag_s` behind the state; the next router adopts the tenant `backlog_s` later.
    Returns the next router and the time it restored at."""
    first = ReplayRouter("t", partition)
    persisted = T0 + 300
    first.run(T0, persisted)
    successor = first.fail_over_to(persisted + 0.6 + backlog_s, persisted - commit_lag_s)
    first.run(persisted, persisted + 0.6)  # counted, but never persisted: lost with the router
    assert first.moves == []
    return successor, persisted + 0.6 + backlog_s


@pytest.mark.parametrize("backlog_s", [12, 30, 120])
@pytest.mark.parametrize("commit_lag_s", [-0.4, 0.4, 5.0])
def test_a_failover_never_promotes_a_tenant_that_did_not_burst(
    backlog_s: float, commit_lag_s: float
) -> None:
    end = T0 + 300 + backlog_s + 60
    partition = written(T0, end, STEADY)
    successor, restored_at = crash_and_restore(partition, backlog_s, commit_lag_s)
    successor.run(restored_at, end + 1)
    assert successor.read == len(partition)  # the backlog was read, and the live traffic after
    assert successor.moves == []
    assert max(successor.recent_rates) <= STEADY * 1.05


def test_an_ingest_clock_ahead_does_not_promote_across_a_failover() -> None:
    # Two ingest workers write the tenant's records; one clock is 2 s ahead of the router's.
    skew, end = 2.0, T0 + 400
    partition = written(T0, end, STEADY / 2) + written(T0, end, STEADY / 2, skew=skew)
    successor, restored_at = crash_and_restore(partition, 30, 0.4)
    successor.run(restored_at, end)
    assert successor.moves == []
    # Read live, that clock's records are counted at the router's clock. In a backlog, the
    # router caps the ones stamped after its clock at it: the clock's last `skew` seconds of
    # records count in the second the router catches up, at most, and never more.
    assert max(successor.recent_rates) <= STEADY + skew * STEADY / 2
    assert successor.recent_rates[-1] == pytest.approx(STEADY, rel=0.1)


@pytest.mark.parametrize(
    ("burst_from", "promoted_within_s"),
    [
        (T0 + 320, 2.0),  # during the outage, and on: once the backlog is read
        (T0 + 360, 1.5),  # after the restore: decisions every 0.5 s, a 2-s window
    ],
)
def test_a_real_burst_across_a_failover_is_still_promoted(
    burst_from: float, promoted_within_s: float
) -> None:
    end = T0 + 400
    partition = written(T0, burst_from, STEADY) + written(burst_from, end, 6 * CONTRACT)
    successor, restored_at = crash_and_restore(partition, 30, 0.4)
    successor.run(restored_at, end)
    [move] = successor.moves
    assert (move.from_lane, move.reason) == (None, "rate_above_contract")
    assert move.at - max(burst_from, restored_at) <= promoted_within_s


@pytest.mark.parametrize(
    ("held", "lanes", "share"),
    [(4, 4, 800.0), (2, 4, 400.0), (1, 4, 200.0), (3, 4, 600.0), (0, 4, 0.0), (5, 4, 800.0)],
)
def test_a_lane_worker_drains_its_share_of_the_budget_by_lanes_held(
    held: int, lanes: int, share: float
) -> None:
    assert drain_share(800.0, held, lanes) == share


def test_lane_workers_together_never_exceed_the_budget() -> None:
    for split in ([4], [2, 2], [1, 3], [1, 1, 1, 1], [1, 1, 2]):
        assert sum(drain_share(1000.0, held, 4) for held in split) == pytest.approx(1000.0)


def test_a_spread_keeps_the_reason_a_tenant_is_in_a_dedicated_lane() -> None:
    assignments = LaneAssignments(4)
    assignments.apply(LaneMove("p", None, 1, "pinned", T0))
    assignments.apply(LaneMove("p", 1, 2, "spread", T0 + 1))
    assignments.apply(LaneMove("h", None, 1, "rate_above_contract", T0))
    assignments.apply(LaneMove("h", 1, 3, "spread", T0 + 1))

    assert assignments.assignment("p").pin_held
    assert not assignments.assignment("h").pin_held
    assert (assignments.lane_of("p"), assignments.lane_of("h")) == (2, 3)
