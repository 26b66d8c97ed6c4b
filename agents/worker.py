"""The shared worker: `faust -A agents.worker worker -l info`.

It runs ingest (MLLP and HTTP), the router, the shared lane's processor and every web view. Tests
build it through `build_worker`; importing this module builds nothing until the faust CLI reads
`app`.
"""

from __future__ import annotations

from typing import Any

from agents import commands  # noqa: F401  (importing registers the faust CLI commands)
from agents.ingest import http, replay
from agents.ingest.accept import Ingest
from agents.ingest.mllp import MllpListener
from agents.ingest.writer import IngressWriter
from agents.lanes import processor
from agents.lanes.router import Router
from agents.process import freeze_after_start, use_uvloop_by_default
from agents.state import broker_watch
from agents.state.registry import TenantRegistry
from agents.state.tenant_state import TenantStateMirror
from agents.web import admin, dashboard, fetch, metrics, stats
from agents.web.auth import Guard
from streams.app import LanewayApp, create_app
from streams.settings import Settings
from streams.tls import TlsConfigError


def build_worker(settings: Settings | None = None, **faust_overrides: Any) -> LanewayApp:
    """The shared worker's app, with every service, agent and view installed."""
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
    ingest = Ingest(registry, writer, state.states)
    # Registered after the services above, so it opens once they have started.
    mllp = MllpListener(app, registry, ingest)
    app.add_service(mllp)
    processor.install(
        app, registry, processor.shared_lane(app), "laneway.shared", on_dlq=router.count_dlq
    )
    admin.install(app, registry, guard)
    stats_service = stats.install(app, registry, state, guard, broker)
    dashboard.install(app)
    metrics.install(
        app,
        metrics.LanewayCollector(stats_service, ingest, mllp.counters, settings.dedicated_lanes),
    )
    replay.install(app, writer, guard)
    http.install(app, ingest, guard)
    fetch.install(app, registry, guard)
    freeze_after_start(app, registry.ready, state.ready, router.ready)
    return app


def __getattr__(name: str) -> LanewayApp:
    """`agents.worker.app`, built on first read: the faust CLI's `-A agents.worker` reads it."""
    if name != "app":
        raise AttributeError(name)
    use_uvloop_by_default()
    try:
        app = build_worker()
    except TlsConfigError as error:
        # One line an operator can act on, not a traceback through the faust CLI's imports.
        raise SystemExit(f"Laneway cannot start: {error}") from None
    globals()["app"] = app
    return app
