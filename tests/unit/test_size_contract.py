"""The size contract: every limit derives from `max_message_bytes` (docs/limits.md)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from agents.lane_worker import build_lane_worker
from agents.lanes import processor
from agents.state.publisher import BatchPublisher
from agents.worker import build_worker
from streams.app import create_app
from streams.hl7.synthetic import SyntheticFeed
from streams.processing import EVENT_TOO_LARGE, IngressRecord, process_ingress_record
from streams.records import DlqRecord
from streams.settings import RECORD_HEADROOM_BYTES, VALUE_HEADROOM_BYTES, Settings
from streams.topics import TopicNames

TOPICS = TopicNames()
KIB = 1024


def make_settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.mark.parametrize("message_bytes", [64 * KIB, 128 * KIB, 4 * 1024 * KIB, 20 * 1024 * KIB])
def test_limits_derive_from_max_message_bytes(message_bytes: int) -> None:
    settings = make_settings(max_message_bytes=message_bytes)

    assert settings.max_value_bytes == message_bytes + VALUE_HEADROOM_BYTES
    assert settings.max_record_bytes == message_bytes + RECORD_HEADROOM_BYTES
    # Every output value, with key, headers and framing, fits a record; every record a fetch.
    assert settings.max_record_bytes - settings.max_value_bytes >= 32 * KIB
    assert settings.max_fetch_bytes >= max(settings.max_record_bytes, 1024 * KIB)


def test_ingest_limits_always_carry_one_message_of_the_contract() -> None:
    small = make_settings(max_message_bytes=8 * 1024 * KIB, http_max_body_bytes=1024 * KIB)
    assert small.http_body_limit == 8 * 1024 * KIB
    assert make_settings(http_max_body_bytes=16 * 1024 * KIB).http_body_limit == 16 * 1024 * KIB


def test_topics_producers_and_consumers_carry_the_contract(tmp_path: Path) -> None:
    settings = make_settings(data_dir=tmp_path, web_port=6131, max_message_bytes=128 * KIB)
    record = settings.max_record_bytes
    for app in (build_worker(settings), build_lane_worker(settings)):
        for name in (app.topic_names.ingress, app.topic_names.out("big-tenant")):
            assert app.topic_table.spec(name).config["max.message.bytes"] == str(record)
        assert app.producer_size_config["max_request_size"] == record
        assert app.conf.producer_max_request_size == record
        assert app.conf.consumer_max_fetch_size == settings.max_fetch_bytes
        assert app.conf.web_application_options["client_max_size"] == settings.http_body_limit


def _ingress(value: bytes, key: bytes = b"big-tenant") -> IngressRecord:
    return IngressRecord(key, value, TOPICS.ingress, 1, 7, 1_700_000_000_000)


def _malformed_of_size(size: int) -> bytes:
    """A message of exactly `size` bytes whose MSH-12 (version) is invalid: a DLQ record."""
    message = SyntheticFeed(seed=5, escape_rate=0).next_message().replace(b"|2.5", b"|9.9", 1)
    filler = b"\rNTE|1||" + b"x" * (size - len(message) - 8)
    return message + filler


def test_a_dlq_record_whose_original_would_not_fit_goes_by_reference() -> None:
    limit = make_settings(max_message_bytes=128 * KIB).max_value_bytes
    original = _malformed_of_size(128 * KIB - 10)

    [output] = process_ingress_record(_ingress(original), TOPICS, max_value_bytes=limit)

    record = DlqRecord.model_validate_json(output.value)
    assert output.is_dlq and len(output.value) <= limit
    assert record.original_base64 is None
    assert record.size == len(original)
    assert record.sha256 == hashlib.sha256(original).hexdigest()
    assert record.ref == "1-7-0"
    assert record.reason == output.reason == "unsupported_version"
    assert json.loads(output.value)["original_base64"] is None  # the key is always written


def test_a_dlq_record_whose_original_fits_carries_it_and_stays_within_the_limit() -> None:
    original = _malformed_of_size(60 * KIB)
    limit = len(json.dumps({"original_base64": base64.b64encode(original).decode()})) + 1200

    [output] = process_ingress_record(_ingress(original), TOPICS, max_value_bytes=limit)

    record = DlqRecord.model_validate_json(output.value)
    assert base64.b64decode(record.original_base64 or "") == original
    assert len(output.value) <= limit
    assert record.size == len(original)


def test_an_event_that_would_exceed_the_limit_becomes_a_dlq_record_by_reference() -> None:
    feed = SyntheticFeed(seed=6, escape_rate=0)
    # Many OBX segments: the event lists them all, so it outgrows the message itself.
    message = feed.next_message() + b"".join(
        b"\rOBX|%d|ST|CODE^Text||value %d||||||F" % (n, n) for n in range(3000)
    )
    limit = len(message)

    [output] = process_ingress_record(_ingress(message), TOPICS, max_value_bytes=limit)

    record = DlqRecord.model_validate_json(output.value)
    assert output.topic == TOPICS.dlq("big-tenant")
    assert record.reason == EVENT_TOO_LARGE
    assert record.original_base64 is None  # the original alone (4/3 of it) would not fit either
    assert record.sha256 == hashlib.sha256(message).hexdigest()


async def test_every_topic_laneway_creates_carries_the_record_limit_and_durability(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(
        data_dir=tmp_path,
        web_port=6132,
        max_message_bytes=256 * KIB,
        topic_replication=3,
        topic_min_insync_replicas=2,
    )
    app = build_worker(settings)
    created: list[dict[str, object]] = []

    async def create_topic(**options: object) -> None:
        created.append(options)

    async def started() -> object:
        return app.producer

    monkeypatch.setattr(app.producer, "create_topic", create_topic)
    monkeypatch.setattr(app, "maybe_start_producer", started)
    expected = {"min.insync.replicas": "2", "max.message.bytes": str(256 * KIB + 64 * KIB)}
    names = app.topic_names

    await app.declare(names.ingress, names.tenants, names.out("big-tenant"), names.dlq_unrouted)

    assert len(created) == 4
    for options in created:
        assert options["replication"] == 3
        assert options["config"] | expected == options["config"]
    # Topics Faust declares (the lanes its agents read) are given the same config.
    for topic in (processor.shared_lane(app), processor.dedicated_lanes(app)):
        assert topic.config == expected
        assert topic.replicas == 3
    assert app.conf.topic_replication_factor == 3


@pytest.mark.parametrize("message_bytes", [64 * KIB, 4 * 1024 * KIB])
def test_the_publishers_record_batches_fit_the_topics_limit(
    tmp_path: Path, message_bytes: int
) -> None:
    settings = make_settings(data_dir=tmp_path, web_port=6133, max_message_bytes=message_bytes)
    config = BatchPublisher(create_app(settings))._producer._config

    assert config["max_request_size"] == settings.max_record_bytes
    assert config["max_batch_size"] <= settings.max_record_bytes
