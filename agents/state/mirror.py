"""A compacted Kafka topic mirrored in every worker process.

Each worker reads the whole topic (no consumer group: every worker needs every key) and keeps
the latest value per key in memory. A write goes to the topic with acks=all; `put(..., wait=True)`
then waits until this worker's own mirror has applied it, so an API call that returns has taken
effect here. Other workers follow at once: their pending fetch asks for a single byte, so the
broker answers it as soon as the change is written.

This stands in for a Faust GlobalTable, whose cross-instance consistency is an open issue
(faust-streaming #283); the topic is the same changelog such a table would keep.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from mode import Service

from agents.state.producers import RenewingProducer
from streams.app import LanewayApp

log = logging.getLogger(__name__)

FETCH_WAIT_MS = 500  # bounds only an idle fetch: a change ends the wait at once
APPLY_TIMEOUT_S = 10.0


class MirrorUnavailable(RuntimeError):
    """The topic could not be written, or read back, in time."""


class CompactedTopicMirror(Service):
    """Subclasses apply each record in `apply`; `ready` is set once the topic is read to its end."""

    def __init__(self, app: LanewayApp, topic: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.topic = topic
        self.ready = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer = RenewingProducer(
            topic, bootstrap_servers=app.laneway.bootstrap_servers, **app.producer_size_config
        )
        self._applied_offset = -1
        self._offset_advanced = asyncio.Condition()

    def apply(self, key: str, value: bytes | None) -> None:
        """Apply one record: the key's latest value, or None for a tombstone."""
        raise NotImplementedError

    async def on_start(self) -> None:
        await self.app.declare(self.topic)
        servers = self.app.laneway.bootstrap_servers
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=servers,
            enable_auto_commit=False,
            fetch_max_wait_ms=FETCH_WAIT_MS,
            max_partition_fetch_bytes=self.app.laneway.max_fetch_bytes,
        )
        await self._producer.start()
        # A producer that has not sent yet tracks no topic, so it would refresh every topic's
        # metadata (every 5 minutes): this one only ever writes its own topic.
        self._producer.producer.client.set_topics([self.topic])
        await self._consumer.start()
        partition = TopicPartition(self.topic, 0)
        self._consumer.assign([partition])
        await self._consumer.seek_to_beginning(partition)
        end = (await self._consumer.end_offsets([partition]))[partition]
        while self._applied_offset + 1 < end:
            await self._apply_batch()
        self.ready.set()
        log.info("%s mirror loaded", self.topic)

    async def on_stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        await self._producer.stop()

    @Service.task
    async def _follow(self) -> None:
        await self.ready.wait()
        while not self.should_stop:
            await self._apply_batch()

    async def _apply_batch(self) -> None:
        assert self._consumer is not None
        batches = await self._consumer.getmany(timeout_ms=FETCH_WAIT_MS * 4)
        for records in batches.values():
            for record in records:
                if record.key is not None:
                    try:
                        self.apply(record.key.decode("utf-8", "replace"), record.value)
                    except ValueError:  # a hand-written bad record must not stop the mirror
                        log.error(
                            "%s: ignoring an invalid record at offset %d", self.topic, record.offset
                        )
                self._applied_offset = record.offset
        if batches:
            async with self._offset_advanced:
                self._offset_advanced.notify_all()

    async def put(self, key: str, value: bytes | None, *, wait: bool = True) -> None:
        """Write `value` (None: a tombstone); with `wait`, until this mirror has applied it."""
        if not self._producer.started:
            raise MirrorUnavailable(f"{self.topic} mirror not started")
        producer = self._producer.producer
        try:
            metadata = await asyncio.wait_for(
                self._producer.delivered(
                    producer.send_and_wait(self.topic, value, key=key.encode()), producer
                ),
                APPLY_TIMEOUT_S,
            )
            if wait:
                await asyncio.wait_for(self._applied(metadata.offset), APPLY_TIMEOUT_S)
        except Exception as error:
            raise MirrorUnavailable(
                f"{self.topic} change not confirmed: {type(error).__name__}"
            ) from error

    async def caught_up(self, timeout_s: float) -> bool:
        """Wait, at most `timeout_s`, until this mirror has applied every record written before
        the call; False if it has not (or Kafka did not say how far the topic goes)."""
        if self._consumer is None:
            return False
        partition = TopicPartition(self.topic, 0)
        try:
            async with asyncio.timeout(timeout_s):
                end = (await self._consumer.end_offsets([partition]))[partition]
                await self._applied(end - 1)
        except Exception as error:  # timed out, or Kafka away: the caller decides without it
            log.warning("%s mirror not caught up: %s", self.topic, type(error).__name__)
            return False
        return True

    async def _applied(self, offset: int) -> None:
        async with self._offset_advanced:
            await self._offset_advanced.wait_for(lambda: self._applied_offset >= offset)
