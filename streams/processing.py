"""Turn one ingress record into output records: pure logic, no Faust, no I/O.

An ingress record is (tenant key, raw bytes). It may hold one message or a batch. Each message
becomes exactly one output: a normalized event on `laneway.out.<tenant>` or a DLQ record on
`laneway.dlq.<tenant>` (invariant 1). Nothing here raises on input, and `process_records`
contains even a bug: the record it hit is parked, the others go on.

No output value exceeds the size contract's `max_value_bytes` (docs/limits.md): a DLQ record
whose original would not fit, or an event that would not, is written as a DLQ record *by
reference* (ref, size, sha256; no original).
"""

from __future__ import annotations

import base64
import functools
import hashlib
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

from streams.hl7 import ExtractedMessage, Hl7Error, extract, hl7_ts_to_iso, split_batch
from streams.masking import Shaper
from streams.records import EVENT_SCHEMA_VERSION, HEADER_INCARNATION, DlqRecord, IngressRef
from streams.settings import DEFAULT_MAX_MESSAGE_BYTES, VALUE_HEADROOM_BYTES
from streams.topics import TopicNames, is_valid_tenant_id

HEADER_TENANT = "laneway-tenant"
HEADER_IDEMPOTENCY_KEY = "laneway-idempotency-key"
HEADER_SCHEMA_VERSION = "laneway-schema-version"
# On a lane record: where the original sits in ingress, so events keep their `ref` and
# idempotency key whichever lane processed them.
HEADER_SOURCE = "laneway-source"
_SCHEMA_VERSION_BYTES = str(EVENT_SCHEMA_VERSION).encode()
DEFAULT_MAX_VALUE_BYTES = DEFAULT_MAX_MESSAGE_BYTES + VALUE_HEADROOM_BYTES

# DLQ reasons of faults Laneway contains (besides the message's own HL7 errors).
INTERNAL_ERROR = "internal_error"  # a bug hit while processing or routing this one record
# The registry, caught up, does not know the record's tenant (or it was deleted, or the record
# is stamped by another incarnation of the id).
UNKNOWN_TENANT = "unknown_tenant"
EVENT_TOO_LARGE = "event_too_large"  # the normalized event would exceed max_value_bytes
KAFKA_REFUSED = "kafka_refused"  # Kafka refused the output as final (too large, invalid)


class IngressRecord(NamedTuple):
    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    # Its HEADER_INCARNATION: the incarnation of the tenant ingest wrote it for; None without.
    incarnation: str | None = None


def incarnation_of(headers: Iterable[tuple[str, bytes]]) -> str | None:
    """The incarnation header among a record's headers; None if it has none."""
    for name, raw in headers:
        if name == HEADER_INCARNATION:
            return bytes(raw).decode("ascii", "replace")
    return None


class Origin(NamedTuple):
    """The ingress message an output stands for: what `park` needs to replace the output."""

    record: IngressRecord
    batch_index: int = 0  # the message's `IngressRef.index`
    message: bytes | None = None  # the message's bytes in a batch record; None: the whole value


class OutgoingRecord(NamedTuple):
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    is_dlq: bool
    partition: int = 0  # per-tenant topics have one; lane records keep their ingress partition
    origin: Origin | None = None
    reason: str = ""  # a DLQ record's reason


def forward_to_lane(record: IngressRecord, lane_topic: str, partition: int = 0) -> OutgoingRecord:
    """The ingress record as it is handed to a lane: same key, bytes and incarnation header,
    plus its origin."""
    origin = f"{record.topic}|{record.partition}|{record.offset}|{record.timestamp_ms}"
    headers = [(HEADER_SOURCE, origin.encode())]
    if record.incarnation is not None:
        headers.append((HEADER_INCARNATION, record.incarnation.encode()))
    return OutgoingRecord(
        topic=lane_topic,
        key=record.key or b"",
        value=record.value or b"",
        headers=headers,
        is_dlq=False,
        partition=partition,
        origin=Origin(record),
    )


def lane_record_origin(
    key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes]]
) -> IngressRecord | None:
    """The ingress record a lane record was forwarded from; None without a (readable) header."""
    headers = list(headers)
    for name, raw in headers:
        if name == HEADER_SOURCE:
            try:
                topic, partition, offset, timestamp_ms = raw.decode().rsplit("|", 3)
                return IngressRecord(
                    key,
                    value,
                    topic,
                    int(partition),
                    int(offset),
                    int(timestamp_ms),
                    incarnation_of(headers),
                )
            except ValueError:  # written by hand: the lane record is then its own origin
                return None
    return None


def process_records(
    records: Iterable[IngressRecord],
    topics: TopicNames,
    shapers: Callable[[str], Shaper | None] | None = None,
    *,
    unknown: Callable[[IngressRecord], bool] | None = None,
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
) -> list[OutgoingRecord]:
    """The outputs of a batch of records, in order; no record can stop the others.

    A tenant's record that `unknown` names (its tenant unknown or deleted, or the record stamped
    by another incarnation of the id) goes, by reference, to the unrouted DLQ: without its
    config its masks are unknown, so it is never emitted. An exception while processing a
    record (a bug) parks that record with reason `internal_error` (type name only).
    """
    outputs: list[OutgoingRecord] = []
    for record in records:
        try:
            tenant = tenant_of_key(record.key)
            if tenant is not None and unknown is not None and unknown(record):
                error = Hl7Error(UNKNOWN_TENANT, "no such tenant in the registry")
                outputs.append(park(Origin(record), topics, error, unrouted=True))
                continue
            outputs.extend(process_ingress_record(record, topics, shapers, max_value_bytes))
        except Exception as error:
            origin = Origin(record)
            outputs.append(park(origin, topics, internal_error(error), max_value_bytes))
    return outputs


def park(
    origin: Origin,
    topics: TopicNames,
    error: Hl7Error,
    max_value_bytes: int | None = None,
    *,
    unrouted: bool = False,
) -> OutgoingRecord:
    """The DLQ record that stands in for `origin`'s output: in its tenant's DLQ (the unrouted
    DLQ if the key is no tenant id, or with `unrouted`). It carries the original if the record
    then stays within `max_value_bytes`; without a limit it is by reference."""
    record = origin.record
    tenant = tenant_of_key(record.key)
    ref = IngressRef(record.topic, record.partition, record.offset, origin.batch_index)
    topic = topics.dlq_unrouted if tenant is None or unrouted else topics.dlq(tenant)
    original = record.value or b"" if origin.message is None else origin.message
    received_at = _iso_utc(record.timestamp_ms)
    return _dlq(topic, tenant or "", ref, received_at, original, error, origin, max_value_bytes)


def process_ingress_record(
    record: IngressRecord,
    topics: TopicNames,
    shapers: Callable[[str], Shaper | None] | None = None,
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
) -> list[OutgoingRecord]:
    """All outputs for one ingress record, in message order.

    `shapers` gives a tenant's output shaping (thin, masked; see `masking.OutputShapers`);
    without it, or when it answers None, events go out full and unmasked.
    """
    received_at = _iso_utc(record.timestamp_ms)
    tenant = tenant_of_key(record.key)
    payload = record.value or b""
    if tenant is None:
        error = Hl7Error("invalid_tenant_key", "ingress key is not a valid tenant id")
        return [park(Origin(record), topics, error, max_value_bytes)]
    try:
        messages = split_batch(payload)
    except Exception as error:
        dlq_error = error if isinstance(error, Hl7Error) else internal_error(error)
        return [park(Origin(record), topics, dlq_error, max_value_bytes)]
    # Once per record, not per message: a batch record is one tenant's.
    shaper = shapers(tenant) if shapers is not None else None
    outputs = []
    for index, raw in enumerate(messages):
        ref = IngressRef(
            topic=record.topic, partition=record.partition, offset=record.offset, index=index
        )
        # A lone message is parked with the record's exact bytes, so a replay resends them as sent.
        origin = Origin(record, index, None if len(messages) == 1 else raw)
        outputs.append(
            _process_message(raw, origin, tenant, ref, received_at, topics, shaper, max_value_bytes)
        )
    return outputs


def _process_message(
    raw: bytes,
    origin: Origin,
    tenant: str,
    ref: IngressRef,
    received_at: str,
    topics: TopicNames,
    shaper: Shaper | None,
    max_value_bytes: int,
) -> OutgoingRecord:
    try:
        document = event_document(extract(raw), tenant, ref, received_at)
        if shaper is not None:  # inside the try: a masking bug parks the message, never leaks it
            document = shaper(document)
        value = orjson.dumps(document)
        if len(value) > max_value_bytes:
            raise Hl7Error(EVENT_TOO_LARGE, f"event of {len(value)} bytes > {max_value_bytes}")
    except Exception as error:  # even a bug must not stop the tenant's stream: park the message
        dlq_error = error if isinstance(error, Hl7Error) else internal_error(error)
        return park(origin, topics, dlq_error, max_value_bytes)
    return OutgoingRecord(
        topic=topics.out(tenant),
        key=tenant.encode(),
        value=value,
        headers=_headers(tenant, document["idempotency_key"]),
        is_dlq=False,
        origin=origin,
    )


def internal_error(error: Exception) -> Hl7Error:
    """The DLQ reason for a bug hit on a record: the exception's type only, never content."""
    return Hl7Error(INTERNAL_ERROR, f"{type(error).__name__} while processing")


def event_document(
    message: ExtractedMessage, tenant: str, ref: IngressRef, received_at: str
) -> dict[str, Any]:
    """The normalized event as a plain dict, serialized with orjson on the hot path.

    It must always validate as `NormalizedEvent` and dump back to itself; a unit test proves
    this on a varied corpus, so the pydantic model stays the single contract. Building the
    dict directly costs ~8 µs per message, pydantic validation ~30 µs.
    """
    message_datetime = hl7_ts_to_iso(message.message_datetime)
    return {
        "schema_version": EVENT_SCHEMA_VERSION,
        "mode": "full",
        "tenant": tenant,
        "control_id": message.control_id,
        "message_type": f"{message.message_code}^{message.trigger_event}",
        "message_code": message.message_code,
        "trigger_event": message.trigger_event,
        "message_structure": message.message_structure,
        "version": message.version,
        "processing_id": message.processing_id,
        "sending_application": message.sending_application,
        "sending_facility": message.sending_facility,
        "receiving_application": message.receiving_application,
        "receiving_facility": message.receiving_facility,
        "message_datetime": message_datetime,
        "event_datetime": hl7_ts_to_iso(message.event_datetime) or message_datetime,
        "patient": _patient(message) if "PID" in message.segment_ids else None,
        # The codec's records are the contract's (streams.records): orjson writes them as they are.
        "visit": message.visit,
        "orders": list(message.orders),
        "observations": list(message.observations),
        "idempotency_key": ref.idempotency_key(tenant, message.control_id),
        "ref": ref.to_ref(),
        "source": ref,
        "received_at": received_at,
    }


def _patient(message: ExtractedMessage) -> dict[str, Any]:
    return {
        "identifiers": list(message.patient_identifiers),
        "name": message.patient_name,
        "birth_date": message.birth_date,
        "sex": message.sex,
        "address": message.patient_address,
        "phone": message.phone,
        "ssn": message.ssn,
    }


def _dlq(
    topic: str,
    tenant: str,
    ref: IngressRef,
    received_at: str,
    original: bytes,
    error: Hl7Error,
    origin: Origin,
    max_value_bytes: int | None,
) -> OutgoingRecord:
    control_id = guess_control_id(original)
    key = ref.idempotency_key(tenant, control_id or "")
    record = DlqRecord(
        tenant=tenant,
        control_id=control_id,
        reason=error.code,
        detail=error.detail,
        idempotency_key=key,
        ref=ref.to_ref(),
        source=ref,
        received_at=received_at,
        size=len(original),
        sha256=hashlib.sha256(original).hexdigest(),
        original_base64=None,
    )
    value = record.model_dump_json().encode()
    # Its base64 (4 bytes per 3, quoted) in place of `null` adds at most 4 per 3 bytes.
    if max_value_bytes is not None and len(value) + 4 * -(-len(original) // 3) <= max_value_bytes:
        encoded = base64.b64encode(original).decode("ascii")
        value = record.model_copy(update={"original_base64": encoded}).model_dump_json().encode()
    return OutgoingRecord(
        topic=topic,
        key=tenant.encode(),
        value=value,
        headers=_headers(tenant, key),
        is_dlq=True,
        origin=origin,
        reason=error.code,
    )


def guess_control_id(raw: bytes) -> str | None:
    """MSH-10 of a message that failed validation, when it can still be read."""
    start = raw.find(b"MSH")
    if start < 0 or len(raw) < start + 4:
        return None
    field_separator = raw[start + 3 : start + 4]
    first_segment = raw[start:].split(b"\r", 1)[0].split(b"\n", 1)[0]
    fields = first_segment.split(field_separator)
    if len(fields) <= 9 or not fields[9]:
        return None
    return fields[9].decode("utf-8", "replace")


def tenant_of_key(key: bytes | None) -> str | None:
    if not key:
        return None
    try:
        tenant = key.decode("ascii")
    except UnicodeDecodeError:
        return None
    return tenant if is_valid_tenant_id(tenant) else None


def _headers(tenant: str, idempotency_key: str) -> list[tuple[str, bytes]]:
    return [
        (HEADER_TENANT, tenant.encode()),
        (HEADER_IDEMPOTENCY_KEY, idempotency_key.encode()),
        (HEADER_SCHEMA_VERSION, _SCHEMA_VERSION_BYTES),
    ]


@functools.lru_cache(maxsize=4096)  # records of one producer batch share their millisecond
def _iso_utc(timestamp_ms: int) -> str:
    # A producer may stamp a record with any int64: clamp to what a datetime can hold, so no
    # timestamp can make processing (or parking) a record raise.
    clamped = min(max(timestamp_ms, 0), _LAST_DATETIME_MS)
    return datetime.fromtimestamp(clamped / 1000, UTC).isoformat(timespec="milliseconds")


_LAST_DATETIME_MS = 253_402_300_799_000  # 9999-12-31T23:59:59Z
