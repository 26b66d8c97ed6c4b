"""Laneway's behaviour: Faust agents, services, views and commands installed onto the app."""

from __future__ import annotations

from typing import Any

from agents import (
    admin_api,
    broker_watch,
    commands,  # noqa: F401  (importing registers the faust CLI commands)
    dashboard,
    dlq_replay,
    fetch_api,
    heap,
    http_ingest,
    metrics,
    processor,
    stats_api,
)
from agents.ingest import Ingest, IngressWriter
from agents.mllp_listener import MllpListener
from agents.registry import TenantRegistry
from agents.router import Router
from agents.tenant_state import TenantStateMirror
from agents.web_auth import Guard
from streams.app import LanewayApp, create_app
from streams.settings import Settings


def build_worker(settings: Settings | None = None, **faust_overrides: Any) -> LanewayApp:
    """The shared worker: ingest, router, shared lane and web views. Tests build it here too."""
    app = create_app(settings, **faust_overrides)
    settings = app.laneway
    broker = broker_watch.install(app)
    registry = TenantRegistry(app)
    state = TenantStateMirror(app)
    router = Router(app, registry, state)
    writer = IngressWriter(app, broker, registry)
    # Started in this order, after Faust's own services; each waits for what it reads.
    for service in (registry, state, router, writer):
        app.add_service(service)
    admin_token = settings.admin_token.get_secret_value() if settings.admin_token else None
    guard = Guard(registry, admin_token)
    ingest = Ingest(registry, writer)
    # Registered after the services above, so it opens once they have started.
    mllp = MllpListener(app, registry, ingest)
    app.add_service(mllp)
    processor.install(
        app, registry, processor.shared_lane(app), "laneway.shared", on_dlq=router.count_dlq
    )
    admin_api.install(app, registry, guard)
    stats = stats_api.install(app, registry, state, guard, broker)
    dashboard.install(app)
    metrics.install(app, stats, ingest, mllp.counters)
    dlq_replay.install(app, writer, guard)
    http_ingest.install(app, ingest, guard)
    fetch_api.install(app, registry, guard)
    heap.freeze_after_start(app, registry.ready, state.ready, router.ready)
    return app


def build_lane_worker(settings: Settings | None = None, **faust_overrides: Any) -> LanewayApp:
    """The lane worker: a separate process (own consumer group) for the dedicated lanes."""
    settings = settings or Settings()
    lane_settings = settings.model_copy(
        update={"app_id": settings.lane_worker_app_id, "web_port": settings.lane_web_port}
    )
    app = create_app(lane_settings, **faust_overrides)
    broker_watch.install(app)
    # Tenant configs for the per-tenant output options (thin, masks) of the lane's events.
    registry = TenantRegistry(app)
    app.add_service(registry)
    processor.install(
        app,
        registry,
        processor.dedicated_lanes(app),
        "laneway.dedicated",
        drain_rate=settings.lane_drain_rate,
    )
    heap.freeze_after_start(app, registry.ready)
    return app
