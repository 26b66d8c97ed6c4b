"""The tenant registry: tenant configs in a compacted Kafka topic, mirrored in every worker.

Each worker reads the whole `laneway.tenants` topic (no consumer group: every worker needs every
tenant) into a `TenantDirectory`. Writes go to the topic with acks=all; the writer then waits
until its own mirror has applied the change, so an API call that returns has taken effect on
this worker, and other workers follow within the consumer's fetch wait (~50 ms).

This stands in for a Faust GlobalTable, whose cross-instance consistency is an open issue
(faust-streaming #283); the topic is the same changelog a GlobalTable would keep.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from mode import Service

from streams.app import LanewayApp
from streams.tenants import TenantDirectory, TenantRecord

log = logging.getLogger(__name__)

FETCH_WAIT_MS = 10  # how long other workers may lag a tenant change, at most
APPLY_TIMEOUT_S = 10.0


class RegistryUnavailable(RuntimeError):
    """The tenant topic could not be written or read back in time."""


class TenantRegistry(Service):
    """Mirror of the tenant topic; `ready` is set once the topic has been read to its end."""

    def __init__(self, app: LanewayApp, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.app = app
        self.directory = TenantDirectory()
        self.topic = app.topic_names.tenants
        self.ready = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._applied_offset = -1
        self._offset_advanced = asyncio.Condition()

    async def on_start(self) -> None:
        await self.app.producer.create_topic(
            self.topic,
            partitions=1,  # one partition: one total order of tenant changes
            replication=self.app.laneway.topic_replication,
            compacting=True,
        )
        servers = self.app.laneway.bootstrap_servers
        self._producer = AIOKafkaProducer(
            bootstrap_servers=servers, acks="all", enable_idempotence=True
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=servers,
            enable_auto_commit=False,
            fetch_max_wait_ms=FETCH_WAIT_MS,
        )
        await self._producer.start()
        await self._consumer.start()
        partition = TopicPartition(self.topic, 0)
        self._consumer.assign([partition])
        await self._consumer.seek_to_beginning(partition)
        end = (await self._consumer.end_offsets([partition]))[partition]
        while self._applied_offset + 1 < end:
            await self._apply_batch()
        self.ready.set()
        log.info("tenant registry loaded: %d tenants", len(self.directory))

    async def on_stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
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
                self._apply(record.key, record.value)
                self._applied_offset = record.offset
        if batches:
            async with self._offset_advanced:
                self._offset_advanced.notify_all()

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        tenant_id = key.decode("utf-8", "replace")
        try:
            record = None if value is None else TenantRecord.from_json(value)
            self.directory.apply(tenant_id, record)
        except ValueError:  # a hand-written bad record must not stop the mirror
            log.error("ignoring invalid tenant record at key %r", tenant_id)

    async def put(self, record: TenantRecord) -> None:
        await self._write(record.id, record.to_json())

    async def delete(self, tenant_id: str) -> None:
        await self._write(tenant_id, None)  # a tombstone: compaction removes the config

    async def _write(self, tenant_id: str, value: bytes | None) -> None:
        if self._producer is None:
            raise RegistryUnavailable("registry not started")
        try:
            metadata = await asyncio.wait_for(
                self._producer.send_and_wait(self.topic, value, key=tenant_id.encode()),
                APPLY_TIMEOUT_S,
            )
            await asyncio.wait_for(self._applied(metadata.offset), APPLY_TIMEOUT_S)
        except Exception as error:
            raise RegistryUnavailable(
                f"tenant change not confirmed: {type(error).__name__}"
            ) from error

    async def _applied(self, offset: int) -> None:
        async with self._offset_advanced:
            await self._offset_advanced.wait_for(lambda: self._applied_offset >= offset)
