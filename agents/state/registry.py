"""The tenant registry: tenant configs in the compacted `laneway.tenants` topic, in every worker."""

from __future__ import annotations

from typing import Any

from agents.state.mirror import CompactedTopicMirror
from streams.app import LanewayApp
from streams.tenants import RetiredTenant, TenantDirectory, TenantRecord, stored_from_json


class TenantRegistry(CompactedTopicMirror):
    """Every tenant's config, as a `TenantDirectory` for routing and authorisation."""

    def __init__(self, app: LanewayApp, **kwargs: Any) -> None:
        super().__init__(app, app.topic_names.tenants, **kwargs)
        self.directory = TenantDirectory()

    def apply(self, key: str, value: bytes | None) -> None:
        self.directory.apply(key, None if value is None else stored_from_json(value), value)

    async def save(self, record: TenantRecord | RetiredTenant) -> None:
        """Store a tenant's new version, or the marker that retires it."""
        await self.put(record.id, record.to_json())

    async def forget(self, tenant_id: str) -> None:
        await self.put(tenant_id, None)  # a tombstone: compaction removes the id for good
