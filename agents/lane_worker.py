"""The dedicated-lane worker: `faust -A agents.lane_worker worker -l info`.

A separate process (own consumer group) that processes the dedicated lanes. It lowers its own CPU
priority (`LANEWAY_LANE_NICE`, see `agents.process.lower_priority`), and its processor agent
drains its share of `LANEWAY_LANE_DRAIN_RATE` records/s (the deployment's budget, split
by the dedicated lanes each lane worker holds). Priority alone did not keep a flood's drain
from slowing the shared lane: the broker serves both lanes and does not know whose work it does.
Importing this module builds nothing until the faust CLI reads `app`.
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

from agents.lanes import processor
from agents.process import freeze_after_start, lower_priority, use_uvloop_by_default
from agents.state import broker_watch
from agents.state.registry import TenantRegistry
from agents.state.topic_admin import create_topics
from agents.web import metrics
from streams.app import LanewayApp, create_app
from streams.settings import Settings

log = logging.getLogger(__name__)

LANE_METADATA_MAX_AGE_MS = 30_000  # Faust's default is 5 minutes


def build_lane_worker(settings: Settings | None = None, **faust_overrides: Any) -> LanewayApp:
    """The lane worker's app: the dedicated lanes' processor and the tenant registry."""
    settings = settings or Settings()
    lane_settings = settings.model_copy(
        update={"app_id": settings.lane_worker_app_id, "web_port": settings.lane_web_port}
    )
    # A lane (partition) it missed at its join, or one the router added, is noticed within this
    # long: the consumer reads the metadata of its one topic only, so it costs next to nothing.
    overrides = {"consumer_metadata_max_age_ms": LANE_METADATA_MAX_AGE_MS, **faust_overrides}
    app = create_app(lane_settings, **overrides)
    broker = broker_watch.install(app)
    wait_for_broker = app.startup_gate

    async def broker_then_lanes() -> None:
        if wait_for_broker is not None:
            await wait_for_broker()
        await create_dedicated_lanes(app)

    app.startup_gate = broker_then_lanes
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


async def create_dedicated_lanes(app: LanewayApp) -> None:
    """Create the dedicated-lanes topic before Faust's consumer joins its group. Faust declares
    it too, but subscribes before the new topic reaches its metadata: a lane worker that starts
    before any shared worker was then assigned no lane until the next metadata refresh, minutes
    later (seen in tests/integration/test_scale_out.py)."""
    spec = app.topic_table.spec(app.topic_names.dedicated_lanes)
    admin = AIOKafkaAdminClient(bootstrap_servers=app.laneway.bootstrap_servers)
    await admin.start()
    try:
        failed = await create_topics(admin, [spec])
    finally:
        await admin.close()
    for topic, error in failed.items():  # Faust's declare will try again
        log.warning("topic %s not created before joining: %s", topic, error)


def __getattr__(name: str) -> LanewayApp:
    """`agents.lane_worker.app`, built on first read: the faust CLI's `-A` reads it."""
    if name != "app":
        raise AttributeError(name)
    use_uvloop_by_default()
    app = build_lane_worker()
    lower_priority(app.laneway.lane_nice)
    globals()["app"] = app
    return app
