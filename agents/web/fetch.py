"""On-demand fetch of an original message: `GET /api/tenants/{tenant_id}/messages/{ref}`.

An event's (or DLQ record's) `ref` is "<partition>-<offset>-<index>": an ingress record and the
message's position inside it, numbered as `processing.process_ingress_record` numbers them.
The view reads that one record straight from Kafka, so Laneway keeps no copy of its own, and a
message can be fetched for as long as Kafka retains it.

    200  the message: a single-message record's exact bytes, or the index-th message of a
         batch as `split_batch` cuts it; Content-Type application/hl7-v2
    400  malformed ref
    401  no valid token; 403 another tenant's token (the tenant's own token or admin may fetch)
    404  unknown tenant, or no such message for this tenant. A ref to another tenant's record,
         or to a record of an earlier tenant of the same id (another incarnation, see
         `TenantRecord.owns_ingress`), answers exactly like one that does not exist, so refs
         cannot be probed.
    410  the record is older than the partition's first retained offset (aged out)
    503  Kafka did not answer in time
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError
from faust.web import View
from mode import Service

from agents.state.registry import TenantRegistry
from agents.web.auth import Guard
from agents.web.common import ApiError, api_errors
from streams.app import LanewayApp
from streams.hl7 import split_batch
from streams.processing import incarnation_of
from streams.tenants import TenantRecord

# Bounded digit counts: a ref never makes an int Kafka would refuse (int32 partition, int64
# offset), and anything else is a 400 before Kafka is asked.
_REF = re.compile(r"(\d{1,9})-(\d{1,18})-(\d{1,6})")
READ_TIMEOUT_S = 10.0
POLL_MS = 200
HL7_CONTENT_TYPE = "application/hl7-v2"


class RecordGone(Exception):
    """The record's offset is below the partition's first retained offset."""


class IngressReader(Service):
    """Reads single ingress records by offset with one consumer: no group, nothing committed.

    Reads take turns (one assignment at a time); each is a seek and one fetch, and on-demand
    fetches are rare next to the stream.
    """

    def __init__(self, app: LanewayApp, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.topic = app.topic_names.ingress
        self._consumer: AIOKafkaConsumer | None = None
        self._turn = asyncio.Lock()

    async def on_start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.app.laneway.bootstrap_servers,
            enable_auto_commit=False,
            max_partition_fetch_bytes=self.app.laneway.max_fetch_bytes,
            # Never jump to another offset: a read below the log start must fail, not move on.
            auto_offset_reset="none",
        )
        await self._consumer.start()

    async def on_stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def read(self, partition: int, offset: int) -> ConsumerRecord | None:
        """The record at `offset`, None if there is none; raises RecordGone if aged out."""
        if self._consumer is None:
            raise KafkaError("ingress reader not started")
        consumer = self._consumer
        tp = TopicPartition(self.topic, partition)
        async with self._turn:
            consumer.assign([tp])
            if offset < (await consumer.beginning_offsets([tp]))[tp]:
                raise RecordGone
            if offset >= (await consumer.end_offsets([tp]))[tp]:
                return None
            consumer.seek(tp, offset)
            try:
                records: list[ConsumerRecord] = []
                while not records:
                    batch = await consumer.getmany(tp, timeout_ms=POLL_MS, max_records=1)
                    records = batch.get(tp, [])
            except OffsetOutOfRangeError as error:  # deleted since the check above
                raise RecordGone from error
        # A gap (e.g. a transaction marker) leaves no record at exactly this offset.
        return records[0] if records[0].offset == offset else None


def parse_ref(ref: str) -> tuple[int, int, int] | None:
    """(partition, offset, index) of a well-formed ref, else None."""
    match = _REF.fullmatch(ref)
    if match is None:
        return None
    partition, offset, index = match.groups()
    return int(partition), int(offset), int(index)


def message_at(payload: bytes, index: int) -> bytes | None:
    """Message `index` of an ingress record, numbered as the processor numbers it."""
    try:
        messages = split_batch(payload)
    except Exception:  # the processor parked such a record whole, as message 0
        messages = []
    if len(messages) <= 1:  # a lone message is the record's exact bytes
        return payload if index == 0 else None
    return messages[index] if index < len(messages) else None


def _unknown_message() -> ApiError:
    return ApiError(404, "unknown_message", "no such message for this tenant")


async def read_original(reader: IngressReader, tenant: TenantRecord | None, ref: str) -> bytes:
    """The original message `ref` names, if it belongs to `tenant` (the current tenant of the
    id; None: there is none); else ApiError: 400 malformed ref, 404 no such message of this
    tenant, 410 aged out, 503 Kafka did not answer."""
    parsed = parse_ref(ref)
    if parsed is None:
        raise ApiError(400, "invalid_ref", "a ref is <partition>-<offset>-<index>, as events carry")
    partition, offset, index = parsed
    if tenant is None or partition >= reader.app.laneway.ingress_partitions:
        raise _unknown_message()
    try:
        record = await asyncio.wait_for(reader.read(partition, offset), READ_TIMEOUT_S)
    except RecordGone as error:
        raise ApiError(
            410,
            "gone",
            "the message is older than Kafka's retention and can no longer be fetched",
            ref=ref,
        ) from error
    except (TimeoutError, KafkaError) as error:
        raise ApiError(503, "broker_unavailable", "Kafka did not answer in time") from error
    # Another tenant's record, or an earlier incarnation's, answers like a missing one: refs
    # cannot be probed.
    if (
        record is None
        or record.key != tenant.id.encode()
        or not tenant.owns_ingress(incarnation_of(record.headers or ()), record.timestamp)
    ):
        raise _unknown_message()
    message = message_at(record.value or b"", index)
    if message is None:
        raise _unknown_message()
    return message


async def original_by_ref(registry: TenantRegistry, tenant_id: str, ref: str) -> bytes:
    """`read_original` on a reader of its own: for the rare caller that is not the view, such
    as the DLQ replay of a record written by reference."""
    reader = IngressReader(registry.app)
    await reader.start()
    try:
        return await read_original(reader, registry.directory.get(tenant_id), ref)
    finally:
        await reader.stop()


def install(app: LanewayApp, registry: TenantRegistry, guard: Guard) -> None:
    """Register the fetch view and its ingress reader on `app`."""
    reader = IngressReader(app)
    app.add_service(reader)

    @app.page("/api/tenants/{tenant_id}/messages/{ref}")
    class MessageByRef(View):
        @api_errors
        async def get(self, request: web.Request, tenant_id: str, ref: str) -> web.Response:
            await guard.tenant_or_admin(request, tenant_id)
            tenant = registry.directory.get(tenant_id)
            message = await read_original(reader, tenant, ref)
            return web.Response(
                body=message,
                content_type=HL7_CONTENT_TYPE,
                headers={"Cache-Control": "no-store"},  # PHI: no cache may keep a copy
            )
