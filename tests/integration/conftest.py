"""Integration fixtures: the real broker that `make test` starts, and real worker processes.

Every test session uses its own topic prefix and app id, so runs never see each other's data.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from tests.integration.kafka_helpers import (
    Api,
    WorkerProcess,
    broker_answers,
    delete_topics_with_prefix,
    free_port,
)

BOOTSTRAP = os.environ.get("LANEWAY_KAFKA_BOOTSTRAP", "localhost:9092")
ADMIN_TOKEN = "admin-" + uuid.uuid4().hex


@pytest.fixture(scope="session")
def bootstrap() -> str:
    # A missing broker is a set-up error, not a reason to skip: `make test` starts one.
    if not asyncio.run(broker_answers(BOOTSTRAP, timeout_s=20.0)):
        pytest.fail(f"no Kafka broker answers at {BOOTSTRAP}; run `make kafka-up` (or `make test`)")
    return BOOTSTRAP


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def worker_env(
    bootstrap: str, run_id: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict]:
    """Environment for worker processes of this test session; its topics are deleted after."""
    yield {
        "LANEWAY_KAFKA_BOOTSTRAP": bootstrap,
        "LANEWAY_APP_ID": f"laneway-test-{run_id}",
        "LANEWAY_TOPIC_PREFIX": f"lwtest-{run_id}.",
        "LANEWAY_DATA_DIR": str(tmp_path_factory.mktemp("worker-data")),
        "LANEWAY_INGRESS_PARTITIONS": "4",
        "LANEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "LANEWAY_WEB_PORT": str(free_port()),
        "LANEWAY_MLLP_PORT": str(free_port()),
        "LANEWAY_LANE_WEB_PORT": str(free_port()),
        "LANEWAY_HOLD_DOWN_S": "3",
    }
    # Faust's own topics start with the app id, Laneway's with the topic prefix.
    asyncio.run(delete_topics_with_prefix(bootstrap, f"lwtest-{run_id}.", f"laneway-test-{run_id}"))


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
    env = {**worker_env, "LANEWAY_WEB_PORT": worker_env["LANEWAY_LANE_WEB_PORT"]}
    process = WorkerProcess(env, log_dir / "lane-worker.log", module="agents.lane_worker")
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
    async with Api(f"http://127.0.0.1:{worker.env['LANEWAY_WEB_PORT']}", ADMIN_TOKEN) as client:
        yield client


async def _group_settles(bootstrap: str, group: str, members: int, timeout_s: float) -> bool:
    """True once the consumer group is stable (no rebalance under way) with `members` members."""
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await client.start()
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            [response] = await client.describe_consumer_groups([group])
            [(_, _, state, _, _, found)] = response.groups
            if state == "Stable" and len(found) == members:
                return True
            await asyncio.sleep(0.2)
        return False
    finally:
        await client.close()


@pytest.fixture
def second_worker(
    worker: WorkerProcess, worker_env: dict, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """A second shared worker beside the session's: same app id and topic prefix, hence the same
    consumer group, with its own web port, MLLP port and data dir. Yielded once the group has
    settled with both; after the test it is stopped and the group settles back, so that later
    tests do not run into a rebalance."""
    base = tmp_path_factory.mktemp("second-worker")
    env = {
        **worker_env,
        "LANEWAY_WEB_PORT": str(free_port()),
        "LANEWAY_MLLP_PORT": str(free_port()),
        "LANEWAY_DATA_DIR": str(base / "data"),
    }
    bootstrap, group = worker_env["LANEWAY_KAFKA_BOOTSTRAP"], worker_env["LANEWAY_APP_ID"]
    process = WorkerProcess(env, base / "second-worker.log")
    process.start()
    try:
        if not asyncio.run(_group_settles(bootstrap, group, 2, timeout_s=60)):
            pytest.fail(f"the group did not settle with two workers:\n{process.log_tail()}")
        yield process
    finally:
        process.stop()
        asyncio.run(_group_settles(bootstrap, group, 1, timeout_s=60))
