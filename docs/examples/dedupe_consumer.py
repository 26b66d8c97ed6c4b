"""A plain aiokafka consumer of one tenant's Laneway events that drops duplicates.

Laneway delivers at least once: after a worker crash, events since the last commit arrive
again, with the same `idempotency_key` (also in the `laneway-idempotency-key` header). This
consumer handles each key once and commits only after handling, so it is at-least-once itself:
a consumer that writes to a database should store the key with a unique constraint instead of
(or as well as) the in-memory window below.

    python docs/examples/dedupe_consumer.py --tenant st-marys --group my-app
    python docs/examples/dedupe_consumer.py --tenant st-marys --group my-app \\
        --bootstrap kafka:9092 --prefix laneway.

Needs only `aiokafka`. Prints one JSON line per first-seen event.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer

IDEMPOTENCY_HEADER = "laneway-idempotency-key"
# Duplicates follow their first copy within one uncommitted stretch of Laneway's processing,
# so remembering the latest keys suffices; raise it if your consumer commits rarely.
REMEMBERED_KEYS = 100_000


class RecentKeys:
    """The last `capacity` idempotency keys seen, oldest forgotten first."""

    def __init__(self, capacity: int = REMEMBERED_KEYS) -> None:
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity

    def first_time(self, key: str) -> bool:
        """True the first time `key` is seen (within the window), False for a duplicate."""
        if key in self._keys:
            self._keys.move_to_end(key)
            return False
        self._keys[key] = None
        if len(self._keys) > self._capacity:
            self._keys.popitem(last=False)
        return True


def events_consumer(bootstrap: str, tenant: str, group_id: str, prefix: str) -> AIOKafkaConsumer:
    """A consumer of `<prefix>out.<tenant>` that commits only what was handled."""
    return AIOKafkaConsumer(
        f"{prefix}out.{tenant}",
        bootstrap_servers=bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )


async def consume(
    consumer: AIOKafkaConsumer,
    handle: Callable[[dict[str, Any]], Awaitable[None]],
    seen: RecentKeys,
) -> None:
    """Handle every first-seen event, in order; commit after each handled batch. Runs forever."""
    while True:
        batches = await consumer.getmany(timeout_ms=1000)
        for records in batches.values():
            for record in records:
                key = dict(record.headers)[IDEMPOTENCY_HEADER].decode()
                if seen.first_time(key):
                    await handle(json.loads(record.value))
        if batches:
            await consumer.commit()


async def print_event(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--group", required=True, help="your consumer group id")
    parser.add_argument("--bootstrap", default="localhost:9092")
    parser.add_argument("--prefix", default="laneway.", help="Laneway's topic prefix")
    args = parser.parse_args()
    consumer = events_consumer(args.bootstrap, args.tenant, args.group, args.prefix)
    await consumer.start()
    try:
        await consume(consumer, print_event, RecentKeys())
    finally:
        await consumer.stop()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
