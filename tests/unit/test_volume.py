"""Rolling volume windows: bucket semantics, rates, idleness, persistence, lazy TenantVolumes."""

from __future__ import annotations

import json
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.volume import SECOND_BUCKETS, TenantVolume, TenantVolumes

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
            # gap: mostly short, some long, some back in time (a record read late)
            st.one_of(st.floats(0, 3), st.floats(0, 5000), st.floats(-4000, 0)),
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
    at = start
    for gap, is_dlq, nbytes in steps:
        at = max(0.0, at + gap)  # times since the epoch
        if is_dlq:
            volume.record_dlq(at)
        else:
            volume.record(at, nbytes=nbytes)
        events.append((at, is_dlq, nbytes))
    now = max((t for t, _, _ in events), default=start) + read_after
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
    assert snap.last_message_at == max((t for t, d, _ in events if not d), default=None)


@settings(max_examples=150, deadline=None)
@given(
    start=st.floats(0, 2e9),
    gaps=st.lists(st.one_of(st.floats(0.001, 3), st.floats(0.001, 500)), min_size=1, max_size=80),
    data=st.data(),
)
def test_a_restore_then_a_re_read_from_any_earlier_record_counts_each_message_once(
    start: float, gaps: list[float], data: st.DataObject
) -> None:
    """A router counts messages in ingress (time) order, persists after `persisted` of them and
    dies; the next restores the state at any later time and reads again from any record up to
    there (its last ingress commit). Each message counts once in the minute windows and totals;
    the 10-s and 1-min windows hold exactly what came after the state."""
    times = [start + sum(gaps[: i + 1]) for i in range(len(gaps))]
    persisted = data.draw(st.integers(1, len(times)), label="persisted")
    committed = data.draw(st.integers(0, persisted), label="committed")
    restored_at = times[persisted - 1] + data.draw(st.floats(0, 4000), label="restore delay")
    now = max(times[-1], restored_at) + data.draw(st.floats(0, 100), label="read after")

    state = counted(TenantVolumes(), times[:persisted]).state(TENANT)
    assert state is not None
    restored = TenantVolumes()
    restored.restore(TENANT, json.loads(json.dumps(state)), restored_at)
    counted(restored, times[committed:])
    live, after_state = counted(TenantVolumes(), times), counted(TenantVolumes(), times[persisted:])

    got, want, fresh = (v.snapshot(TENANT, now) for v in (restored, live, after_state))
    assert (got.bytes_5m, got.bytes_1h, got.received) == (want.bytes_5m, want.bytes_1h, len(times))
    assert got.last_message_at == times[-1]
    assert (got.bytes_10s, got.bytes_1m) == (fresh.bytes_10s, fresh.bytes_1m)
    assert restored.recent_rate(TENANT, now) == pytest.approx(after_state.recent_rate(TENANT, now))


def test_a_clock_step_back_counts_at_its_own_time_and_reads_never_go_back() -> None:
    volume = TenantVolume()
    volume.record(T0 + 5.5)
    volume.record(T0 + 2.0)  # NTP stepped the clock back
    snap = volume.rates(T0 + 5.9)
    assert snap.rate_10s == pytest.approx(2 / 9.9)
    assert volume.recent_rate(T0 + 5.9, seconds=4) == pytest.approx(2 / 3.9)
    assert volume.recent_rate(T0 + 5.9, seconds=3) == pytest.approx(1 / 2.9)
    assert volume.recent_rate(T0 + 1.0, seconds=1) == 1.0  # read "now" counts as T0 + 5
    assert snap.last_message_at == T0 + 5.5


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


# ---------------------------------------------------------------- failover: restore, then backlog

TENANT = "acme"
RATE = 50  # msg/s, steady
NBYTES = 100


def sent_between(start: float, end: float, per_s: float = RATE) -> list[float]:
    """Record times of a steady sender from `start` (included) to `end` (excluded)."""
    return [start + k / per_s for k in range(round((end - start) * per_s))]


def counted(volumes: TenantVolumes, times: list[float]) -> TenantVolumes:
    """The router counts each record at its ingress timestamp, whenever it reads it."""
    for at in times:
        volumes.record(TENANT, at, NBYTES)
    return volumes


def assert_counted_once(
    restored: TenantVolumes, live: TenantVolumes, now: float, backlog_s: float
) -> None:
    """`restored` reads as `live`, a router that never stopped, where it can: every message
    counted once, in the minute windows, the totals and, once the backlog after the state spans
    the 10-s window, in what the lane policy reads (the recent rate and the 10-s window). The
    1-s and 10-s buckets are not persisted: before that, those windows read less, never more."""
    got, want = restored.snapshot(TENANT, now), live.snapshot(TENANT, now)
    assert (got.rate_5m, got.rate_1h) == pytest.approx((want.rate_5m, want.rate_1h))
    assert (got.bytes_5m, got.bytes_1h) == (want.bytes_5m, want.bytes_1h)
    assert (got.received, got.last_message_at) == (want.received, want.last_message_at)
    policy_reads = [
        (restored.recent_rate(TENANT, now, seconds), live.recent_rate(TENANT, now, seconds))
        for seconds in (1, 2, 10)
    ] + [(got.rate_10s, want.rate_10s), (got.bytes_10s, want.bytes_10s)]
    for restored_read, live_read in policy_reads:
        if backlog_s >= SECOND_BUCKETS:
            assert restored_read == pytest.approx(live_read)
        else:
            assert restored_read <= live_read + 1e-9
    assert got.rate_1m <= want.rate_1m + 1e-9  # its 10-s buckets are not persisted either


def test_a_backlog_read_after_a_restore_counts_at_its_record_times() -> None:
    """Issue 14: 30 s of backlog at 50 msg/s used to read as ~1,500 msg/s after a failover."""
    persisted_at = T0 + 300  # the old router counted 5 min of traffic, persisted, and died
    before = sent_between(T0, persisted_at)
    state = counted(TenantVolumes(), before).state(TENANT)
    assert state is not None
    restored_at = persisted_at + 30  # the new router adopts the tenant 30 s later
    now = restored_at + 0.5  # and has read the whole backlog half a second after that
    backlog = sent_between(persisted_at, now)
    restored = TenantVolumes()
    restored.restore(TENANT, json.loads(json.dumps(state)), restored_at)
    counted(restored, backlog)

    assert restored.recent_rate(TENANT, now) == pytest.approx(RATE)
    assert restored.snapshot(TENANT, now).rate_10s == pytest.approx(RATE)
    assert_counted_once(restored, counted(TenantVolumes(), before + backlog), now, 30)


def test_records_counted_before_the_crash_are_not_counted_twice() -> None:
    # The old router persisted at `persisted_at`, but its ingress commit was 5 s behind (a held
    # record pins it, or the commit failed): the new router reads those 5 s again.
    persisted_at = T0 + 300
    committed_at = persisted_at - 5
    state = counted(TenantVolumes(), sent_between(T0, persisted_at)).state(TENANT)
    assert state is not None
    restored = TenantVolumes()
    restored.restore(TENANT, state, persisted_at + 20)
    now = persisted_at + 20.5
    counted(restored, sent_between(committed_at, now))
    assert_counted_once(restored, counted(TenantVolumes(), sent_between(T0, now)), now, 20)
    assert restored.snapshot(TENANT, now).received == RATE * (now - T0)


def test_a_backlog_shorter_than_a_second_after_the_state_counts_exactly() -> None:
    # Restored within the second the state was written in: no second counted twice or lost.
    persisted_at = T0 + 60.37
    state = counted(TenantVolumes(), sent_between(T0, persisted_at)).state(TENANT)
    assert state is not None
    restored = TenantVolumes()
    restored.restore(TENANT, state, persisted_at + 0.1)
    now = persisted_at + 0.5
    counted(restored, sent_between(T0 + 59, now))  # re-read from a commit a second back
    live = counted(TenantVolumes(), sent_between(T0, now))
    assert_counted_once(restored, live, now, now - persisted_at)
    # The second the state was written in reads its messages after the state only.
    assert restored.recent_rate(TENANT, now, seconds=1) == pytest.approx(RATE * 0.5 / 1)


def test_a_dlq_record_counted_at_the_readers_clock_does_not_drag_the_backlog_along() -> None:
    # The router counts DLQ records when the lane emits them (its own clock) while it is still
    # catching up with older ingress records.
    state = counted(TenantVolumes(), sent_between(T0, T0 + 120)).state(TENANT)
    assert state is not None
    restored = TenantVolumes()
    restored.restore(TENANT, state, T0 + 150)
    backlog = sent_between(T0 + 120, T0 + 150.5)
    counted(restored, backlog[:100])
    restored.record_dlq(TENANT, T0 + 150.2)
    counted(restored, backlog[100:])
    live = counted(TenantVolumes(), sent_between(T0, T0 + 150.5))
    live.record_dlq(TENANT, T0 + 150.2)
    assert_counted_once(restored, live, T0 + 150.5, 30.5)


def test_a_sender_whose_clock_runs_ahead_does_not_cram_the_backlog_into_its_second() -> None:
    # Two ingest workers write the tenant's records to the same partition; one clock is 3 s
    # ahead of the other. Read late, in partition order, each record counts at its own time.
    skew = 3.0
    persisted_at, end = T0 + 120, T0 + 150
    honest = [(at, at) for at in sent_between(T0, end, per_s=30)]  # (written at, stamped)
    ahead = [(at, at + skew) for at in sent_between(T0, end, per_s=20)]
    in_partition_order = [stamped for _, stamped in sorted(honest + ahead)]
    cut = sum(1 for written, _ in honest + ahead if written < persisted_at)
    state = counted(TenantVolumes(), in_partition_order[:cut]).state(TENANT)
    assert state is not None
    restored = TenantVolumes()
    restored.restore(TENANT, state, end)
    counted(restored, in_partition_order[cut:])
    now = end + skew  # the reader's clock is past every stamp: none is capped
    live = counted(TenantVolumes(), in_partition_order)
    for seconds in (1, 2, 10):
        assert restored.recent_rate(TENANT, now, seconds) == pytest.approx(
            live.recent_rate(TENANT, now, seconds)
        )
    assert restored.snapshot(TENANT, now).rate_10s == pytest.approx(40)  # 6 s x 30 + 9 s x 20
    # The re-read ends at the first record stamped after the state: the slow clock's records
    # before it go uncounted (here one), none is counted twice.
    missed = live.snapshot(TENANT, now).received - restored.snapshot(TENANT, now).received
    assert 0 <= missed <= 30 * skew


def test_a_state_from_a_clock_ahead_of_ours_neither_skips_nor_crams_later_records() -> None:
    # The old router's clock ran 30 s ahead: its newest counted record is in our future.
    state = counted(TenantVolumes(), sent_between(T0 + 30, T0 + 330)).state(TENANT)
    assert state is not None
    restored = TenantVolumes()
    restored.restore(TENANT, state, T0 + 300)
    counted(restored, sent_between(T0 + 301, T0 + 320))
    now = T0 + 320
    assert restored.recent_rate(TENANT, now) == pytest.approx(RATE)
    assert restored.snapshot(TENANT, now).rate_10s == pytest.approx(RATE)
    assert restored.snapshot(TENANT, now).received == RATE * (300 + 19)


def test_a_late_record_counts_in_the_windows_that_still_hold_its_time() -> None:
    volume = TenantVolume()
    steady(volume, T0, 120, 1, nbytes=1)
    volume.record(T0 + 95, nbytes=10)  # 25 s late: past the 10-s window, inside the others
    volume.record(T0 - 7200, nbytes=1000)  # 2 h late: older than every window
    snap = volume.rates(T0 + 120)
    assert (snap.bytes_10s, snap.bytes_1m, snap.bytes_5m, snap.bytes_1h) == (9, 60, 130, 130)
    assert snap.received == 122  # both were received, now
    assert snap.last_message_at == T0 + 119
