"""Rolling volume windows: bucket semantics, rates, idleness, persistence, lazy TenantVolumes."""

from __future__ import annotations

import json
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.volume import TenantVolume, TenantVolumes

T0 = 1_700_000_040.0  # a whole minute since the epoch: windows start aligned

# (window name, bucket width in s, buckets): the resolution documented in streams.volume
WINDOWS = [("10s", 1, 10), ("1m", 10, 6), ("5m", 60, 5), ("1h", 60, 60)]


def steady(volume: TenantVolume, start: float, seconds: int, per_s: int, nbytes: int) -> float:
    """`per_s` evenly spaced messages per second for `seconds`; returns the time after."""
    for tick in range(seconds * per_s):
        volume.record(start + tick / per_s, nbytes=nbytes)
    return start + seconds


def test_steady_traffic_reads_its_rate_in_every_window() -> None:
    volume = TenantVolume()
    end = steady(volume, T0, 3600, 20, nbytes=100)
    snap = volume.rates(end)  # a new, empty second: each window spans N - 1 whole buckets
    for rate in (snap.rate_10s, snap.rate_1m, snap.rate_5m, snap.rate_1h):
        assert rate == pytest.approx(20)
    assert snap.bytes_10s == 20 * 100 * 9
    assert snap.bytes_1h == 20 * 100 * 59 * 60
    mid_second = volume.rates(end + 0.5)  # half a second more of span, no more messages
    assert mid_second.rate_10s == pytest.approx(20 * 9 / 9.5)
    assert snap.received == 3600 * 20
    assert snap.last_message_at == pytest.approx(end - 1 / 20)


def test_windows_empty_one_after_another_once_traffic_stops() -> None:
    volume = TenantVolume()
    end = steady(volume, T0, 600, 10, nbytes=1)
    after_10s = volume.rates(end + 10)
    assert after_10s.rate_10s == 0
    assert after_10s.rate_1m > 0
    after_1m = volume.rates(end + 60)
    assert after_1m.rate_1m == 0
    assert after_1m.rate_5m > 0
    after_5m = volume.rates(end + 300)
    assert after_5m.rate_5m == 0
    assert after_5m.rate_1h > 0
    assert volume.rates(end + 3600).rate_1h == 0
    assert volume.rates(end + 3600).received == 6000  # totals outlive the windows


def test_dlq_records_are_counted_per_window_apart_from_messages() -> None:
    volume = TenantVolume()
    volume.record(T0, nbytes=10)
    volume.record_dlq(T0 + 1, n=3)
    volume.record_dlq(T0 + 30)
    snap = volume.rates(T0 + 30.5)
    assert (snap.dlq_10s, snap.dlq_1m, snap.dlq_5m, snap.dlq_1h, snap.dlq) == (1, 4, 4, 4, 4)
    assert snap.received == 1
    assert snap.last_message_at == T0  # a DLQ record is not a message


def test_recent_rate_is_the_current_partial_second_plus_whole_seconds_before() -> None:
    volume = TenantVolume()
    volume.record(T0 + 0.2)
    volume.record(T0 + 0.5)
    volume.record(T0 + 1.3)
    # 3 messages in second T0 and the first half of T0 + 1: 1.5 s covered.
    assert volume.recent_rate(T0 + 1.5, seconds=2) == pytest.approx(3 / 1.5)
    # Only the current second, which is half gone: divided by at least one second.
    assert volume.recent_rate(T0 + 1.5, seconds=1) == pytest.approx(1.0)
    assert volume.recent_rate(T0 + 3.0) == 0


def test_a_message_just_after_a_second_boundary_is_not_a_huge_rate() -> None:
    volume = TenantVolume()
    volume.record(T0 + 0.001)
    assert volume.recent_rate(T0 + 0.001, seconds=1) == 1.0
    assert volume.recent_rate(T0 + 0.001, seconds=2) == pytest.approx(1 / 1.001)


@pytest.mark.parametrize("seconds", [0, 11])
def test_recent_rate_reaches_back_one_to_ten_seconds(seconds: int) -> None:
    with pytest.raises(ValueError):
        TenantVolume().recent_rate(T0, seconds)


@settings(max_examples=150, deadline=None)
@given(
    start=st.floats(0, 2e9),
    steps=st.lists(
        st.tuples(
            st.one_of(st.floats(0, 3), st.floats(0, 5000)),  # gap: mostly short, some long
            st.booleans(),  # a DLQ record rather than a message
            st.integers(0, 10_000),  # bytes
        ),
        max_size=60,
    ),
    read_after=st.floats(0, 4000),
)
def test_windows_match_a_brute_force_count(
    start: float, steps: list[tuple[float, bool, int]], read_after: float
) -> None:
    volume = TenantVolume()
    events: list[tuple[float, bool, int]] = []
    now = start
    for gap, is_dlq, nbytes in steps:
        now += gap
        if is_dlq:
            volume.record_dlq(now)
        else:
            volume.record(now, nbytes=nbytes)
        events.append((now, is_dlq, nbytes))
    now += read_after
    snap = volume.rates(now)
    for name, width, buckets in WINDOWS:
        # Exactly the events whose bucket is one of the newest `buckets` (whole seconds).
        inside = [e for e in events if int(e[0]) // width > int(now) // width - buckets]
        messages = sum(1 for _, is_dlq, _ in inside if not is_dlq)
        assert getattr(snap, f"bytes_{name}") == sum(b for _, is_dlq, b in inside if not is_dlq)
        assert getattr(snap, f"dlq_{name}") == sum(1 for _, is_dlq, _ in inside if is_dlq)
        span = max((buckets - 1) * width + now % width, width)
        assert getattr(snap, f"rate_{name}") == pytest.approx(messages / span)
        # The documented resolution: everything of the last N-1 buckets' worth of time is in,
        # nothing older than N buckets' worth.
        recent = sum(1 for t, d, _ in events if not d and t > now - (buckets - 1) * width + 1e-6)
        reach = sum(1 for t, d, _ in events if not d and t > now - buckets * width - 1e-6)
        assert recent <= messages <= reach
    assert snap.received == sum(1 for e in events if not e[1])
    assert snap.dlq == sum(1 for e in events if e[1])


def test_a_clock_step_back_counts_as_the_newest_second() -> None:
    volume = TenantVolume()
    volume.record(T0 + 5.5)
    volume.record(T0 + 2.0)  # NTP stepped the clock back
    snap = volume.rates(T0 + 5.9)
    assert snap.rate_10s == pytest.approx(2 / 9.9)
    assert volume.recent_rate(T0 + 1.0, seconds=1) == 2.0  # read "now" counts as T0 + 5


def test_state_survives_json_and_restores_the_minute_windows() -> None:
    volume = TenantVolume()
    end = steady(volume, T0, 900, 5, nbytes=40)
    volume.record_dlq(end - 100, n=2)
    state = json.loads(json.dumps(volume.to_state()))
    restored = TenantVolume.from_state(state, end)
    before, after = volume.rates(end), restored.rates(end)
    assert (after.rate_5m, after.rate_1h) == (before.rate_5m, before.rate_1h)
    assert (after.bytes_5m, after.bytes_1h) == (before.bytes_5m, before.bytes_1h)
    assert (after.dlq_5m, after.dlq_1h) == (before.dlq_5m, before.dlq_1h) == (2, 2)
    assert (after.received, after.dlq, after.last_message_at) == (
        before.received,
        before.dlq,
        before.last_message_at,
    )
    # The 1-s and 10-s detail is not persisted: those windows start over.
    assert (after.rate_10s, after.rate_1m, after.bytes_10s, after.dlq_1m) == (0, 0, 0, 0)
    restored.record(end + 1, nbytes=40)
    assert restored.rates(end + 1.5).received == before.received + 1


def test_state_includes_the_current_second() -> None:
    volume = TenantVolume()
    volume.record(T0 + 0.1, nbytes=7)
    restored = TenantVolume.from_state(volume.to_state(), T0 + 0.2)
    assert restored.rates(T0 + 0.3).bytes_1h == 7


def test_state_from_a_clock_ahead_of_ours_is_moved_back_to_now() -> None:
    volume = TenantVolume()
    end = steady(volume, T0 + 1800, 600, 2, nbytes=1)  # the writer's clock is 30 min ahead
    restored = TenantVolume.from_state(volume.to_state(), T0 + 600)
    assert restored.rates(T0 + 600).bytes_1h == volume.rates(end).bytes_1h == 1200
    restored.record(T0 + 601)  # our clock, behind the writer's, keeps counting normally
    assert restored.rates(T0 + 601.5).bytes_1h == 1200
    assert restored.rates(T0 + 601.5).received == 1201


def test_restoring_an_old_state_keeps_totals_but_no_windows() -> None:
    volume = TenantVolume()
    steady(volume, T0, 60, 1, nbytes=1)
    restored = TenantVolume.from_state(volume.to_state(), T0 + 2 * 3600)
    rates = restored.rates(T0 + 2 * 3600)
    assert (rates.rate_1h, rates.bytes_1h, rates.dlq_1h, rates.received) == (0, 0, 0, 60)


def test_tenant_volumes_creates_volumes_only_on_traffic() -> None:
    volumes = TenantVolumes()
    assert volumes.snapshot("quiet", T0).rate_1h == 0
    assert volumes.snapshot("quiet", T0).last_message_at is None
    assert volumes.recent_rate("quiet", T0) == 0
    assert volumes.state("quiet") is None
    assert len(volumes) == 0
    volumes.record("busy", T0, 300)
    volumes.record_dlq("broken", T0)
    assert len(volumes) == 2
    assert volumes.snapshot("busy", T0 + 0.5).bytes_10s == 300
    assert volumes.snapshot("broken", T0 + 0.5).dlq_10s == 1


def test_tenant_volumes_restore_never_overwrites_live_counts() -> None:
    volumes = TenantVolumes()
    volumes.record("a", T0, 5)
    state = volumes.state("a")
    assert state is not None
    volumes.record("a", T0 + 1, 5)
    volumes.restore("a", state, T0 + 2)
    volumes.restore("b", state, T0 + 2)
    assert volumes.snapshot("a", T0 + 2).bytes_1h == 10
    assert volumes.snapshot("b", T0 + 2).bytes_1h == 5


def test_an_active_tenant_costs_under_3_5_kb() -> None:
    tenants = [f"tenant-{i:05d}" for i in range(2000)]  # ids exist before measuring
    volumes = TenantVolumes()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for second in range(70):  # every ring has been written and advanced
            for tenant in tenants:
                volumes.record(tenant, T0 + second, 1_000_000)
        for tenant in tenants:
            volumes.record_dlq(tenant, T0 + 70)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used / len(tenants) < 3500
