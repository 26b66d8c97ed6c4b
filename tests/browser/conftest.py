"""Browser-test fixtures: a worker topology of this folder's own, and headless Chromium.

The integration fixtures live in tests/integration/conftest.py, which pytest does not share with
this folder. Importing them here would start a second session-wide topology that lives until the
whole run ends; these are module-scoped instead, stopped as soon as the browser tests are done.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from playwright.async_api import Browser, async_playwright

from bench.dashboard import launch_chromium
from tests.integration.kafka_helpers import (
    Api,
    WorkerProcess,
    broker_answers,
    delete_topics_with_prefix,
    free_port,
)

ADMIN_TOKEN = "admin-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def dashboard_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment of this module's workers; their topics are deleted after."""
    bootstrap = os.environ.get("LANEWAY_KAFKA_BOOTSTRAP", "localhost:9092")
    if not asyncio.run(broker_answers(bootstrap, timeout_s=20.0)):
        pytest.fail(f"no Kafka broker answers at {bootstrap}; run `make kafka-up` (or `make test`)")
    run_id = uuid.uuid4().hex[:8]
    env = {
        "LANEWAY_KAFKA_BOOTSTRAP": bootstrap,
        "LANEWAY_APP_ID": f"laneway-browser-{run_id}",
        "LANEWAY_TOPIC_PREFIX": f"lwbrowser-{run_id}.",
        "LANEWAY_DATA_DIR": str(tmp_path_factory.mktemp("browser-worker-data")),
        "LANEWAY_INGRESS_PARTITIONS": "4",
        "LANEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "LANEWAY_WEB_PORT": str(free_port()),
        "LANEWAY_MLLP_PORT": str(free_port()),
        "LANEWAY_LANE_WEB_PORT": str(free_port()),
    }
    yield env
    asyncio.run(
        delete_topics_with_prefix(bootstrap, env["LANEWAY_TOPIC_PREFIX"], env["LANEWAY_APP_ID"])
    )


@pytest.fixture(scope="module")
def dashboard_worker(
    dashboard_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """The shared worker serving the dashboard, with the lane worker beside it."""
    logs = tmp_path_factory.mktemp("browser-worker-logs")
    lane_env = {**dashboard_env, "LANEWAY_WEB_PORT": dashboard_env["LANEWAY_LANE_WEB_PORT"]}
    lane_worker = WorkerProcess(lane_env, logs / "lane-worker.log", module="agents.lane_worker")
    worker = WorkerProcess(dashboard_env, logs / "worker.log")
    try:
        lane_worker.start()
        worker.start()
        yield worker
    finally:
        worker.stop()
        lane_worker.stop()


@pytest.fixture
async def dashboard_api(dashboard_worker: WorkerProcess) -> AsyncIterator[Api]:
    base_url = f"http://127.0.0.1:{dashboard_worker.env['LANEWAY_WEB_PORT']}"
    async with Api(base_url, ADMIN_TOKEN) as client:
        yield client


@pytest.fixture(scope="module")
async def chromium() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless; Playwright's own browser download is never used."""
    async with async_playwright() as playwright:
        browser = await launch_chromium(playwright)
        try:
            yield browser
        finally:
            await browser.close()
