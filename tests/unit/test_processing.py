"""One ingress record in, exactly one output per message out: pure processing, no broker."""

from __future__ import annotations

import base64
import json
import random

import pytest

from streams import processing
from streams.hl7.synthetic import MALFORMED_KINDS, batch, malformed, mixed_corpus
from streams.processing import IngressRecord, OutgoingRecord, process_ingress_record
from streams.records import DlqRecord, NormalizedEvent
from streams.topics import TopicNames

TOPICS = TopicNames()


def ingress(value: bytes, key: bytes | None = b"st-marys", offset: int = 42) -> IngressRecord:
    return IngressRecord(
        key=key,
        value=value,
        topic=TOPICS.ingress,
        partition=3,
        offset=offset,
        timestamp_ms=1_700_000_000_123,
    )


def only(outputs: list[OutgoingRecord]) -> OutgoingRecord:
    assert len(outputs) == 1
    return outputs[0]


@pytest.mark.parametrize("message", mixed_corpus(seed=11, count=300), ids=lambda _: "msg")
def test_event_document_is_exactly_the_contract(message: bytes) -> None:
    output = only(process_ingress_record(ingress(message), TOPICS))
    document = json.loads(output.value)

    event = NormalizedEvent.model_validate(document)  # extra="forbid": no unknown keys

    # Nothing missing or differing either: the model dumps back to the very same document.
    assert event.model_dump(mode="json") == document
    assert output.topic == "laneway.out.st-marys"
    assert output.key == b"st-marys"
    assert not output.is_dlq


def test_event_references_its_ingress_record_and_keeps_its_key_on_redelivery() -> None:
    message = mixed_corpus(seed=3, count=1)[0]

    first = json.loads(only(process_ingress_record(ingress(message), TOPICS)).value)
    again = json.loads(only(process_ingress_record(ingress(message), TOPICS)).value)

    assert first["source"] == {"topic": "laneway.ingress", "partition": 3, "offset": 42, "index": 0}
    assert first["received_at"] == "2023-11-14T22:13:20.123+00:00"
    assert first["idempotency_key"] == again["idempotency_key"]
    assert first["idempotency_key"].startswith(f"st-marys:{first['control_id']}:")


def test_a_different_ingress_offset_gives_a_different_idempotency_key() -> None:
    message = mixed_corpus(seed=3, count=1)[0]

    first = json.loads(only(process_ingress_record(ingress(message, offset=1), TOPICS)).value)
    second = json.loads(only(process_ingress_record(ingress(message, offset=2), TOPICS)).value)

    assert first["idempotency_key"] != second["idempotency_key"]


def test_batch_becomes_one_event_per_message_in_order() -> None:
    messages = mixed_corpus(seed=5, count=4)

    outputs = process_ingress_record(ingress(batch(messages, line_end=b"\n")), TOPICS)

    documents = [json.loads(o.value) for o in outputs]
    assert [d["source"]["index"] for d in documents] == [0, 1, 2, 3]
    assert [d["control_id"] for d in documents] == [
        processing.guess_control_id(m) for m in messages
    ]
    assert len({d["idempotency_key"] for d in documents}) == 4


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_malformed_message_becomes_one_dlq_record_with_reason_and_original(kind: str) -> None:
    sample = malformed(random.Random(1), kind)

    output = only(process_ingress_record(ingress(sample.payload), TOPICS))

    record = DlqRecord.model_validate_json(output.value)
    assert output.is_dlq
    assert output.topic == "laneway.dlq.st-marys"
    assert record.reason == sample.expected_code
    assert record.tenant == "st-marys"
    assert base64.b64decode(record.original_base64) == sample.payload
    assert record.ref == "3-42-0"


def test_dlq_detail_never_contains_message_content() -> None:
    sample = malformed(random.Random(2), "bad_version")

    record = DlqRecord.model_validate_json(
        only(process_ingress_record(ingress(sample.payload), TOPICS)).value
    )

    assert record.control_id is not None
    assert record.control_id not in record.detail
    assert "TESTPATIENT" not in record.detail


@pytest.mark.parametrize("key", [None, b"", b"Upper", b"\xff\xfe", b"a_b"])
def test_record_without_a_valid_tenant_key_goes_to_the_unrouted_dlq(key: bytes | None) -> None:
    output = only(process_ingress_record(ingress(b"MSH|^~\\&|X", key=key), TOPICS))

    assert output.topic == TOPICS.dlq_unrouted
    assert DlqRecord.model_validate_json(output.value).reason == "invalid_tenant_key"


def test_a_bug_while_processing_parks_the_message_instead_of_raising(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken_extract(raw: bytes) -> None:
        raise KeyError("bug")

    monkeypatch.setattr(processing, "extract", broken_extract)
    message = mixed_corpus(seed=1, count=1)[0]

    record = DlqRecord.model_validate_json(
        only(process_ingress_record(ingress(message), TOPICS)).value
    )

    assert record.reason == "internal_error"
    assert record.detail == "KeyError while processing"


def test_outputs_carry_tenant_idempotency_and_schema_headers() -> None:
    output = only(process_ingress_record(ingress(mixed_corpus(seed=9, count=1)[0]), TOPICS))

    headers = dict(output.headers)
    assert headers[processing.HEADER_TENANT] == b"st-marys"
    assert headers[processing.HEADER_SCHEMA_VERSION] == b"1"
    assert headers[processing.HEADER_IDEMPOTENCY_KEY] == (
        json.loads(output.value)["idempotency_key"].encode()
    )
