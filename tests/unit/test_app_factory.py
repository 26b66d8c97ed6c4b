"""The app factory applies the settings the design depends on (docs/faust-notes.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.lane_worker import build_lane_worker
from agents.worker import build_worker
from streams.app import FETCH_MAX_WAIT_MS, FETCH_MIN_BYTES
from streams.settings import Settings


def make_settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_worker_uses_rocksdb_raw_keys_and_hides_faust_data_views(tmp_path: Path) -> None:
    app = build_worker(make_settings(data_dir=tmp_path, web_port=6123))

    assert app.conf.store.scheme == "rocksdb"
    assert app.conf.web_tables_enabled is False
    assert app.conf.web_stats_enabled is False
    assert app.conf.key_serializer == "raw"
    assert app.conf.producer_acks == -1
    assert app.conf.consumer_auto_offset_reset == "earliest"


async def test_consumers_fetch_in_short_bounded_waits(tmp_path: Path) -> None:
    """Faust's hard-coded 1,500 ms long-poll left the shared lane a steady ~1.5 s behind after
    any backlog, and 1-byte fetches cost a third of the CPU (streams.app): every worker's
    Kafka consumer must use Laneway's fetch settings."""
    for app in (
        build_worker(make_settings(data_dir=tmp_path, web_port=6124)),
        build_lane_worker(make_settings(data_dir=tmp_path, lane_web_port=6125)),
    ):
        thread = app.consumer._new_consumer_thread()  # type: ignore[attr-defined]
        kafka_consumer = thread._create_worker_consumer(app.transport)
        assert kafka_consumer._fetch_max_wait_ms == FETCH_MAX_WAIT_MS <= 100
        assert kafka_consumer._fetch_min_bytes == FETCH_MIN_BYTES > 1
        await kafka_consumer.stop()


def test_each_worker_gets_its_own_data_dir(tmp_path: Path) -> None:
    first = build_worker(make_settings(data_dir=tmp_path, web_port=6101))
    second = build_worker(make_settings(data_dir=tmp_path, web_port=6102))

    assert Path(first.conf.datadir) != Path(second.conf.datadir)
    assert Path(first.conf.datadir).is_relative_to(tmp_path)


def test_settings_read_laneway_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANEWAY_KAFKA_BOOTSTRAP", "broker-a:9092, broker-b:9093")
    monkeypatch.setenv("LANEWAY_WEB_PORT", "7000")
    monkeypatch.setenv("LANEWAY_MLLP_PORT", "2600")

    settings = Settings(_env_file=None)  # type: ignore[call-arg]

    assert settings.web_port == 7000
    assert settings.mllp_port == 2600
    assert settings.bootstrap_servers == ["broker-a:9092", "broker-b:9093"]
    assert settings.broker_url == "kafka://broker-a:9092;kafka://broker-b:9093"


def test_defaults_match_the_public_contract() -> None:
    settings = make_settings()

    assert settings.kafka_bootstrap == "localhost:9092"
    assert settings.web_port == 6066
    assert settings.mllp_port == 2575
    assert settings.topic_prefix == "laneway."


def test_the_lane_worker_notices_new_lanes_within_30_s(tmp_path: Path) -> None:
    """A lane missed at its join (created as it joined) or added by the router later reaches
    the lane worker's consumer at its next metadata refresh: Faust's default is 5 minutes."""
    lane = build_lane_worker(make_settings(data_dir=tmp_path, lane_web_port=6126))
    assert lane.conf.consumer_metadata_max_age_ms == 30_000
