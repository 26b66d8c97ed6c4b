"""Topic names, tenant ids, and the one table every topic is created from."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from agents.lane_worker import build_lane_worker
from agents.lanes.router import Router
from agents.state import publisher as publisher_module
from agents.state.publisher import BatchPublisher
from agents.state.registry import TenantRegistry
from agents.state.tenant_state import TenantStateMirror
from agents.worker import build_worker
from streams.app import LanewayApp
from streams.settings import Settings
from streams.topics import (
    OUTPUT_RETENTION_MS,
    TopicNames,
    TopicSpec,
    TopicTable,
    is_valid_tenant_id,
)

README = Path(__file__).resolve().parents[2] / "README.md"
TENANT = "st-marys"


def make_settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_topic_layout_follows_the_contract() -> None:
    names = TopicNames()

    assert names.ingress == "laneway.ingress"
    assert names.out("st-marys") == "laneway.out.st-marys"
    assert names.dlq("st-marys") == "laneway.dlq.st-marys"


def test_unrouted_dlq_cannot_belong_to_any_tenant() -> None:
    suffix = TopicNames().dlq_unrouted.removeprefix("laneway.dlq.")

    assert not is_valid_tenant_id(suffix)


@pytest.mark.parametrize("tenant_id", ["st-marys", "a", "lab42", "x" * 64])
def test_valid_tenant_ids(tenant_id: str) -> None:
    assert is_valid_tenant_id(tenant_id)


@pytest.mark.parametrize(
    "tenant_id",
    ["", "-lead", "trail-", "Upper", "dot.ted", "under_score", "x" * 65, "sp ace", "é"],
)
def test_invalid_tenant_ids(tenant_id: str) -> None:
    assert not is_valid_tenant_id(tenant_id)


def every_topic_name(names: TopicNames) -> dict[str, str]:
    """Kind (the `TopicNames` member) -> a name it produces, for every member: a member added
    to `TopicNames` shows up here without this test changing."""
    arguments = {"tenant_id": TENANT, "lane": 3}
    produced = {}
    for member, value in inspect.getmembers(type(names)):
        if member.startswith("_") or member == "prefix":
            continue
        if isinstance(value, property):
            produced[member] = getattr(names, member)
        else:
            [parameter] = list(inspect.signature(value).parameters)[1:]
            produced[member] = getattr(names, member)(arguments[parameter])
    return produced


@pytest.mark.parametrize("prefix", ["laneway.", "test-7f3a.laneway."])
def test_the_table_has_a_spec_for_every_topic_name(prefix: str) -> None:
    table = TopicTable(make_settings(topic_prefix=prefix))
    produced = every_topic_name(table.names)

    assert "dedicated_lanes" in produced and "dlq_unrouted" in produced
    for kind, name in produced.items():
        assert table.kind(name) == kind
        assert table.spec(name).name == name


@pytest.mark.parametrize(
    "name",
    [
        "other.ingress",
        "laneway.out.Upper",
        "laneway.out.dot.ted",
        "laneway.lane.dedicated.0",
        "laneway.lane.dedicateds",
        "laneway.something",
        "laneway.",
    ],
)
def test_a_name_outside_the_table_has_no_spec(name: str) -> None:
    with pytest.raises(KeyError):
        TopicTable(make_settings()).spec(name)


def test_the_specs_are_the_topics_laneway_has_always_created() -> None:
    settings = make_settings(
        ingress_partitions=6,
        max_message_bytes=256 * 1024,
        topic_replication=3,
        topic_min_insync_replicas=2,
    )
    table = TopicTable(settings)
    names = table.names
    durable = {"min.insync.replicas": "2", "max.message.bytes": str(settings.max_record_bytes)}
    compacted = {**durable, "cleanup.policy": "compact"}
    kept = {**durable, "retention.ms": str(OUTPUT_RETENTION_MS)}
    expected = {
        names.ingress: (6, durable),
        names.shared_lane: (6, durable),  # co-partitioned with ingress
        names.dedicated_lanes: (settings.dedicated_lanes, durable),
        names.control: (1, durable),
        names.tenants: (1, compacted),
        names.tenant_state: (1, compacted),
        names.out(TENANT): (1, kept),
        names.dlq(TENANT): (1, kept),
        names.dlq_unrouted: (1, kept),
    }

    for name, (partitions, config) in expected.items():
        spec = table.spec(name)
        assert (spec.partitions, spec.config, spec.replication) == (partitions, config, 3), name
    assert OUTPUT_RETENTION_MS == 7 * 24 * 3600 * 1000  # README: "their 7-day retention"


def test_the_readme_names_each_topics_key_as_the_table_does() -> None:
    table = TopicTable(make_settings())
    section = README.read_text().split("\n## Topics\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| ([^|]+) \|", section, re.MULTILINE)

    assert len(rows) == len(every_topic_name(table.names))
    for name, key in rows:
        example = name.replace("<tenant>", TENANT).replace("<n>", "0")
        assert table.spec(example).key == key.strip(), name


class _Declared(Exception):
    """Stops a service's start once it has declared its topics."""


async def test_every_creator_declares_its_topics_through_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = build_worker(make_settings(data_dir=tmp_path, web_port=6141, dedicated_lanes=2))
    names = app.topic_names
    declared: list[tuple[str, ...]] = []

    async def declare(*topics: str) -> None:
        declared.append(topics)
        raise _Declared

    monkeypatch.setattr(app, "declare", declare)
    registry, state = TenantRegistry(app), TenantStateMirror(app)
    starts = (Router(app, registry, state).on_start(), registry.on_start(), state.on_start())
    for start in starts:
        with pytest.raises(_Declared):
            await start

    assert declared == [
        (names.ingress, names.control, names.shared_lane, names.dedicated_lanes),
        (names.tenants,),
        (names.tenant_state,),
    ]


async def test_the_publisher_creates_a_tenants_topics_as_the_table_specifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = build_worker(make_settings(data_dir=tmp_path, web_port=6143))
    names = app.topic_names
    created: list[TopicSpec] = []

    async def create_topics(admin: object, specs: list[TopicSpec]) -> dict[str, str]:
        created.extend(specs)
        return {}

    async def started_admin(servers: list[str], tracked: str) -> object:
        return SimpleNamespace()

    monkeypatch.setattr(publisher_module, "create_topics", create_topics)
    monkeypatch.setattr(publisher_module, "started_admin", started_admin)
    publisher = BatchPublisher(app)
    await publisher._declare({names.out(TENANT), names.dlq(TENANT)})

    table = app.topic_table
    assert created == [table.spec(names.dlq(TENANT)), table.spec(names.out(TENANT))]


async def test_declare_creates_each_topic_as_its_spec_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = build_worker(make_settings(data_dir=tmp_path, web_port=6142, topic_replication=3))
    created: dict[str, tuple[object, object, object]] = {}

    async def create_topic(
        topic: str, partitions: int, replication: int, **options: object
    ) -> None:
        created[topic] = (partitions, replication, options["config"])

    async def started() -> object:
        return app.producer

    monkeypatch.setattr(app.producer, "create_topic", create_topic)
    monkeypatch.setattr(app, "maybe_start_producer", started)
    names = list(every_topic_name(app.topic_names).values())

    await app.declare(*names)

    for name in names:
        spec = app.topic_table.spec(name)
        assert created[name] == (spec.partitions, spec.replication, spec.config), name


def _agent_topics(app: LanewayApp) -> list[tuple[str, ...]]:
    return [tuple(agent.channel.topics) for agent in app.agents.values()]  # type: ignore[attr-defined]


def test_the_topics_faust_declares_for_its_agents_follow_the_table(tmp_path: Path) -> None:
    settings = make_settings(
        data_dir=tmp_path, web_port=6143, ingress_partitions=5, topic_replication=3
    )
    shared, lane = build_worker(settings), build_lane_worker(settings)
    names = shared.topic_names

    assert _agent_topics(shared) == [(names.shared_lane,)]
    assert _agent_topics(lane) == [(names.dedicated_lanes,)]
    for app in (shared, lane):
        for agent in app.agents.values():
            topic = agent.channel  # type: ignore[attr-defined]
            spec = app.topic_table.spec(topic.topics[0])
            assert topic.internal
            assert (topic.partitions, topic.replicas) == (spec.partitions, spec.replication)
            assert topic.config == spec.config


def test_one_faust_topic_cannot_mix_specs(tmp_path: Path) -> None:
    app = build_worker(make_settings(data_dir=tmp_path, web_port=6144))
    names = app.topic_names

    with pytest.raises(ValueError, match="differ"):
        app.laneway_topic(names.shared_lane, names.dedicated_lanes)
