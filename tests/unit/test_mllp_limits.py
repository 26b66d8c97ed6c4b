"""MLLP resource limits without sockets: the connection gate, the frame clock, the buffer budget
and the decoder's view of what a read will buffer (synthetic bytes only)."""

from __future__ import annotations

import asyncio
import random
from ipaddress import ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.ingest.mllp import buffer_limit, frame_limit
from streams.mllp import FramingErrorKind, MllpDecoder, frame
from streams.mllp_limits import BufferBudget, ConnectionGate, FrameClock, Hold, Limit
from streams.settings import Settings

A, B, C = ip_address("10.0.0.1"), ip_address("10.0.0.2"), ip_address("2001:db8::3")
MiB = 1024 * 1024


def _settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


# The connection gate.


def test_a_source_over_its_limit_is_refused_while_other_sources_are_admitted() -> None:
    gate = ConnectionGate(max_total=10, max_per_source=2)

    admitted = [gate.admit(A), gate.admit(A)]

    assert admitted == [None, None]
    assert gate.admit(A) is Limit.CONNECTIONS_PER_SOURCE
    assert gate.admit(B) is None
    assert gate.open == 3  # the refused one is not counted


def test_the_total_limit_refuses_whatever_the_source() -> None:
    gate = ConnectionGate(max_total=3, max_per_source=2)
    for source in (A, B, C):
        assert gate.admit(source) is None

    assert gate.admit(ip_address("10.9.9.9")) is Limit.CONNECTIONS_TOTAL
    assert gate.admit(None) is Limit.CONNECTIONS_TOTAL


def test_a_closed_connection_frees_its_place() -> None:
    gate = ConnectionGate(max_total=2, max_per_source=1)
    assert gate.admit(A) is None
    assert gate.admit(A) is Limit.CONNECTIONS_PER_SOURCE

    gate.leave(A)

    assert gate.admit(A) is None
    assert gate.open == 1


def test_connections_without_a_known_source_count_in_the_total_only() -> None:
    gate = ConnectionGate(max_total=3, max_per_source=1)

    assert [gate.admit(None) for _ in range(3)] == [None, None, None]
    assert gate.admit(None) is Limit.CONNECTIONS_TOTAL


def test_the_gate_forgets_sources_without_open_connections() -> None:
    gate = ConnectionGate(max_total=1000, max_per_source=1)
    for host in range(500):
        source = ip_address(f"10.1.{host // 256}.{host % 256}")
        assert gate.admit(source) is None
        gate.leave(source)

    assert gate.open == 0
    assert len(gate._per_source) == 0  # memory bounded by the open connections, not by history


# The frame clock.


def test_the_frame_clock_counts_charged_waits_down_to_zero_and_restarts() -> None:
    clock = FrameClock(timeout_s=2.0)
    clock.charge(0.5)
    clock.charge(1.0)
    assert clock.remaining() == pytest.approx(0.5)

    clock.charge(3.0)
    assert clock.remaining() == 0.0

    clock.restart()
    assert clock.remaining() == 2.0


# The buffer budget.


async def test_growth_within_capacity_is_immediate_and_accounted() -> None:
    budget = BufferBudget(100)
    first, second = Hold(), Hold()

    await budget.resize(first, 60)
    await budget.resize(second, 40)

    assert (first.size, second.size, budget.used) == (60, 40, 100)


async def test_growth_over_capacity_waits_until_another_hold_shrinks() -> None:
    budget = BufferBudget(100)
    holder, waiter = Hold(), Hold()
    await budget.resize(holder, 80)

    waiting = asyncio.create_task(budget.resize(waiter, 50))
    await asyncio.sleep(0)
    assert not waiting.done()
    assert not budget.try_resize(waiter, 50)

    budget.release(holder)
    await asyncio.wait_for(waiting, 1)

    assert (holder.size, waiter.size, budget.used) == (0, 50, 50)


async def test_waiters_are_served_first_come_first_served() -> None:
    budget = BufferBudget(100)
    holder, large, small = Hold(), Hold(), Hold()
    await budget.resize(holder, 50)
    large_waits = asyncio.create_task(budget.resize(large, 60))
    await asyncio.sleep(0)

    # 10 bytes would fit, but a large frame in line must not be overtaken by small ones.
    assert not budget.try_resize(small, 10)
    small_waits = asyncio.create_task(budget.resize(small, 10))
    await asyncio.sleep(0)
    assert not small_waits.done()

    budget.release(holder)
    await asyncio.wait_for(asyncio.gather(large_waits, small_waits), 1)
    assert (large.size, small.size, budget.used) == (60, 10, 70)


async def test_a_waiter_that_gives_up_leaves_the_line_and_lets_the_next_through() -> None:
    budget = BufferBudget(100)
    holder, gives_up, next_in_line = Hold(), Hold(), Hold()
    await budget.resize(holder, 50)
    blocked = asyncio.create_task(budget.resize(gives_up, 60))
    await asyncio.sleep(0)
    behind = asyncio.create_task(budget.resize(next_in_line, 20))
    await asyncio.sleep(0)

    blocked.cancel()  # e.g. its frame deadline passed
    await asyncio.wait_for(behind, 1)

    assert blocked.cancelled()
    assert (gives_up.size, next_in_line.size, budget.used) == (0, 20, 70)


async def test_a_shrink_never_waits_even_behind_waiters() -> None:
    budget = BufferBudget(100)
    holder, waiter = Hold(), Hold()
    await budget.resize(holder, 90)
    waiting = asyncio.create_task(budget.resize(waiter, 50))
    await asyncio.sleep(0)

    assert budget.try_resize(holder, 70)  # not enough for the waiter yet
    assert not waiting.done()
    assert budget.try_resize(holder, 10)
    await asyncio.wait_for(waiting, 1)
    assert budget.used == 60


async def test_a_request_larger_than_the_budget_is_an_error_not_a_wait_forever() -> None:
    budget = BufferBudget(100)
    await budget.resize(Hold(), 1)

    with pytest.raises(ValueError):
        await budget.resize(Hold(), 101)


async def test_random_holders_never_exceed_the_budget_and_all_finish() -> None:
    """Connections growing and shrinking at random, giving up after a short deadline (and then
    releasing, as a closed connection does): the budget is never exceeded, every wait ends,
    and all room comes back."""
    budget = BufferBudget(1000)
    holds = [Hold() for _ in range(20)]
    rng = random.Random(12)

    async def connection(hold: Hold) -> None:
        for _ in range(40):
            try:
                async with asyncio.timeout(0.005):
                    await budget.resize(hold, rng.randint(0, 400))
            except TimeoutError:
                budget.release(hold)
            assert budget.used == sum(h.size for h in holds) <= budget.capacity
            await asyncio.sleep(0)
        budget.release(hold)

    await asyncio.wait_for(asyncio.gather(*(connection(hold) for hold in holds)), 30)

    assert budget.used == 0
    assert budget.try_resize(Hold(), budget.capacity)  # nobody left in line


# The budget's size.


@pytest.mark.parametrize(
    ("buffered", "message", "expected"),
    [(64 * MiB, 4 * MiB, 64 * MiB), (64 * 1024, 4 * MiB, 4 * MiB), (2 * MiB, 64 * 1024, 2 * MiB)],
)
def test_the_buffer_budget_always_holds_one_whole_frame(
    buffered: int, message: int, expected: int
) -> None:
    settings = _settings(
        mllp_max_buffered_bytes=buffered, max_message_bytes=message, mllp_max_frame_bytes=1024
    )

    assert buffer_limit(settings) == expected >= frame_limit(settings)


def test_the_default_limits() -> None:
    settings = _settings()

    assert (settings.mllp_max_connections, settings.mllp_max_connections_per_source) == (1000, 100)
    assert settings.mllp_frame_timeout_s < settings.mllp_idle_timeout_s
    assert buffer_limit(settings) == 64 * MiB == 16 * frame_limit(settings)


# What a read will buffer, as the decoder tells it before the read is fed.

# Bytes rich in block characters, so that frames start, end and break within a few bytes.
_stream_bytes = st.lists(
    st.sampled_from([b"\x0b", b"\x1c", b"\r", b"M", b"SH|", b"x" * 7]), max_size=60
).map(b"".join)


@given(
    stream=_stream_bytes,
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=10),
    limit=st.integers(min_value=1, max_value=40),
)
def test_buffered_after_is_never_less_than_what_feeding_buffers(
    stream: bytes, cuts: list[int], limit: int
) -> None:
    decoder = MllpDecoder(limit)
    start = 0
    for cut in [*sorted(cuts), len(stream)]:
        chunk, start = stream[start:cut], max(start, cut)
        predicted = decoder.buffered_after(chunk)

        events = decoder.feed(chunk)

        assert decoder.buffered_bytes <= predicted <= limit
        if not any(getattr(event, "kind", None) is FramingErrorKind.OVERSIZE for event in events):
            assert decoder.buffered_bytes == predicted


def test_a_frame_that_ends_in_the_read_needs_no_room() -> None:
    decoder = MllpDecoder(1024)
    decoder.feed(b"\x0bMSH|")

    assert decoder.in_frame
    assert decoder.buffered_after(b"rest\x1c\r") == 0
    assert decoder.buffered_after(b"rest\x1c\r" + frame(b"MSH|next")) == 0
    assert decoder.buffered_after(b"rest\x1c\r\x0bMSH|next") == len(b"MSH|next")
    assert decoder.buffered_after(b"more") == len(b"MSH|more")
