"""streams.fetching: a fetch batches after one that returned records and long-polls after an
empty one (issue 14: idle CPU); the wiring is on the real broker in
tests/integration/test_fetching.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from agents.lanes.ingress import IngressReader
from agents.worker import build_worker
from streams.fetching import (
    BATCHING,
    FETCH_MAX_WAIT_MS,
    FETCH_MIN_BYTES,
    LONG_POLL,
    adapt_fetches,
    next_fetch_wait,
)
from streams.settings import Settings


def test_a_fetch_after_records_batches_and_one_after_nothing_long_polls_for_one_byte() -> None:
    assert next_fetch_wait(previous_returned_records=True) == BATCHING
    assert (BATCHING.max_wait_ms, BATCHING.min_bytes) == (FETCH_MAX_WAIT_MS, FETCH_MIN_BYTES)
    assert next_fetch_wait(previous_returned_records=False) == LONG_POLL
    # One byte: the broker answers a long poll at the first record, so it adds no latency.
    assert LONG_POLL.min_bytes == 1
    # An idle consumer's fetches per second drop from ~50 to ~2.
    assert LONG_POLL.max_wait_ms >= 20 * BATCHING.max_wait_ms


async def test_each_response_sets_the_wait_of_the_next_request() -> None:
    answers = iter([False, True, False])  # what aiokafka's response processing returns

    async def process_response(assignment: Any, node_id: int, request: Any) -> bool:
        return next(answers)

    fetcher = started_fetcher()
    fetcher._proc_fetch_request = process_response
    adapt_fetches(SimpleNamespace(_fetcher=fetcher))  # type: ignore[arg-type]

    waits = []
    for _ in range(3):
        returned = await fetcher._proc_fetch_request(None, 1, None)
        waits.append((returned, fetcher._fetch_max_wait_ms, fetcher._fetch_min_bytes))

    assert waits == [
        (False, LONG_POLL.max_wait_ms, 1),
        (True, BATCHING.max_wait_ms, BATCHING.min_bytes),
        (False, LONG_POLL.max_wait_ms, 1),
    ]


def started_fetcher() -> SimpleNamespace:
    async def process_response(assignment: Any, node_id: int, request: Any) -> bool:
        return False

    async def close() -> None:
        pass

    return SimpleNamespace(
        _proc_fetch_request=process_response,
        _fetch_max_wait_ms=BATCHING.max_wait_ms,
        _fetch_min_bytes=BATCHING.min_bytes,
        close=close,
    )


async def assert_adapted(fetcher: SimpleNamespace) -> None:
    await fetcher._proc_fetch_request(None, 1, None)  # an empty response
    assert (fetcher._fetch_max_wait_ms, fetcher._fetch_min_bytes) == (LONG_POLL.max_wait_ms, 1)


async def test_fausts_consumer_and_the_router_ingress_consumer_adapt_their_fetches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both consumers that read Laneway's traffic; the broker never answers here: `start` only
    creates the fetcher (the real one: tests/integration/test_fetching.py)."""

    async def start(consumer: AIOKafkaConsumer) -> None:
        consumer._fetcher = started_fetcher()

    monkeypatch.setattr(AIOKafkaConsumer, "start", start)

    app = build_worker(Settings(_env_file=None, data_dir=tmp_path, web_port=6127))  # type: ignore[call-arg]
    thread = app.consumer._new_consumer_thread()  # type: ignore[attr-defined]
    forwarder: Any = SimpleNamespace(app=app)
    reader = IngressReader(forwarder, states=None, recovery=None, tenant_states=None)  # type: ignore[arg-type]
    await thread.on_start()
    await reader.start()
    try:
        await assert_adapted(thread._consumer._fetcher)
        assert reader._consumer is not None
        await assert_adapted(reader._consumer._fetcher)
    finally:
        await thread._consumer.stop()
        if reader._consumer is not None:
            await reader._consumer.stop()
