"""Topics: their names, and the one table that says how each is created.

The names are part of the public contract (docs/architecture.md §3). Ingress and lane topics are
keyed by the tenant id as raw bytes, so one serializer is used for every tenant-keyed topic and
table (docs/faust-notes.md: mixed key serializers break partitioning).

Every Laneway topic is created from its row in `TOPIC_TABLE`, resolved by `TopicTable.spec`:
`LanewayApp.declare` creates topics from it, and the topics Faust declares for its agents are
built from it (`LanewayApp.laneway_topic`). No other code sets a partition count or a topic config.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from streams.settings import Settings

# A tenant id doubles as a Kafka topic-name suffix and a URL path segment, so it is a slug:
# lower-case letters, digits and inner hyphens, at most 64 characters.
TENANT_ID_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")

# DLQ suffix for ingress records whose key is not a valid tenant id. The underscore cannot occur
# in a tenant id, so no tenant can ever own this topic.
UNROUTED_SUFFIX = "_unrouted"


def is_valid_tenant_id(tenant_id: str) -> bool:
    return TENANT_ID_PATTERN.fullmatch(tenant_id) is not None


@dataclass(frozen=True, slots=True)
class TopicNames:
    """Every topic name Laneway uses, derived from one prefix."""

    prefix: str = "laneway."

    @property
    def ingress(self) -> str:
        return f"{self.prefix}ingress"

    @property
    def tenants(self) -> str:
        """Compacted topic of tenant configs, keyed by tenant id."""
        return f"{self.prefix}tenants"

    @property
    def tenant_state(self) -> str:
        """Compacted topic of per-tenant measurements and lane, keyed by tenant id."""
        return f"{self.prefix}tenant-state"

    @property
    def control(self) -> str:
        """Append-only log of lane moves: who moved where, when and why."""
        return f"{self.prefix}control"

    @property
    def shared_lane(self) -> str:
        """The lane of every tenant that is not in a dedicated one; partitioned like ingress."""
        return f"{self.prefix}lane.shared"

    @property
    def dedicated_lanes(self) -> str:
        """The dedicated lanes: partition N is lane N, one flooding tenant (or a few) each. One
        topic, not one per lane, so that Faust spreads the lanes over the lane workers (it
        assigns partition N of every one-partition topic to the same worker)."""
        return f"{self.prefix}lane.dedicated"

    def out(self, tenant_id: str) -> str:
        return f"{self.prefix}out.{tenant_id}"

    def dlq(self, tenant_id: str) -> str:
        return f"{self.prefix}dlq.{tenant_id}"

    @property
    def dlq_unrouted(self) -> str:
        return self.dlq(UNROUTED_SUFFIX)


# Per-tenant output and DLQ topics keep their records this long, also once the tenant is deleted
# (unless it is purged), so downstream teams can finish reading. README documents it.
OUTPUT_RETENTION_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class TopicKind:
    """One row of the topic table: how every topic of one kind is created."""

    key: str  # what the record key holds (README's topic table says the same)
    # The `Settings` field that gives the partition count (`ingress_partitions`,
    # `dedicated_lanes`), or None for one partition, which keeps all of the topic's records,
    # and so each tenant's, in one order.
    partitions: str | None = None
    compacted: bool = False  # Kafka keeps the latest record per key
    retention_ms: int | None = None  # None: the broker's default


# Kind (a `TopicNames` member) -> row. Every topic also carries the size contract's record limit
# and the deployment's replication and min.insync.replicas (`TopicSpec`).
TOPIC_TABLE: Mapping[str, TopicKind] = MappingProxyType(
    {
        "ingress": TopicKind("tenant id (raw bytes)", partitions="ingress_partitions"),
        # Same partition as in ingress: the worker that processes a tenant's shared lane also
        # measures and routes it (agents.lanes.router).
        "shared_lane": TopicKind("tenant id", partitions="ingress_partitions"),
        # Partition N is dedicated lane N (the router picks it, not the key's hash).
        "dedicated_lanes": TopicKind("tenant id", partitions="dedicated_lanes"),
        "out": TopicKind("tenant id", retention_ms=OUTPUT_RETENTION_MS),
        "dlq": TopicKind("tenant id", retention_ms=OUTPUT_RETENTION_MS),
        "dlq_unrouted": TopicKind("record key", retention_ms=OUTPUT_RETENTION_MS),
        # Mirrored whole by every worker (agents.state.mirror): one total order of changes.
        "tenants": TopicKind("tenant id", compacted=True),
        "tenant_state": TopicKind("tenant id", compacted=True),
        "control": TopicKind("tenant id"),
    }
)

# Kinds of the names that end in a variable part, by the part before it.
_VARIABLE_KINDS = {"out": "out", "dlq": "dlq"}


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """How one topic is created: its row of the table with the deployment's settings."""

    name: str
    key: str
    partitions: int
    compacted: bool
    retention_ms: int | None
    max_record_bytes: int  # the size contract's record limit (docs/limits.md)
    replication: int
    min_insync_replicas: int

    @property
    def config(self) -> dict[str, str]:
        """The topic's Kafka configuration."""
        config = {
            # An acks=all write (and so an AA) needs this many in-sync replicas.
            "min.insync.replicas": str(self.min_insync_replicas),
            # The broker's default is 1 MiB, whatever the size contract says.
            "max.message.bytes": str(self.max_record_bytes),
        }
        if self.compacted:
            config["cleanup.policy"] = "compact"
        if self.retention_ms is not None:
            config["retention.ms"] = str(self.retention_ms)
        return config


class TopicTable:
    """The spec of every Laneway topic name, for one deployment's settings."""

    def __init__(self, settings: Settings) -> None:
        self.names = TopicNames(settings.topic_prefix)
        self._settings = settings

    def kind(self, name: str) -> str:
        """The kind (row of `TOPIC_TABLE`) of topic `name`; KeyError if it is no Laneway topic."""
        names = self.names
        fixed = {
            names.ingress: "ingress",
            names.shared_lane: "shared_lane",
            names.dedicated_lanes: "dedicated_lanes",
            names.dlq_unrouted: "dlq_unrouted",
            names.tenants: "tenants",
            names.tenant_state: "tenant_state",
            names.control: "control",
        }
        if name in fixed:
            return fixed[name]
        if name.startswith(names.prefix):
            stem, _, variable = name.removeprefix(names.prefix).rpartition(".")
            kind = _VARIABLE_KINDS.get(stem)
            if kind is not None and is_valid_tenant_id(variable):
                return kind
        raise KeyError(f"{name!r} is no Laneway topic")

    def spec(self, name: str) -> TopicSpec:
        """How topic `name` is created; KeyError if it is no Laneway topic."""
        row = TOPIC_TABLE[self.kind(name)]
        settings = self._settings
        return TopicSpec(
            name=name,
            key=row.key,
            partitions=1 if row.partitions is None else getattr(settings, row.partitions),
            compacted=row.compacted,
            retention_ms=row.retention_ms,
            max_record_bytes=settings.max_record_bytes,
            replication=settings.topic_replication,
            min_insync_replicas=settings.topic_min_insync_replicas,
        )
