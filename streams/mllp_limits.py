"""MLLP resource limits, without sockets: connection caps, the partial-frame deadline and the
budget of bytes that partial frames hold across all connections.

The listener (agents/ingest/mllp.py) asks a `ConnectionGate` before it serves a connection,
charges a `FrameClock` while a frame waits for its sender, and takes room from a `BufferBudget`
before it buffers more of a partial frame. What a sender gets when a limit is hit is in
docs/limits.md ("MLLP connection limits").
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address

Source = IPv4Address | IPv6Address | None  # a connection's source address, None if unknown


class Limit(StrEnum):
    """The limits, as named in logs and in the `limit` label of /metrics."""

    CONNECTIONS_TOTAL = "connections_total"
    CONNECTIONS_PER_SOURCE = "connections_per_source"
    FRAME_TIMEOUT = "frame_timeout"
    BUFFERED_BYTES = "buffered_bytes"


class ConnectionGate:
    """Open connections, in total and per source address: `admit` each new one, `leave` when it
    closes. Memory is bounded by the total cap: only sources with open connections are kept."""

    def __init__(self, max_total: int, max_per_source: int) -> None:
        if max_total < 1 or max_per_source < 1:
            raise ValueError("connection limits must be positive")
        self.max_total = max_total
        self.max_per_source = max_per_source
        self.open = 0
        self._per_source: Counter[Source] = Counter()

    def admit(self, source: Source) -> Limit | None:
        """None, and the connection counts as open; or the limit that refuses it (not counted).
        A connection without a known source counts in the total only."""
        if self.open >= self.max_total:
            return Limit.CONNECTIONS_TOTAL
        if source is not None and self._per_source[source] >= self.max_per_source:
            return Limit.CONNECTIONS_PER_SOURCE
        self.open += 1
        if source is not None:
            self._per_source[source] += 1
        return None

    def leave(self, source: Source) -> None:
        """An admitted connection closed."""
        self.open -= 1
        if source is not None:
            self._per_source[source] -= 1
            if not self._per_source[source]:
                del self._per_source[source]


@dataclass(slots=True)
class FrameClock:
    """How long the frame a connection is receiving has waited, against its deadline.

    Only waiting is charged: for the sender's bytes, or for room in the `BufferBudget`. Time
    Laneway spends answering the frames before it (a slow Kafka write, a rate-ceiling hold) is
    not the sender's doing, so a sender pipelining frames is not cut off by it.
    """

    timeout_s: float
    spent_s: float = 0.0

    def restart(self) -> None:
        """A new frame began (its VT arrived)."""
        self.spent_s = 0.0

    def charge(self, seconds: float) -> None:
        self.spent_s += seconds

    def remaining(self) -> float:
        return max(self.timeout_s - self.spent_s, 0.0)


@dataclass(slots=True, eq=False)  # compared by identity: two holds of one size are distinct
class Hold:
    """One connection's share of a `BufferBudget`, in bytes."""

    size: int = 0


class BufferBudget:
    """Bytes that partial frames may hold across all connections, never more than `capacity`.

    Each connection resizes its `Hold` to what it buffers. A shrink never waits and hands the
    freed room to those waiting. A growth that does not fit waits, first come first served: a
    waiting connection is never overtaken, so a large frame cannot be starved by a stream of
    small ones. Nothing here bounds the wait: the listener bounds it with the frame deadline,
    and every holder lets go in bounded time (docs/limits.md), so room always comes back.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.used = 0
        self._waiting: deque[tuple[Hold, int, asyncio.Future[None]]] = deque()

    def try_resize(self, hold: Hold, size: int) -> bool:
        """Resize `hold` to `size` if that needs no wait: a shrink, or a growth that fits while
        nobody waits. False, and nothing changed, otherwise."""
        if size <= hold.size:
            self._apply(hold, size)
            self._grant()
            return True
        if self._waiting or self.used + size - hold.size > self.capacity:
            return False
        self._apply(hold, size)
        return True

    async def resize(self, hold: Hold, size: int) -> None:
        """Resize `hold` to `size`, waiting in line for room. Cancelling the wait leaves the
        line; `hold` then keeps its size, unless the room was granted just before."""
        if self.try_resize(hold, size):
            return
        if size > self.capacity:
            raise ValueError(f"{size} bytes can never fit a budget of {self.capacity}")
        entry = (hold, size, asyncio.get_running_loop().create_future())
        self._waiting.append(entry)
        try:
            await entry[2]
        finally:
            if entry in self._waiting:  # cancelled while in line: those behind may fit now
                self._waiting.remove(entry)
                self._grant()

    def release(self, hold: Hold) -> None:
        self.try_resize(hold, 0)

    def _grant(self) -> None:
        """Grow waiting holds, in order, for as long as the first in line fits."""
        while self._waiting:
            hold, size, granted = self._waiting[0]
            if granted.cancelled():
                self._waiting.popleft()
                continue
            if self.used + size - hold.size > self.capacity:
                return
            self._waiting.popleft()
            self._apply(hold, size)
            granted.set_result(None)

    def _apply(self, hold: Hold, size: int) -> None:
        self.used += size - hold.size
        hold.size = size
