"""A well-behaved tenant streaming beside a fault test, to show the fault does not reach it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.hl7.synthetic import SyntheticFeed
from streams.topics import TopicNames
from tests.harness import Api

SEND_INTERVAL_S = 0.05
# "Within a few seconds" on a shared 2-core machine where other suites run at the same time.
MAX_LATENCY_S = 5.0
DRAIN_TIMEOUT_S = 30.0
# However quick the fault under test, the quiet tenant streams at least this many messages.
MIN_SENT = 10


@dataclass
class QuietTenant:
    """Sent-at and arrived-at times per control id of the quiet tenant's messages."""

    tenant_id: str
    sent: dict[str, float] = field(default_factory=dict)
    arrived: dict[str, float] = field(default_factory=dict)

    def latencies(self) -> list[float]:
        return [self.arrived[c] - sent for c, sent in self.sent.items() if c in self.arrived]

    def assert_kept_streaming(self) -> None:
        missing = sorted(set(self.sent) - set(self.arrived))
        assert not missing, f"{len(missing)} of the quiet tenant's {len(self.sent)} events missing"
        slowest = max(self.latencies())
        assert slowest < MAX_LATENCY_S, f"a quiet tenant's event took {slowest:.1f}s"


@contextlib.asynccontextmanager
async def quiet_tenant(api: Api, bootstrap: str, topics: TopicNames) -> AsyncIterator[QuietTenant]:
    """Streams one message every SEND_INTERVAL_S over HTTP while the body runs, reading its out
    topic all along; on exit waits for every sent message, then checks each arrived in time.

    The body starts once the first quiet event arrived, so the stream is flowing before the fault,
    and the stream goes on until at least MIN_SENT messages were sent."""
    tenant = await api.onboard(f"quiet-{uuid.uuid4().hex[:8]}", rate_per_s=1000, burst=2000)
    quiet = QuietTenant(tenant["id"])
    feed = SyntheticFeed(seed=7, control_id_prefix="QUIET-", escape_rate=0)
    stop = asyncio.Event()
    # Its out topic comes with its first event: no seek, which would wait for a missing topic's
    # offsets until the request timed out (40 s); the earliest offset is read once it is there.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    partition = TopicPartition(topics.out(quiet.tenant_id), 0)
    consumer.assign([partition])

    async def send() -> None:
        while not stop.is_set() or len(quiet.sent) < MIN_SENT:
            payload = feed.next_message()
            status, answer = await api.send(quiet.tenant_id, tenant["token"], payload)
            assert status == 202, answer
            quiet.sent[answer["results"][0]["control_id"]] = time.monotonic()
            await asyncio.sleep(SEND_INTERVAL_S)

    first_arrived = asyncio.Event()
    all_arrived = asyncio.Event()  # set once everything sent so far has arrived

    async def read() -> None:
        while True:
            batch = await consumer.getmany(partition, timeout_ms=200)
            for record in batch.get(partition, []):
                quiet.arrived[json.loads(record.value)["control_id"]] = time.monotonic()
                first_arrived.set()
            if stop.is_set() and sender.done() and not set(quiet.sent) - set(quiet.arrived):
                all_arrived.set()

    sender, reader = asyncio.create_task(send()), asyncio.create_task(read())
    try:
        await asyncio.wait_for(first_arrived.wait(), DRAIN_TIMEOUT_S)
        yield quiet
        stop.set()
        await sender
        with contextlib.suppress(TimeoutError):  # assert_kept_streaming names what is missing
            await asyncio.wait_for(all_arrived.wait(), DRAIN_TIMEOUT_S)
    finally:
        stop.set()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        if not sender.done():
            sender.cancel()
        await consumer.stop()
    quiet.assert_kept_streaming()
