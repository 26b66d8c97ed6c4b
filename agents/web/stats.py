"""Per-tenant stats for operators: counts, rates, lane, backlog and flags.

GET /api/tenants/{tenant_id}/stats   that tenant's token or the admin token
GET /api/stats                       admin: every tenant plus totals;
                                     ?sort=&order=asc|desc&lane=&flag=&q=&limit=

Every worker answers the same, whichever is asked, because nothing here is local to a worker:
- received, rates, lane and recent moves, last message: the tenant-state document that the
  router owning the tenant publishes about once a second (`TenantStateMirror`, in every worker);
- paused and the contract rate: the tenant registry (mirrored the same way);
- processed / events / DLQ counts and backlogs: Kafka offsets, read once a second by
  `agents.state.kafka_probe.KafkaProbe`: end offsets of the tenant's out and DLQ topics, and
  consumer-group lag.
Only the sparkline is sampled locally (every `SAMPLE_S`), from the same mirrored rates.
The rows, flags, queries and totals are computed in `streams.stats`. Nothing here reads message
content (invariant 5).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp import web
from faust.web import View
from mode import Service

from agents.state.broker_watch import BrokerWatch
from agents.state.kafka_probe import KafkaProbe
from agents.state.registry import TenantRegistry
from agents.state.tenant_state import TenantStateMirror
from agents.web.auth import Guard
from agents.web.common import ApiError, api_errors, json_response, no_store
from streams.app import LanewayApp
from streams.stats import (
    NOTES,
    SAMPLE_S,
    InvalidQuery,
    RateHistory,
    StatsQuery,
    TenantStats,
    current_rate_10s,
    iso_time,
    tenant_stats,
    totals,
)
from streams.tenants import TenantSummary

# Rows as old as this are served again: the inputs they come from change about once a second.
ROWS_MAX_AGE_S = 1.0


class StatsService(Service):
    """Builds the stats of every tenant from the mirrors and the probe; samples sparklines."""

    def __init__(
        self,
        app: LanewayApp,
        registry: TenantRegistry,
        tenant_states: TenantStateMirror,
        broker: BrokerWatch,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.registry = registry
        self.tenant_states = tenant_states
        self.broker = broker
        self.probe = KafkaProbe(app, registry, tenant_states, broker)
        self.history = RateHistory()
        self._rows: list[TenantStats] | None = None
        self._rows_at = 0.0
        self._rows_changes = -1
        self._rows_json: dict[str, orjson.Fragment] = {}

    def on_init_dependencies(self) -> Iterable[Service]:
        return [self.probe]

    @Service.timer(SAMPLE_S)
    async def _sample(self) -> None:
        # Only tenants with a state document have ever sent: the others' rate is 0, which
        # starts no sparkline.
        now = time.time()
        self.history.sample(
            {
                tenant: current_rate_10s(document, now)
                for tenant, document in self.tenant_states.states.items()
            }
        )

    def tenant(self, tenant_id: str, now: float) -> TenantStats | None:
        summary = self.registry.directory.summary(tenant_id)
        return None if summary is None else self._stats(summary, now)

    def rows(self, now: float) -> list[TenantStats]:
        """Every onboarded tenant, by id. Built at most once per `ROWS_MAX_AGE_S` (and again
        after any tenant's config changed), however many requests and scrapes ask."""
        changes = self.registry.directory.changes
        if (
            self._rows is None
            or changes != self._rows_changes
            or not 0 <= now - self._rows_at < ROWS_MAX_AGE_S
        ):
            summaries = sorted(self.registry.directory.summaries(), key=lambda s: s.id)
            self._rows = [self._stats(summary, now) for summary in summaries]
            self._rows_at, self._rows_changes = now, changes
            self._rows_json = {}
        return self._rows

    def row_json(self, row: TenantStats) -> orjson.Fragment:
        """`row` (one of the last `rows`) as JSON, serialized once however often it is asked."""
        fragment = self._rows_json.get(row.tenant)
        if fragment is None:
            fragment = self._rows_json[row.tenant] = orjson.Fragment(orjson.dumps(row.as_json()))
        return fragment

    def _stats(self, summary: TenantSummary, now: float) -> TenantStats:
        return tenant_stats(
            summary,
            self.tenant_states.states.get(summary.id),
            self.probe.offsets,
            self.probe.dlq_grew_at.get(summary.id),
            self.history.series(summary.id),
            self.app.topic_names,
            now,
        )


def kafka_status(broker: BrokerWatch) -> dict[str, Any]:
    """The broker link as the stats answers show it: counts stop moving while it is down."""
    return {"up": broker.up, "brokers": broker.brokers, "down_since": iso_time(broker.down_since)}


def install(
    app: LanewayApp,
    registry: TenantRegistry,
    tenant_states: TenantStateMirror,
    guard: Guard,
    broker: BrokerWatch,
) -> StatsService:
    """Register the stats views on `app`; the service also feeds the dashboard and metrics."""
    stats_service = StatsService(app, registry, tenant_states, broker)
    app.add_service(stats_service)

    @app.page("/api/tenants/{tenant_id}/stats")
    class TenantStatsView(View):
        @no_store
        @api_errors
        async def get(self, request: web.Request, tenant_id: str) -> web.Response:
            await guard.tenant_or_admin(request, tenant_id)
            stats = stats_service.tenant(tenant_id, time.time())
            if stats is None:  # offboarded between the check and here
                raise ApiError(404, "unknown_tenant", "no such tenant")
            return json_response({**stats.as_json(), "kafka": kafka_status(broker), "notes": NOTES})

    @app.page("/api/stats")
    class AllStatsView(View):
        @no_store
        @api_errors
        async def get(self, request: web.Request) -> web.Response:
            await guard.admin(request)
            try:
                query = StatsQuery.parse(request.query, request.query.getall("flag", []))
            except InvalidQuery as error:
                raise ApiError(
                    400,
                    "invalid_query",
                    str(error),
                    parameter=error.parameter,
                    allowed=error.allowed,
                ) from error
            now = time.time()
            rows = stats_service.rows(now)
            shown = query.apply(rows)
            offsets = stats_service.probe.offsets
            return json_response(
                {
                    "generated_at": iso_time(now),
                    "kafka": kafka_status(broker),
                    "offsets_read_at": iso_time(offsets.read_at) if offsets.read_at else None,
                    "sparkline_interval_s": SAMPLE_S,
                    "sort": query.sort,
                    "order": "desc" if query.descending else "asc",
                    "matched": len(shown),
                    "totals": totals(rows, offsets, app.topic_names),
                    "tenants": [stats_service.row_json(row) for row in shown[: query.limit]],
                    "notes": NOTES,
                }
            )

    return stats_service
