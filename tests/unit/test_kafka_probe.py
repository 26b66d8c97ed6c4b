"""Which tenants' topics the stats' Kafka probe reads: only tenants that sent, the recent ones
every probe and the others every `ALL_EVERY_S` (agents/state/kafka_probe.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from agents.state import kafka_probe
from agents.state.kafka_probe import KafkaProbe
from streams.app import create_app
from streams.settings import Settings
from streams.tenants import TenantDirectory, TenantRecord, TenantSpec

NOW = 1_700_000_000.0


def _record(tenant: str) -> TenantRecord:
    spec = TenantSpec(id=tenant, name=tenant)
    return TenantRecord.create(spec, "a" * 64, datetime.fromtimestamp(NOW, UTC))


def _probe(tmp_path: Path, tenants: list[str], states: dict[str, dict[str, Any]]) -> KafkaProbe:
    settings = Settings(_env_file=None, data_dir=tmp_path, web_port=6144)  # type: ignore[call-arg]
    directory = TenantDirectory()
    for tenant in tenants:
        directory.apply(tenant, _record(tenant))
    registry = SimpleNamespace(directory=directory)
    return KafkaProbe(create_app(settings), registry, SimpleNamespace(states=states), None)  # type: ignore[arg-type]


def test_only_tenants_that_sent_are_read_the_recent_ones_every_time(tmp_path: Path) -> None:
    recent = NOW - kafka_probe.RECENT_S / 2
    old = NOW - kafka_probe.RECENT_S * 2
    states = {
        "busy": {"updated_at": recent},
        "calm": {"updated_at": old},
        "gone": {"updated_at": recent},  # offboarded: its document outlives it
    }
    probe = _probe(tmp_path, ["busy", "calm", "idle"], states)

    first = probe._tenants_to_read(NOW)  # the first read is of every tenant that sent
    soon = probe._tenants_to_read(NOW + 1)
    later = probe._tenants_to_read(NOW + kafka_probe.ALL_EVERY_S)

    assert sorted(first) == ["busy", "calm"]
    assert soon == ["busy"]
    assert sorted(later) == ["busy", "calm"]


def test_new_topics_join_at_the_next_probe_until_the_metadata_refresh_costs_too_much() -> None:
    # A few hundred tracked topics refresh in milliseconds: a new one is read within a probe,
    # so two workers' counts agree within a second or two.
    assert kafka_probe.track_interval_s(0) == 0
    assert kafka_probe.track_interval_s(200) <= kafka_probe.PROBE_INTERVAL_S
    # Thousands of them: the refreshes are spaced so they take at most TRACK_CPU_SHARE of a core.
    interval = kafka_probe.track_interval_s(1_500)
    assert kafka_probe.PROBE_INTERVAL_S < interval < kafka_probe.TRACK_EVERY_S
    refresh_s = 1_500 * kafka_probe.METADATA_S_PER_TOPIC
    assert refresh_s / interval <= kafka_probe.TRACK_CPU_SHARE + 1e-9
    assert kafka_probe.track_interval_s(100_000) == kafka_probe.TRACK_EVERY_S
