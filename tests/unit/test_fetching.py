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
    FetchWait,
    adapt_fetches,
    next_fetch_wait,
)
from streams.settings import Settings


def test_a_fetch_long_polls_for_one_byte_only_after_nothing_came_and_nothing_waits() -> None:
    assert next_fetch_wait(previous_returned_records=True, records_untaken=False) == BATCHING
    assert (BATCHING.max_wait_ms, BATCHING.min_bytes) == (FETCH_MAX_WAIT_MS, FETCH_MIN_BYTES)
    assert next_fetch_wait(previous_returned_records=False, records_untaken=False) == LONG_POLL
    # Records the application has yet to take: their partition is fetchable again soon, and
    # must not find its broker busy with a long poll.
    assert next_fetch_wait(previous_returned_records=False, records_untaken=True) == BATCHING
    # One byte: the broker answers a long poll at the first record, so it adds no latency.
    assert LONG_POLL.min_bytes == 1
    # An idle consumer's fetches per second drop from ~50 to ~2.
    assert LONG_POLL.max_wait_ms >= 20 * BATCHING.max_wait_ms


async def test_each_round_of_requests_is_built_with_the_wait_the_last_response_and_buffer_say() -> (
    None
):
    answers = iter([False, False, True])  # what aiokafka's response processing returns

    async def process_response(assignment: Any, node_id: int, request: Any) -> bool:
        return next(answers)

    fetcher = started_fetcher()
    fetcher._proc_fetch_request = process_response
    adapt_fetches(SimpleNamespace(_fetcher=fetcher))  # type: ignore[arg-type]

    waits = [fetcher._get_actions_per_node(None)]  # first requests: as after a restart
    await fetcher._proc_fetch_request(None, 1, None)  # nothing came
    waits.append(fetcher._get_actions_per_node(None))
    await fetcher._proc_fetch_request(None, 1, None)  # nothing came, but records wait
    fetcher._records = {"ingress-0": "untaken records"}
    waits.append(fetcher._get_actions_per_node(None))
    fetcher._records = {}
    await fetcher._proc_fetch_request(None, 1, None)  # records came
    waits.append(fetcher._get_actions_per_node(None))

    assert waits == [BATCHING, LONG_POLL, BATCHING, BATCHING]


def started_fetcher() -> SimpleNamespace:
    """aiokafka's Fetcher as adapt_fetches sees it; building requests returns the wait they
    would be built with."""

    async def process_response(assignment: Any, node_id: int, request: Any) -> bool:
        return False

    async def close() -> None:
        pass

    fetcher = SimpleNamespace(
        _proc_fetch_request=process_response,
        _fetch_max_wait_ms=BATCHING.max_wait_ms,
        _fetch_min_bytes=BATCHING.min_bytes,
        _records={},
        close=close,
    )
    fetcher._get_actions_per_node = lambda assignment: FetchWait(
        fetcher._fetch_max_wait_ms, fetcher._fetch_min_bytes
    )
    return fetcher


async def assert_adapted(fetcher: SimpleNamespace) -> None:
    await fetcher._proc_fetch_request(None, 1, None)  # an empty response
    assert fetcher._get_actions_per_node(None) == LONG_POLL


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
