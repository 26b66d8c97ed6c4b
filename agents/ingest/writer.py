"""The durable write of ingress records: acks=all, a deadline, and no double write on a resend."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from typing import Any

from aiokafka.structs import RecordMetadata
from mode import Service

from agents.state.broker_watch import BrokerWatch
from agents.state.producers import RenewingProducer
from agents.state.registry import TenantRegistry
from streams.app import LanewayApp
from streams.records import HEADER_INCARNATION

# How long a refused-but-maybe-delivered write waits for its sender's resend (see IngressWriter).
AMBIGUOUS_WRITE_TTL_S = 900.0


class IngestUnavailable(RuntimeError):
    """Kafka did not acknowledge the ingress write in time."""


class IngressWriter(Service):
    """Writes ingress records with acks=all and a deadline, on a producer of its own.

    Its own producer keeps ingest latency independent of the processor's output batches.

    A write that misses its deadline is ambiguous: the sender is refused (AR / 503), yet the
    producer may still deliver the record once the broker is back. The sender then resends
    the same bytes, which must not land a second time under a new idempotency key. So the
    pending write is kept for `AMBIGUOUS_WRITE_TTL_S`: a resend of identical bytes for the same
    tenant joins it instead of writing again, and is accepted once it turns out durable.

    While the broker watch says Kafka is down, writes are refused at once: nothing piles up in
    the producer, and senders hear AR / 503 without waiting for the deadline.

    Each record carries its tenant's incarnation in a header: the processor parks, and
    fetch-by-ref refuses, a record of another incarnation of the id.
    """

    def __init__(
        self, app: LanewayApp, broker: BrokerWatch, registry: TenantRegistry, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.broker = broker
        self.registry = registry
        settings = app.laneway
        self._producer = RenewingProducer(
            "ingress",
            bootstrap_servers=settings.bootstrap_servers,
            linger_ms=1,
            request_timeout_ms=int(settings.ingest_timeout_s * 1000),
            **app.producer_size_config,
        )
        self._ambiguous: OrderedDict[bytes, tuple[float, asyncio.Future[RecordMetadata]]] = (
            OrderedDict()
        )

    async def on_start(self) -> None:
        await self.app.declare_ingress()
        await self._producer.start()

    async def on_stop(self) -> None:
        await self._producer.stop()

    async def write(self, tenant_id: str, payload: bytes) -> tuple[int, int]:
        """(partition, offset) of the durable ingress record; IngestUnavailable otherwise."""
        if not self._producer.started:
            raise IngestUnavailable("ingress writer not started")
        if not self.broker.up:
            raise IngestUnavailable("Kafka is unreachable")
        self._forget_old_ambiguous_writes()
        tenant = self.registry.directory.get(tenant_id)
        incarnation = tenant.incarnation.encode() if tenant is not None else b""
        # The incarnation is part of a write's identity: a resend never joins a write made for
        # an earlier tenant of the same id.
        identity = hashlib.blake2b(
            b"\0".join((tenant_id.encode(), incarnation, payload)), digest_size=16
        ).digest()
        earlier = self._ambiguous.pop(identity, None)
        if earlier is not None and not (earlier[1].done() and earlier[1].exception()):
            pending = earlier[1]  # the same bytes were refused before: join that write
        else:
            producer = self._producer.producer
            pending = asyncio.ensure_future(
                self._producer.delivered(
                    producer.send_and_wait(
                        self.app.topic_names.ingress,
                        payload,
                        key=tenant_id.encode(),
                        headers=[(HEADER_INCARNATION, incarnation)] if incarnation else None,
                    ),
                    producer,
                )
            )
        try:
            metadata = await asyncio.wait_for(
                asyncio.shield(pending), self.app.laneway.ingest_timeout_s
            )
        except TimeoutError as error:
            self._ambiguous[identity] = (time.monotonic(), pending)
            raise IngestUnavailable("no acknowledgment from Kafka in time") from error
        except Exception as error:
            raise IngestUnavailable(type(error).__name__) from error
        return metadata.partition, metadata.offset

    def _forget_old_ambiguous_writes(self) -> None:
        horizon = time.monotonic() - AMBIGUOUS_WRITE_TTL_S
        while self._ambiguous and next(iter(self._ambiguous.values()))[0] < horizon:
            _, (_, pending) = self._ambiguous.popitem(last=False)
            if not pending.done():
                pending.cancel()
            elif not pending.cancelled():
                pending.exception()  # retrieved, so asyncio does not warn about it
