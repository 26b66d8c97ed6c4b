"""streams.batching on Faust's in-memory agent test context: batch sizes, the wait after a
batch's first event, and no timer while the stream is idle."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import faust

from streams.batching import take_event_batches

MAX_EVENTS = 3
WITHIN_S = 0.05
DEADLINE_S = 5.0


class Recorder:
    """An agent batching its stream with `take_event_batches`, recording each batch and every
    timed wait the batching asked of the stream."""

    def __init__(self) -> None:
        self.app = faust.App("batching-test", store="memory://")
        self.batches: list[tuple[list[Any], float]] = []
        self.timed_waits = 0

        @self.app.agent()
        async def batcher(stream: Any) -> None:
            untimed_wait = stream.wait_for_stopped

            async def counting_wait(*waitables: Any, **options: Any) -> bool:
                if options.get("timeout") is not None:
                    self.timed_waits += 1
                return bool(await untimed_wait(*waitables, **options))

            stream.wait_for_stopped = counting_wait
            async for batch in take_event_batches(stream, MAX_EVENTS, WITHIN_S):
                self.batches.append(([event.value for event in batch], time.monotonic()))

        self.agent = batcher

    async def values_when(self, count: int) -> list[list[Any]]:
        """The batches' values once `count` values arrived, polled up to a deadline."""
        deadline = time.monotonic() + DEADLINE_S
        while sum(len(values) for values, _ in self.batches) < count:
            assert time.monotonic() < deadline, f"only {self.batches} within {DEADLINE_S} s"
            await asyncio.sleep(0.005)
        return [values for values, _ in self.batches]


async def test_full_batches_come_at_once_and_the_rest_after_the_wait() -> None:
    recorder = Recorder()
    async with recorder.agent.test_context() as agent:
        for value in range(7):
            await agent.put(value)
        assert await recorder.values_when(7) == [[0, 1, 2], [3, 4, 5], [6]]


async def test_a_lone_event_after_idling_waits_for_company_once_then_comes() -> None:
    recorder = Recorder()
    async with recorder.agent.test_context() as agent:
        await asyncio.sleep(10 * WITHIN_S)  # the idle span: ten of Faust's timer periods
        assert recorder.timed_waits == 0, "the idle stream woke on a timer"
        put_at = time.monotonic()
        await agent.put("lone")
        assert await recorder.values_when(1) == [["lone"]]
        assert recorder.batches[0][1] - put_at >= WITHIN_S * 0.9  # it waited for company
        assert recorder.timed_waits == 1
