"""Topic names: the layout is part of the public contract (docs/architecture.md §3).

Ingress and lane topics are keyed by the tenant id as raw bytes, so one serializer is used for
every tenant-keyed topic and table (docs/faust-notes.md: mixed key serializers break partitioning).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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

    def dedicated_lane(self, lane: int) -> str:
        return f"{self.prefix}lane.dedicated.{lane}"

    def out(self, tenant_id: str) -> str:
        return f"{self.prefix}out.{tenant_id}"

    def dlq(self, tenant_id: str) -> str:
        return f"{self.prefix}dlq.{tenant_id}"

    @property
    def dlq_unrouted(self) -> str:
        return self.dlq(UNROUTED_SUFFIX)
