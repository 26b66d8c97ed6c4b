"""The pure parts of bench/chaos.py: the fault plan and flood turns, the quiet tenants' longest
gap and p99 per second, spurious-promotion detection, rebalance counting and the targets. A
measure that cannot see what it measures would pass every run."""

from __future__ import annotations

from typing import Any

import pytest

from bench.chaos import (
    MAX_QUIET_GAP_S,
    count_rebalances,
    evaluate,
    first_arrivals,
    flood_turns,
    latencies,
    longest_gap,
    p99,
    p99_per_second,
    plan_faults,
    spurious,
    within,
)
from tests.harness.scale import Accepted, Delivery


def test_a_kill_every_period_and_the_other_faults_half_way_between_kills() -> None:
    plan = plan_faults(600, 60)
    kills = [at for at, kind in plan if kind == "kill"]
    assert kills == [60 * n for n in range(1, 10)]
    others = {kind: at for at, kind in plan if kind != "kill"}
    assert others == {"add": 150, "broker_restart": 270, "remove": 450}
    assert [at for at, _ in plan] == sorted(at for at, _ in plan)


def test_flooders_take_turns_and_each_floods_again_only_after_the_hold_down() -> None:
    turns = flood_turns(600)
    assert [index for _, _, index in turns] == [0, 1, 0, 1]
    assert all(end - start == 30 for start, end, _ in turns)
    starts = [start for start, _, _ in turns]
    assert starts[2] - starts[0] >= 120 + 30 + 30  # hold-down, the flood itself, a drain
    short = flood_turns(60)
    assert all(end - start == 5 and end <= 60 for start, end, _ in short)


def delivery(control_id: str | None, at_s: float, offset: int = 0) -> Delivery:
    return Delivery("t", "out", offset, control_id, f"key-{control_id}", int(at_s * 1000))


def test_a_latency_runs_from_the_accept_to_the_first_arrival() -> None:
    arrivals = first_arrivals(
        [delivery("a", 12.0), delivery("a", 10.5, 1), delivery(None, 1.0), delivery("b", 4.0)]
    )
    assert arrivals == {"a": 10.5, "b": 4.0}
    accepted = [
        Accepted("t", 0, "a", 10.0),
        Accepted("t", 1, "b", 4.5),  # out before its answer reached the sender
        Accepted("t", 2, "c", 11.0),  # never out: no latency (it is lost, counted elsewhere)
    ]
    assert latencies(accepted, arrivals) == [(10.0, 0.5), (4.5, 0.0)]


def test_p99_is_nearest_rank_and_per_second_buckets_by_accept_second() -> None:
    assert p99([]) is None
    assert p99([5.0]) == 5.0
    assert p99(float(v) for v in range(1, 101)) == 99.0
    assert p99(float(v) for v in range(1, 201)) == 198.0
    samples = [(100.2, 0.1), (100.9, 0.3), (101.0, 2.0), (103.5, 0.2)]
    assert p99_per_second(samples, t0=100.0) == [(0, 0.3), (1, 2.0), (3, 0.2)]


def test_the_longest_gap_is_while_messages_wait_and_nothing_comes_out() -> None:
    # Steady: each message out 0.1 s after its accept, one a second: gaps of 0.1 s only.
    steady = [(float(t), t + 0.1) for t in range(10)]
    assert longest_gap(steady)[0] == pytest.approx(0.1)
    # A stall: messages accepted at 10..19 all come out at 30; nothing came out from 10 to 30.
    stalled = steady + [(float(t), 30.0) for t in range(10, 20)]
    length, start = longest_gap(stalled)
    assert (length, start) == (pytest.approx(20.0), 10.0)


def test_no_gap_while_nothing_waits() -> None:
    # The sender was idle (paused, refused) from 1 to 50: nothing waited, so no gap.
    idle = [(0.0, 0.2), (1.0, 1.2), (50.0, 50.3)]
    assert longest_gap(idle)[0] == pytest.approx(0.3)
    assert longest_gap([]) == (0.0, None)


def test_a_gap_ends_at_an_arrival_of_any_waiting_message() -> None:
    # The first message waits from 0 to 20, but another comes out at 8: gaps 8 and 12.
    waits = [(0.0, 20.0), (7.0, 8.0)]
    assert longest_gap(waits) == (pytest.approx(12.0), 8.0)


def test_time_in_an_uncounted_window_is_left_out_of_a_gap() -> None:
    waits = [(0.0, 0.5), (1.0, 40.0), (41.0, 41.5)]  # nothing out from 1 to 40
    assert longest_gap(waits) == (pytest.approx(39.0), 1.0)
    assert longest_gap(waits, [(5.0, 35.0)]) == (pytest.approx(9.0), 1.0)
    assert longest_gap(waits, [(30.0, 60.0)]) == (pytest.approx(29.0), 1.0)
    assert longest_gap(waits, [(100.0, 200.0)]) == (pytest.approx(39.0), 1.0)


def move(tenant: str, reason: str, at: str = "2026-12-02T08:00:00") -> dict[str, Any]:
    return {"tenant": tenant, "from": None, "to": 1, "reason": reason, "at": at}


def test_a_spurious_promotion_is_one_for_rate_of_a_tenant_that_never_burst() -> None:
    moves = [
        move("flood", "rate_above_contract"),  # it burst
        move("quiet", "rate_above_contract"),  # spurious
        move("quiet", "rate_above_contract"),  # the same move, read twice
        move("quiet", "rate_above_contract", at="2026-12-02T08:05:00"),  # spurious again
        move("churn", "pinned"),  # an admin's pin, not the traffic
        move("flood", "calm_and_drained"),
    ]
    found = spurious(moves, bursting={"flood"})
    assert [(m["tenant"], m["at"]) for m in found] == [
        ("quiet", "2026-12-02T08:00:00"),
        ("quiet", "2026-12-02T08:05:00"),
    ]
    assert spurious(moves[:1] + moves[4:], bursting={"flood"}) == []


def test_rebalances_are_counted_from_polled_group_states() -> None:
    a, b, c = frozenset("a"), frozenset("ab"), frozenset("abc")
    samples = [
        ("Stable", b),
        ("Stable", b),
        ("PreparingRebalance", b),  # one rebalance, seen in two states
        ("CompletingRebalance", c),
        ("Stable", c),
        ("Stable", b),  # one over between two polls: the members changed
        ("Dead", frozenset()),  # the broker restarting: no sample says anything
        ("Stable", b),
        ("PreparingRebalance", b),
        ("Stable", a),  # one more
    ]
    assert count_rebalances(samples) == 3
    assert count_rebalances([("Stable", a), ("Stable", a)]) == 0


def test_a_moment_is_within_a_fault_window_inclusive() -> None:
    windows = [(10.0, 30.0), (50.0, 55.0)]
    assert within(10.0, windows) and within(30.0, windows) and within(52.0, windows)
    assert not within(40.0, windows) and not within(9.9, windows)


def clean() -> dict[str, Any]:
    return {
        "lost": 0,
        "order_violations": 0,
        "duplicates_without_same_key": 0,
        "spurious_promotions": 0,
        "max_quiet_gap_s": MAX_QUIET_GAP_S,
    }


def test_the_targets_pass_a_clean_run_and_fail_on_each_miss() -> None:
    assert all(evaluate(clean()).values())
    for key, bad in (
        ("lost", 1),
        ("order_violations", 2),
        ("duplicates_without_same_key", 1),
        ("spurious_promotions", 1),
        ("max_quiet_gap_s", MAX_QUIET_GAP_S + 0.01),
        ("max_quiet_gap_s", None),
    ):
        verdict = evaluate({**clean(), key: bad})
        assert [name for name, met in verdict.items() if not met] == [
            name for name in verdict if name.startswith(key)
        ], (key, bad)
