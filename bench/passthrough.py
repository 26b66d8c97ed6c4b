"""Baseline for the throughput bench: raw aiokafka ingress -> out.<tenant>, no HL7 processing.

Same hops and durability contract as the pipeline: records are produced with acks=all and the
consumer group's offsets are committed only after every produce of the batch is acknowledged.

    python -m bench.passthrough --prefix lwbench-x-base. --group lwbench-x-base
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient

from bench.common import SOURCE_HEADER, create_topics, encode_source
from streams.topics import TopicNames
from tests.harness import default_bootstrap

# Mirror the worker's processor settings (LANEWAY_BATCH_MAX, Faust's producer_linger).
BATCH_MAX = 500
LINGER_MS = 2
# Long idle wait: getmany returns as soon as records are there, so this adds no latency.
IDLE_POLL_MS = 500


class AnnounceAssignment(ConsumerRebalanceListener):
    """Logs "Ready" once partitions are assigned, the cue the bench waits for."""

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if assigned:
            print(f"Ready: {len(assigned)} partitions assigned", flush=True)


class PassThrough:
    def __init__(self, bootstrap: str, topics: TopicNames, group: str) -> None:
        self._bootstrap = bootstrap
        self._topics = topics
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", linger_ms=LINGER_MS
        )
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self._known_topics: set[str] = set()

    async def run(self) -> None:
        await self._admin.start()
        await self._producer.start()
        await self._consumer.start()
        try:
            self._consumer.subscribe([self._topics.ingress], listener=AnnounceAssignment())
            while True:
                batch = await self._consumer.getmany(timeout_ms=IDLE_POLL_MS, max_records=BATCH_MAX)
                if batch:
                    await self._forward(batch)
        finally:
            await self._consumer.stop()
            await self._producer.stop()
            await self._admin.close()

    async def _forward(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        pending: list[asyncio.Future[object]] = []
        for records in batch.values():
            for record in records:
                topic = self._topics.out(record.key.decode("ascii"))
                if topic not in self._known_topics:
                    await self._declare(topic)
                pending.append(
                    await self._producer.send(
                        topic,
                        record.value,
                        key=record.key,
                        headers=[(SOURCE_HEADER, encode_source(record.partition, record.offset))],
                    )
                )
        await asyncio.gather(*pending)
        await self._consumer.commit({tp: records[-1].offset + 1 for tp, records in batch.items()})

    async def _declare(self, topic: str) -> None:
        # One partition per tenant topic, as the pipeline declares them.
        await create_topics(self._admin, [topic], partitions=1)
        self._known_topics.add(topic)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default=default_bootstrap())
    parser.add_argument("--prefix", required=True, help="topic prefix, e.g. lwbench-x-base.")
    parser.add_argument("--group", required=True, help="consumer group id")
    args = parser.parse_args()

    task = asyncio.create_task(
        PassThrough(args.bootstrap, TopicNames(args.prefix), args.group).run()
    )
    # SIGTERM from the bench: cancel so the finally block leaves the group cleanly.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        print("stopped", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
