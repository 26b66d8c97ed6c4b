"""GCRA contracts: burst semantics, delays, the contract bound, and the lazy rate table."""

from __future__ import annotations

import math
from itertools import accumulate

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.gcra import Gcra, RateTable

T0 = 1_700_000_000.0

rates = st.floats(0.5, 5000)
bursts = st.integers(1, 50)
starts = st.floats(0, 2e9)


def within_contract(times: list[float], rate: float, burst: int) -> bool:
    """At most rate * (b - a) + burst of the sorted `times` in every interval [a, b]."""
    slack = 1e-6 * rate + 1e-9  # the documented 1-µs float tolerance, per message
    for first, start in enumerate(times):
        for last in range(first, len(times)):
            if last - first + 1 > rate * (times[last] - start) + burst + slack:
                return False
    return True


def conforms(limiter: Gcra, now: float, n: int = 1) -> bool:
    """A caller that refuses (rather than holds) what would have to wait: only what it lets
    through is admitted, so `delay` and `admit` must keep the contract for such a caller too."""
    if limiter.delay(now, n) > 0:
        return False
    assert limiter.admit(now, n) == 0
    return True


def test_burst_messages_pass_back_to_back_then_one_per_interval() -> None:
    limiter = Gcra(rate_per_s=10, burst=3)
    assert [conforms(limiter, T0) for _ in range(4)] == [True, True, True, False]
    assert limiter.delay(T0) == pytest.approx(0.1, abs=1e-6)  # epoch floats: ~0.2 µs steps
    assert not conforms(limiter, T0 + 0.05)
    assert conforms(limiter, T0 + 0.1)
    assert not conforms(limiter, T0 + 0.1)


def test_a_refused_message_does_not_count() -> None:
    limiter = Gcra(rate_per_s=1, burst=1)
    assert conforms(limiter, T0)
    for _ in range(100):
        assert not conforms(limiter, T0 + 0.5)
    assert limiter.delay(T0 + 0.5) == pytest.approx(0.5, abs=1e-6)
    assert conforms(limiter, T0 + 1)


def test_a_batch_conforms_only_whole() -> None:
    limiter = Gcra(rate_per_s=100, burst=10)
    assert conforms(limiter, T0, n=8)
    assert not conforms(limiter, T0, n=3)
    assert limiter.delay(T0, n=3) == pytest.approx(0.01, abs=1e-6)
    assert conforms(limiter, T0, n=2)


def test_a_batch_larger_than_the_burst_never_conforms() -> None:
    limiter = Gcra(rate_per_s=100, burst=10)
    assert limiter.delay(T0, n=11) == math.inf
    assert not conforms(limiter, T0 + 1000, n=11)
    assert conforms(limiter, T0 + 1000, n=10)


def test_admit_always_counts_and_says_how_long_to_hold() -> None:
    limiter = Gcra(rate_per_s=10, burst=2)
    holds = [limiter.admit(T0) for _ in range(5)]
    assert holds == pytest.approx([0, 0, 0.1, 0.2, 0.3], abs=1e-6)
    # After the held messages went out, a calm sender is on time again.
    assert limiter.admit(T0 + 1.0) == 0
    assert limiter.admit(T0 + 1.0) == 0


def test_admit_counts_a_batch_as_its_size() -> None:
    limiter = Gcra(rate_per_s=100, burst=50)
    assert limiter.admit(T0, n=50) == 0  # the whole burst at once
    # 30 more are due 0.3 s later; the next 20 wait for those as well.
    assert limiter.admit(T0, n=30) == pytest.approx(0.3, abs=1e-6)
    assert limiter.admit(T0, n=20) == pytest.approx(0.5, abs=1e-6)
    assert limiter.admit(T0 + 2.0, n=50) == 0


def test_a_new_contract_keeps_the_debt() -> None:
    limiter = Gcra(rate_per_s=1, burst=1)
    for _ in range(10):
        limiter.admit(T0)  # 9 s of debt at 1 msg/s
    limiter.set_contract(1000, 5)
    assert (limiter.rate_per_s, limiter.burst) == (1000, 5)
    assert not conforms(limiter, T0 + 1)
    assert conforms(limiter, T0 + 10)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (math.inf, 1), (math.nan, 1), (1, 0)])
def test_invalid_contracts_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        Gcra(rate, burst)


@settings(max_examples=200, deadline=None)
@given(
    rate=rates,
    burst=bursts,
    start=starts,
    arrivals=st.lists(
        st.tuples(st.floats(0, 0.5), st.integers(1, 5)),  # (gap in units of 1/rate, batch)
        min_size=1,
        max_size=80,
    ),
)
def test_conforming_messages_never_exceed_rate_times_duration_plus_burst(
    rate: float, burst: int, start: float, arrivals: list[tuple[float, int]]
) -> None:
    limiter = Gcra(rate, burst)
    accepted: list[float] = []
    now = start
    for gap, batch in arrivals:
        now += gap / rate
        if conforms(limiter, now, batch):
            accepted.extend([now] * batch)
    assert within_contract(accepted, rate, burst)


@settings(max_examples=200, deadline=None)
@given(rate=rates, burst=bursts, start=starts, slower=st.floats(1, 3), count=st.integers(1, 300))
def test_a_steady_sender_at_or_below_the_rate_always_conforms(
    rate: float, burst: int, start: float, slower: float, count: int
) -> None:
    limiter = Gcra(rate, burst)
    interval = slower / rate
    assert all(conforms(limiter, start + k * interval) for k in range(count))


@settings(max_examples=200, deadline=None)
@given(
    rate=rates,
    burst=bursts,
    start=starts,
    gaps=st.lists(st.floats(0, 3), min_size=1, max_size=80),  # in units of 1/rate
)
def test_admit_holds_messages_just_long_enough_to_keep_the_contract(
    rate: float, burst: int, start: float, gaps: list[float]
) -> None:
    limiter = Gcra(rate, burst)
    released: list[float] = []
    for now in accumulate((gap / rate for gap in gaps), initial=start):
        expected = limiter.delay(now)
        hold = limiter.admit(now)
        assert hold == expected  # no longer than `delay` said
        released.append(now + hold)
    assert released == sorted(released)  # in arrival order
    assert within_contract(released, rate, burst)


def test_a_greedy_sender_gets_rate_times_duration_plus_burst() -> None:
    limiter = Gcra(rate_per_s=50, burst=20)
    attempts = [T0 + k / 1000 for k in range(10_001)]  # every millisecond, 10 s inclusive
    accepted = sum(conforms(limiter, now) for now in attempts)
    assert accepted == 50 * 10 + 20


def test_rate_table_gives_each_tenant_its_own_limiter_with_its_contract() -> None:
    table = RateTable(default_rate_per_s=10, default_burst=1)
    table.set_contract("big", 1000, 100)
    assert all(table.limiter("big").admit(T0) == 0 for _ in range(100))
    assert table.limiter("small").admit(T0) == 0
    assert table.limiter("small").admit(T0) == pytest.approx(0.1, abs=1e-6)
    assert (table.limiter("big").rate_per_s, table.limiter("big").burst) == (1000, 100)


def test_rate_table_applies_a_changed_contract_to_a_live_limiter() -> None:
    table = RateTable(default_rate_per_s=1, default_burst=1)
    table.limiter("t").admit(T0)
    table.set_contract("t", 100, 10)
    assert table.limiter("t").burst == 10
    assert table.limiter("t").admit(T0 + 1) == 0


def test_rate_table_gives_a_contract_set_before_the_first_message_to_its_limiter() -> None:
    table = RateTable(default_rate_per_s=10, default_burst=1)
    table.set_contract("custom", 2, 3)
    assert (table.limiter("custom").rate_per_s, table.limiter("custom").burst) == (2, 3)


def test_rate_table_refuses_invalid_contracts() -> None:
    with pytest.raises(ValueError):
        RateTable(default_rate_per_s=0, default_burst=1)
    with pytest.raises(ValueError):
        RateTable(10, 1).set_contract("t", 10, 0)
