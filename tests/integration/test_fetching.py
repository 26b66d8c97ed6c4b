"""Adaptive fetches (streams.fetching) on the real broker: an idle consumer long-polls, and a
lone record still arrives at once, through one consumer and through a whole worker."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.fetching import BATCHING, LONG_POLL, adapt_fetches
from streams.hl7.synthetic import SyntheticFeed
from streams.topics import TopicNames
from tests.harness import Api, WorkerProcess, consume_until

pytestmark = pytest.mark.integration

WAIT_S = 30.0
IDLE_SPAN_S = 1.5
# Far below a long poll's 500 ms: a lone record that waited for the poll's timeout (instead of
# ending it, as a 1-byte minimum does) would take up to 500 ms per consumer it passes.
LONE_RECORD_BOUND_S = 0.25
LONE_RECORDS = 5


class FetchLog:
    """The wait each fetch request was built with and whether its response had records,
    recorded beneath `adapt_fetches` (which sets the wait of the next request)."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.fetches: list[tuple[int, bool]] = []
        fetcher: Any = consumer._fetcher
        process_response = fetcher._proc_fetch_request

        async def logged(assignment: Any, node_id: int, request: Any) -> bool:
            sent_with = fetcher._fetch_max_wait_ms  # one broker: nothing changed it since
            returned: bool = await process_response(assignment, node_id, request)
            self.fetches.append((sent_with, returned))
            return returned

        fetcher._proc_fetch_request = logged

    async def next_response(self, timeout_s: float) -> None:
        """Return once one more response was processed: the next fetch is being sent."""
        seen, deadline = len(self.fetches), time.monotonic() + timeout_s
        while len(self.fetches) == seen:
            assert time.monotonic() < deadline, "no fetch response"
            await asyncio.sleep(0.001)  # polls the log: the fetcher runs on this loop


@pytest.fixture
async def topic(admin: AIOKafkaAdminClient, worker_env: dict) -> AsyncIterator[str]:
    name = f"{worker_env['LANEWAY_TOPIC_PREFIX']}fetching-{uuid.uuid4().hex[:8]}"
    await admin.create_topics([NewTopic(name, 1, 1)])
    yield name
    await admin.delete_topics([name])


async def test_an_idle_consumer_long_polls_and_a_lone_record_ends_the_poll_at_once(
    topic: str, bootstrap: str, producer: AIOKafkaProducer
) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=BATCHING.max_wait_ms,
        fetch_min_bytes=BATCHING.min_bytes,
    )
    await consumer.start()
    try:
        fetch_log = FetchLog(consumer)
        adapt_fetches(consumer)
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_end(partition)
        await fetch_log.next_response(WAIT_S)

        idle_from = len(fetch_log.fetches)
        assert await consumer.getmany(timeout_ms=int(IDLE_SPAN_S * 1000)) == {}
        idle_fetches = fetch_log.fetches[idle_from:]
        # 20 ms fetches would be ~75 in this span.
        assert len(idle_fetches) <= IDLE_SPAN_S * 1000 / LONG_POLL.max_wait_ms + 1, idle_fetches
        assert {wait for wait, _ in idle_fetches} == {LONG_POLL.max_wait_ms}

        # Sent just after a response: the long poll it is answered by has only just started.
        await fetch_log.next_response(WAIT_S)
        sent = time.monotonic()
        await producer.send_and_wait(topic, b"lone")
        batches = await consumer.getmany(timeout_ms=int(WAIT_S * 1000))
        arrived_s = time.monotonic() - sent
        assert [r.value for r in batches.get(partition, [])] == [b"lone"]
        assert arrived_s < LONE_RECORD_BOUND_S

        await fetch_log.next_response(WAIT_S)  # the fetch after the record's
        record_fetch = next(i for i, (_, had) in enumerate(fetch_log.fetches) if had)
        assert fetch_log.fetches[record_fetch][0] == LONG_POLL.max_wait_ms
        assert fetch_log.fetches[record_fetch + 1][0] == BATCHING.max_wait_ms
    finally:
        await consumer.stop()


async def test_a_lone_message_crosses_an_idle_worker_without_waiting_for_long_polls(
    worker: WorkerProcess, worker_env: dict, api: Api, producer: AIOKafkaProducer, bootstrap: str
) -> None:
    """Ingress -> router -> shared lane -> processor -> out: two adaptive consumers. Latency is
    the out record's CreateTime minus the ingress record's, both stamped on this host."""
    topics = TopicNames(worker_env["LANEWAY_TOPIC_PREFIX"])
    tenant = (await api.onboard(f"lone-{uuid.uuid4().hex[:8]}"))["id"]
    feed = SyntheticFeed(seed=14, control_id_prefix="LONE-")
    out = topics.out(tenant)

    latencies_s: list[float] = []
    for count in range(1, LONE_RECORDS + 2):
        sent_ms = now_ms()
        await producer.send_and_wait(
            topics.ingress, feed.next_message(), key=tenant.encode(), timestamp_ms=sent_ms
        )
        records = await consume_until(bootstrap, [out], has(count), WAIT_S)
        assert len(records) == count, worker.log_tail()
        latencies_s.append((max(r.timestamp for r in records) - sent_ms) / 1000)

    # The first record also created the tenant's out topic. The median: in a worker that took its
    # partitions a moment ago, a fetch can still wait once for a long poll sent before (measured
    # 140-200 ms for the second record when the worker had just started).
    assert statistics.median(latencies_s[1:]) < LONE_RECORD_BOUND_S, latencies_s


def has(count: int) -> Callable[[list[ConsumerRecord]], bool]:
    return lambda records: len(records) >= count


def now_ms() -> int:
    return int(time.time() * 1000)
