"""How long a Kafka fetch may wait at the broker, and for how much: batch while records flow,
long-poll while idle. Every consumer that reads Laneway's traffic fetches this way (Faust's
consumer in `streams.app`, the router's ingress reader).

Faust hard-codes a 1,500 ms wait for 1 byte. After a backlog its consumer then settled into a
steady lag of about that much (measured: 1.1 s p50, 1.7 s p99 on the shared lane at 1,000 msg/s,
long after the backlog had drained). Waiting for 1 byte, on the other hand, makes every consumer
fetch a few records at a time under a steady load: at 1,700 msg/s the shared worker spent 80 % of
a core (p50/p99 30/75 ms); with 20 ms / 16 KiB 54 % (22/46 ms). But 20 ms / 16 KiB on an idle
consumer is ~50 empty fetches a second: an idle worker with no tenant used ~8 % of a core, and
3.9 % with 500 ms / 1 byte (issue 14, target < 5 %).

So each fetch request is chosen when it is built: long-poll for a single byte only after an
empty fetch and while the consumer holds no fetched record that the application has yet to take;
otherwise wait up to 20 ms for 16 KiB (batching, as above). The broker answers a long poll as soon
as one record arrives, so a quiet tenant's record does not wait for the long poll's timeout, and
its next fetch batches again. A partition whose records are still being taken is left out of the
next request and must not find it a long poll when it is fetchable again: aiokafka sends one
request per broker at a time, so it would wait for the poll to end (measured in
tests/integration/test_fuzz_ingest.py: the quiet tenant's p99 doubled beside a noisy tenant on
its ingress partition).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer

FETCH_MAX_WAIT_MS = 20
FETCH_MIN_BYTES = 16 * 1024
# Bounds only an idle fetch: a record ends the wait at once. Also the wait of the state mirrors,
# which always long-poll (agents/state/mirror.py).
IDLE_FETCH_MAX_WAIT_MS = 500


@dataclass(frozen=True)
class FetchWait:
    """What one fetch request asks of the broker: answer after `max_wait_ms` or once
    `min_bytes` are there, whichever comes first."""

    max_wait_ms: int
    min_bytes: int


BATCHING = FetchWait(FETCH_MAX_WAIT_MS, FETCH_MIN_BYTES)
LONG_POLL = FetchWait(IDLE_FETCH_MAX_WAIT_MS, 1)


def next_fetch_wait(previous_returned_records: bool, records_untaken: bool) -> FetchWait:
    """The wait of a consumer's next fetch, from whether its previous fetch returned records
    and whether fetched records still wait for the application."""
    return BATCHING if previous_returned_records or records_untaken else LONG_POLL


def adapt_fetches(consumer: AIOKafkaConsumer) -> None:
    """Make a started consumer choose each fetch's wait with `next_fetch_wait`.

    aiokafka's Fetcher (created by `start()`) builds every FetchRequest from its
    `_fetch_max_wait_ms` / `_fetch_min_bytes` in `_get_actions_per_node`, keeps fetched records
    the application has not taken in `_records`, and processes each response in
    `_proc_fetch_request`, which returns whether it buffered anything (records, or an error to
    hand to the reader). There is no public hook, so this wraps both methods on this one
    fetcher: responses note whether they returned records, and each round of requests sets both
    attributes first. Fetches already in flight keep the wait they were sent with.

    The state is per consumer, not per broker: with several brokers an idle one's empty answer
    can make a busy one's next fetch a long poll, which the busy broker answers at once (a
    smaller batch, never a longer wait).
    """
    fetcher: Any = consumer._fetcher
    assert fetcher is not None, "adapt_fetches needs a started consumer"
    process_response = fetcher._proc_fetch_request
    build_requests = fetcher._get_actions_per_node
    previous_returned_records = True  # the first fetches batch, as after a restart behind a backlog

    async def process_and_note(assignment: Any, node_id: int, request: Any) -> bool:
        nonlocal previous_returned_records
        returned_records: bool = await process_response(assignment, node_id, request)
        previous_returned_records = returned_records
        return returned_records

    def choose_wait_and_build(assignment: Any) -> Any:
        wait = next_fetch_wait(previous_returned_records, records_untaken=bool(fetcher._records))
        fetcher._fetch_max_wait_ms = wait.max_wait_ms
        fetcher._fetch_min_bytes = wait.min_bytes
        return build_requests(assignment)

    fetcher._proc_fetch_request = process_and_note
    fetcher._get_actions_per_node = choose_wait_and_build
