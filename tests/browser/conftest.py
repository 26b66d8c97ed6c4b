"""Browser-test fixtures: a worker topology of this folder's own, and headless Chromium.

The integration fixtures live in tests/integration/conftest.py, which pytest does not share with
this folder. Importing them here would start a second session-wide topology that lives until the
whole run ends; these are module-scoped instead, stopped as soon as the browser tests are done.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from playwright.async_api import Browser, async_playwright

from tests.harness import Api, WorkerProcess, suite_env
from tests.harness.browser import launch_chromium

ADMIN_TOKEN = "admin-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def dashboard_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment of this module's workers; their topics are deleted after."""
    with suite_env("browser", tmp_path_factory.mktemp("browser-worker-data"), ADMIN_TOKEN) as env:
        yield env


@pytest.fixture(scope="module")
def dashboard_worker(
    dashboard_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """The shared worker serving the dashboard, with the lane worker beside it."""
    logs = tmp_path_factory.mktemp("browser-worker-logs")
    lane_worker = WorkerProcess.lane(dashboard_env, logs / "lane-worker.log")
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
    async with Api.of(dashboard_worker) as client:
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
