"""Per-tenant measurements and lane, in the compacted `laneway.tenant-state` topic.

The router that owns a tenant (the shared worker holding its ingress partition) writes the
tenant's state about once a second; every worker mirrors the topic, so stats answer the same
whichever worker is asked. The state holds counters and lane history, never message content.
"""

from __future__ import annotations

from typing import Any

import orjson

from agents.state.mirror import CompactedTopicMirror
from streams.app import LanewayApp


class TenantStateMirror(CompactedTopicMirror):
    """tenant id -> its latest state document (see `Router.state_document`)."""

    def __init__(self, app: LanewayApp, **kwargs: Any) -> None:
        super().__init__(app, app.topic_names.tenant_state, **kwargs)
        self.states: dict[str, dict[str, Any]] = {}

    def apply(self, key: str, value: bytes | None) -> None:
        if value is None:
            self.states.pop(key, None)
        else:
            self.states[key] = orjson.loads(value)

    async def publish(self, tenant_id: str, document: dict[str, Any]) -> None:
        await self.put(tenant_id, orjson.dumps(document), wait=False)

    async def forget(self, tenant_id: str) -> None:
        await self.put(tenant_id, None, wait=False)
