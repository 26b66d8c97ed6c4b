"""Rolling volume windows per tenant: pure, bucketed, allocated only for tenants with traffic.

Time is always passed in (`now`, seconds since the epoch), never read here.

Resolution. Each window is read from a ring of fixed-width buckets:

    window   bucket   buckets   also serves
    10 s     1 s      10        `recent_rate` (last 1..10 s)
    1 min    10 s     6
    5 min    1 min    5 of 60
    1 h      1 min    60

A window of N buckets is the current, partial bucket plus the N - 1 whole buckets before it, so
it covers between (N - 1) and N bucket widths of real time (10 s: 9-10 s; 1 min: 50-60 s;
5 min: 4-5 min; 1 h: 59-60 min). Counts (messages, bytes, DLQ records) are over that span, and a
rate divides by exactly that span, so a steady rate is measured without bias; the error is at the
far edge only: a burst leaves a window up to one bucket width early.

Hot path. `record` touches plain attributes only: the current second's counts live in three
ints and reach the rings once per second (when a later second starts, or before any read).

Record time. A message counts at its own time (the router passes the ingress timestamp, capped
at its own clock), not at the time it is read. A record older than the current second (a
backlog read after a restart, another ingest worker's clock a little behind) goes straight into
the buckets of its own second, in each window that still reaches back that far; one older than
every window counts in the totals only. So a backlog read late is never mistaken for a flood.

Restore. A persisted state holds every message up to its newest one (`last_message_at`). After
a restart the router reads ingress again from its last commit, which may be older: messages
stamped at or before that newest one are taken as counted already, until the first message
stamped after it ends the re-read. Ingress order is time order but for the skew between ingest
clocks; with skew, a few of the slower clock's messages right after the state may go uncounted,
never any counted twice.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import asdict, dataclass
from typing import Any

SECOND_BUCKETS = 10  # 1-s buckets: the 10-s window and `recent_rate`
TEN_SECOND_BUCKETS = 6  # 10-s buckets: the 1-min window
MINUTE_BUCKETS = 60  # 1-min buckets: the 5-min and 1-h windows; the part that is persisted

_FIELDS = 3  # per bucket: messages, bytes, DLQ records
_NEVER = -(1 << 62)  # head of a ring nothing was written to: older than any real bucket
_NO_TIME = -math.inf


@dataclass(frozen=True, slots=True)
class VolumeSnapshot:
    """One tenant's windows at one instant. Rates in messages per second."""

    rate_10s: float
    rate_1m: float
    rate_5m: float
    rate_1h: float
    bytes_10s: int
    bytes_1m: int
    bytes_5m: int
    bytes_1h: int
    dlq_10s: int
    dlq_1m: int
    dlq_5m: int
    dlq_1h: int
    received: int  # messages since this volume was created (or restored)
    dlq: int  # DLQ records since this volume was created (or restored)
    last_message_at: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _zeros(buckets: int) -> array[int]:
    return array("q", bytes(8 * _FIELDS * buckets))


class _Ring:
    """(messages, bytes, DLQ) per bucket of `width` seconds, for the newest `size` buckets.

    Stale buckets are cleared lazily, when a write moves the head past them; reads ignore
    buckets outside the window instead of clearing them, so reading never mutates. A write to a
    bucket older than the head lands in its own bucket, or nowhere if the ring no longer holds it.
    """

    __slots__ = ("_counts", "_head", "_size", "_width")

    def __init__(self, size: int, width: int) -> None:
        self._counts = _zeros(size)
        self._size = size
        self._width = width
        self._head = _NEVER  # index (bucket widths since the epoch) of the newest written bucket

    def add(self, second: int, messages: int, nbytes: int, dlq: int) -> None:
        """Count into the bucket of `second`, unless it is older than every bucket kept."""
        bucket = second // self._width
        if bucket > self._head:
            self._advance(bucket)
        elif bucket <= self._head - self._size:
            return
        slot = bucket % self._size * _FIELDS
        counts = self._counts
        counts[slot] += messages
        counts[slot + 1] += nbytes
        counts[slot + 2] += dlq

    def _advance(self, bucket: int) -> None:
        if bucket - self._head >= self._size:
            self._counts = _zeros(self._size)
        else:
            for stale in range(self._head + 1, bucket + 1):
                slot = stale % self._size * _FIELDS
                self._counts[slot : slot + _FIELDS] = _zeros(1)
        self._head = bucket

    def totals(self, now: float, buckets: int) -> tuple[int, int, int]:
        """(messages, bytes, DLQ) in the `buckets` newest buckets, up to the one holding `now`."""
        newest = int(now) // self._width
        oldest = max(newest - buckets + 1, self._head - self._size + 1)
        newest = min(newest, self._head)  # buckets after the head hold stale counts
        if oldest > newest:
            return 0, 0, 0
        first = oldest % self._size * _FIELDS
        end = (newest % self._size + 1) * _FIELDS
        counts = self._counts
        window = counts[first:end] if first < end else counts[first:] + counts[:end]
        return sum(window[0::_FIELDS]), sum(window[1::_FIELDS]), sum(window[2::_FIELDS])

    def span(self, now: float, buckets: int) -> float:
        """Seconds a window of `buckets` buckets covers at `now`; at least one bucket width."""
        return max((buckets - 1) * self._width + now % self._width, self._width)

    def state(self) -> list[int]:
        return [self._head, *self._counts]


class TenantVolume:
    """Messages, bytes and DLQ records of one tenant over the rolling windows (~2.7 KB)."""

    __slots__ = (
        "_bytes",
        "_counted_until",
        "_dlq",
        "_dlq_total",
        "_from",
        "_messages",
        "_minutes",
        "_newest",
        "_received",
        "_roll_at",
        "_second",
        "_seconds",
        "_tens",
    )

    def __init__(self) -> None:
        # Counts of second `_second`, not yet in the rings: those of records timed from `_from`
        # up to `_roll_at`, when the next second starts. Earlier ones are late (`_count_late`).
        self._messages = 0
        self._bytes = 0
        self._dlq = 0
        self._second = _NEVER
        self._from = _NO_TIME
        self._roll_at = _NO_TIME
        self._seconds = _Ring(SECOND_BUCKETS, 1)
        self._tens = _Ring(TEN_SECOND_BUCKETS, 10)
        self._minutes = _Ring(MINUTE_BUCKETS, 60)
        self._received = 0
        self._dlq_total = 0
        self._newest = _NO_TIME  # time of the newest message counted
        self._counted_until = _NO_TIME  # after a restore: messages up to here are in the state

    @property
    def last_message_at(self) -> float | None:
        return None if self._newest == _NO_TIME else self._newest

    def record(self, at: float, messages: int = 1, nbytes: int = 0) -> None:
        """Count messages of time `at` (a record's own time, not when it is read)."""
        if at >= self._roll_at:
            self._roll(at)
            self._counted_until = _NO_TIME  # a message newer than any restored: re-read over
        elif at < self._from:
            self._count_late(at, messages, nbytes)
            return
        self._messages += messages
        self._bytes += nbytes
        if at > self._newest:
            self._newest = at

    def record_dlq(self, at: float, n: int = 1) -> None:
        if at >= self._roll_at:
            self._roll(at)
        elif at < self._from:
            self._add(int(at), 0, 0, n)
            return
        self._dlq += n

    def recent_rate(self, now: float, seconds: int = 2) -> float:
        """Messages per second in the current second plus the `seconds` - 1 whole seconds before.

        The count is divided by the time those buckets cover, (`seconds` - 1) s plus the elapsed
        part of the current second, but by at least 1 s, so a message just after a second
        boundary never reads as a huge rate. `seconds` is 1..10.
        """
        if not 1 <= seconds <= SECOND_BUCKETS:
            raise ValueError(f"seconds must be 1..{SECOND_BUCKETS}, not {seconds}")
        now = self._settle(now)
        return self._seconds.totals(now, seconds)[0] / self._seconds.span(now, seconds)

    def rates(self, now: float) -> VolumeSnapshot:
        now = self._settle(now)
        seconds, tens, minutes = self._seconds, self._tens, self._minutes
        messages_10s, bytes_10s, dlq_10s = seconds.totals(now, SECOND_BUCKETS)
        messages_1m, bytes_1m, dlq_1m = tens.totals(now, TEN_SECOND_BUCKETS)
        messages_5m, bytes_5m, dlq_5m = minutes.totals(now, 5)
        messages_1h, bytes_1h, dlq_1h = minutes.totals(now, MINUTE_BUCKETS)
        return VolumeSnapshot(
            rate_10s=messages_10s / seconds.span(now, SECOND_BUCKETS),
            rate_1m=messages_1m / tens.span(now, TEN_SECOND_BUCKETS),
            rate_5m=messages_5m / minutes.span(now, 5),
            rate_1h=messages_1h / minutes.span(now, MINUTE_BUCKETS),
            bytes_10s=bytes_10s,
            bytes_1m=bytes_1m,
            bytes_5m=bytes_5m,
            bytes_1h=bytes_1h,
            dlq_10s=dlq_10s,
            dlq_1m=dlq_1m,
            dlq_5m=dlq_5m,
            dlq_1h=dlq_1h,
            received=self._received,
            dlq=self._dlq_total,
            last_message_at=self.last_message_at,
        )

    def to_state(self) -> dict[str, Any]:
        """JSON-able: the minute buckets (5-min and 1-h windows), totals and the last message.

        The 1-s and 10-s buckets are not kept: after a restore the 10-s and 1-min windows hold
        only what is counted after it (read less, never more) and are whole again within a minute.
        """
        self._flush()
        return {
            "minutes": self._minutes.state(),
            "received": self._received,
            "dlq": self._dlq_total,
            "last_message_at": self.last_message_at,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], now: float) -> TenantVolume:
        """A volume as `to_state` left it, at `now`, that goes on counting from the state's
        newest message: later messages read now count at their own time, earlier ones (read
        again) not at all. Buckets a clock ahead of ours wrote move back to now."""
        volume = cls()
        head, *counts = state["minutes"]
        shift = max(0, head - int(now) // 60)
        for bucket in range(head - MINUTE_BUCKETS + 1, head + 1):  # oldest first, as `add` needs
            slot = bucket % MINUTE_BUCKETS * _FIELDS
            messages, nbytes, dlq = counts[slot : slot + _FIELDS]
            if messages or nbytes or dlq:
                volume._minutes.add((bucket - shift) * 60, messages, nbytes, dlq)
        volume._received = state["received"]
        volume._dlq_total = state["dlq"]
        if state["last_message_at"] is not None:
            # A writer's clock ahead of ours may have counted messages stamped after our `now`;
            # we count nothing later than our clock (the router caps record times at it).
            newest = min(state["last_message_at"], now)
            volume._newest = volume._counted_until = newest
            volume._second = int(newest)
            # No current second: the next message either ends the re-read or is late.
            volume._from = volume._roll_at = math.nextafter(newest, math.inf)
        return volume

    def _roll(self, at: float) -> None:
        self._flush()
        self._second = int(at)
        self._from = float(self._second)
        self._roll_at = self._second + 1.0

    def _count_late(self, at: float, messages: int, nbytes: int) -> None:
        """Messages older than the current second, in the buckets of their own second."""
        if at <= self._counted_until:
            return  # read again after a restore: the restored state has them
        self._counted_until = _NO_TIME  # newer than the state: the re-read is over
        self._add(int(at), messages, nbytes, 0)
        if at > self._newest:
            self._newest = at

    def _flush(self) -> None:
        """Move the current second's counts into the rings."""
        messages, nbytes, dlq = self._messages, self._bytes, self._dlq
        if messages or nbytes or dlq:
            self._add(self._second, messages, nbytes, dlq)
            self._messages = self._bytes = self._dlq = 0

    def _add(self, second: int, messages: int, nbytes: int, dlq: int) -> None:
        for ring in (self._seconds, self._tens, self._minutes):
            ring.add(second, messages, nbytes, dlq)
        self._received += messages
        self._dlq_total += dlq

    def _settle(self, now: float) -> float:
        """Flush before a read; the read happens at `now`, or at the newest second seen."""
        self._flush()
        return max(now, self._second)


_IDLE = TenantVolume().rates(0.0)


class TenantVolumes:
    """tenant id -> TenantVolume, made on first traffic: a tenant that never sent costs nothing."""

    __slots__ = ("_volumes",)

    def __init__(self) -> None:
        self._volumes: dict[str, TenantVolume] = {}

    def record(self, tenant: str, at: float, nbytes: int) -> None:
        """Count one message of time `at`: its ingress timestamp, capped at the reader's clock."""
        volume = self._volumes.get(tenant)
        if volume is None:
            volume = self._volumes[tenant] = TenantVolume()
        volume.record(at, 1, nbytes)

    def record_dlq(self, tenant: str, at: float, n: int = 1) -> None:
        volume = self._volumes.get(tenant)
        if volume is None:
            volume = self._volumes[tenant] = TenantVolume()
        volume.record_dlq(at, n)

    def snapshot(self, tenant: str, now: float) -> VolumeSnapshot:
        volume = self._volumes.get(tenant)
        return _IDLE if volume is None else volume.rates(now)

    def recent_rate(self, tenant: str, now: float, seconds: int = 2) -> float:
        volume = self._volumes.get(tenant)
        return 0.0 if volume is None else volume.recent_rate(now, seconds)

    def state(self, tenant: str) -> dict[str, Any] | None:
        volume = self._volumes.get(tenant)
        return None if volume is None else volume.to_state()

    def restore(self, tenant: str, state: dict[str, Any], now: float) -> None:
        """Adopt a persisted state, unless the tenant already has live counts."""
        if tenant not in self._volumes:
            self._volumes[tenant] = TenantVolume.from_state(state, now)

    def forget(self, tenant: str) -> None:
        """Stop measuring a tenant (another router owns it now)."""
        self._volumes.pop(tenant, None)

    def __len__(self) -> int:
        return len(self._volumes)
