"""The dedicated-lane worker: `faust -A agents.lane_worker worker -l info`.

A separate process (own consumer group) that processes the dedicated lanes. It lowers its own CPU
priority (`LANEWAY_LANE_NICE`, see `agents.process.lower_priority`), and its processor agent
drains its share of `LANEWAY_LANE_DRAIN_RATE` records/s (the deployment's budget, split
by the dedicated lanes each lane worker holds). Priority alone did not keep a flood's drain
from slowing the shared lane: the broker serves both lanes and does not know whose work it does.
Importing this module builds nothing until the faust CLI reads `app`.
"""

from __future__ import annotations

from typing import Any

from agents.lanes import processor
from agents.process import freeze_after_start, lower_priority, use_uvloop_by_default
from agents.state import broker_watch
from agents.state.registry import TenantRegistry
from agents.web import metrics
from streams.app import LanewayApp, create_app
from streams.settings import Settings


def build_lane_worker(settings: Settings | None = None, **faust_overrides: Any) -> LanewayApp:
    """The lane worker's app: the dedicated lanes' processor and the tenant registry."""
    settings = settings or Settings()
    lane_settings = settings.model_copy(
        update={"app_id": settings.lane_worker_app_id, "web_port": settings.lane_web_port}
    )
    app = create_app(lane_settings, **faust_overrides)
    broker = broker_watch.install(app)
    # Tenant configs for the per-tenant output options (thin, masks) of the lane's events.
    registry = TenantRegistry(app)
    app.add_service(registry)
    pace = processor.install(
        app,
        registry,
        processor.dedicated_lanes(app),
        "laneway.dedicated",
        drain_budget=settings.lane_drain_rate,
    )
    metrics.install(app, metrics.LaneWorkerCollector(app, broker, pace))
    freeze_after_start(app, registry.ready)
    return app


def __getattr__(name: str) -> LanewayApp:
    """`agents.lane_worker.app`, built on first read: the faust CLI's `-A` reads it."""
    if name != "app":
        raise AttributeError(name)
    use_uvloop_by_default()
    app = build_lane_worker()
    lower_priority(app.laneway.lane_nice)
    globals()["app"] = app
    return app
