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

So each fetch is chosen from the one before it: after a fetch that returned records, wait up to
20 ms for 16 KiB (batching, as above); after an empty one, long-poll for a single byte. The broker
answers a long poll as soon as one record arrives, so a quiet tenant's record does not wait for
the long poll's timeout, and its next fetch batches again.
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


def next_fetch_wait(previous_returned_records: bool) -> FetchWait:
    """The wait of a consumer's next fetch, from whether its previous fetch returned records."""
    return BATCHING if previous_returned_records else LONG_POLL


def adapt_fetches(consumer: AIOKafkaConsumer) -> None:
    """Make a started consumer choose each fetch's wait with `next_fetch_wait`.

    aiokafka's Fetcher (created by `start()`) builds every FetchRequest from its
    `_fetch_max_wait_ms` / `_fetch_min_bytes` (`_get_actions_per_node`) and processes each
    response in `_proc_fetch_request`, which returns whether it buffered anything (records, or
    an error to hand to the reader). There is no public hook, so this wraps that method on this
    one fetcher and sets both attributes for the next request after each response. Fetches
    already in flight keep the wait they were sent with.

    The state is per consumer, not per broker: with several brokers an idle one's empty answer
    can make a busy one's next fetch a long poll, which the busy broker answers at once (a
    smaller batch, never a longer wait).
    """
    fetcher: Any = consumer._fetcher
    assert fetcher is not None, "adapt_fetches needs a started consumer"
    process_response = fetcher._proc_fetch_request

    async def process_and_choose_next(assignment: Any, node_id: int, request: Any) -> bool:
        returned_records: bool = await process_response(assignment, node_id, request)
        wait = next_fetch_wait(returned_records)
        fetcher._fetch_max_wait_ms = wait.max_wait_ms
        fetcher._fetch_min_bytes = wait.min_bytes
        return returned_records

    fetcher._proc_fetch_request = process_and_choose_next
