"""Integration fixtures: the real broker that `make test` starts, and real worker processes.

Every test session uses its own topic prefix and app id, so runs never see each other's data.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from tests.harness import (
    Api,
    WorkerProcess,
    fresh_ports,
    group_settles,
    suite_env,
)

ADMIN_TOKEN = "admin-" + uuid.uuid4().hex


@pytest.fixture(scope="session")
def worker_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Environment for worker processes of this test session; its topics are deleted after."""
    with suite_env(
        "test", tmp_path_factory.mktemp("worker-data"), ADMIN_TOKEN, hold_down_s="3"
    ) as env:
        yield env


@pytest.fixture(scope="session")
def bootstrap(worker_env: dict) -> str:
    return worker_env["LANEWAY_KAFKA_BOOTSTRAP"]


@pytest.fixture(scope="session")
def worker(
    worker_env: dict, lane_worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One real `faust -A agents.worker worker` process for the whole session, with the
    lane worker beside it: the full process topology."""
    log_dir: Path = tmp_path_factory.mktemp("worker-logs")
    process = WorkerProcess(worker_env, log_dir / "worker.log")
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def lane_worker(
    worker_env: dict, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """The dedicated-lane worker process, beside the session's shared worker."""
    log_dir: Path = tmp_path_factory.mktemp("lane-worker-logs")
    process = WorkerProcess.lane(worker_env, log_dir / "lane-worker.log")
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def producer(bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


@pytest.fixture
async def admin(bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await client.start()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture(scope="session")
def admin_token() -> str:
    return ADMIN_TOKEN


@pytest.fixture
async def api(worker: WorkerProcess) -> AsyncIterator[Api]:
    """HTTP client for the session worker's web server."""
    async with Api.of(worker) as client:
        yield client


@pytest.fixture
def second_worker(
    worker: WorkerProcess, worker_env: dict, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """A second shared worker beside the session's: same app id and topic prefix, hence the same
    consumer group, with its own web port, MLLP port and data dir. Yielded once the group has
    settled with both; after the test it is stopped and the group settles back, so that later
    tests do not run into a rebalance."""
    base = tmp_path_factory.mktemp("second-worker")
    env = {**worker_env, **fresh_ports(), "LANEWAY_DATA_DIR": str(base / "data")}
    bootstrap, group = worker_env["LANEWAY_KAFKA_BOOTSTRAP"], worker_env["LANEWAY_APP_ID"]
    process = WorkerProcess(env, base / "second-worker.log")
    process.start()
    try:
        if not asyncio.run(group_settles(bootstrap, group, 2, timeout_s=60)):
            pytest.fail(f"the group did not settle with two workers:\n{process.log_tail()}")
        yield process
    finally:
        process.stop()
        asyncio.run(group_settles(bootstrap, group, 1, timeout_s=60))
