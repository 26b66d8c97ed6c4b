"""Lane workers scale: each drains its share of the deployment's budget, by the dedicated lanes
Kafka assigns it, and a rebalance moves lanes and budget between them (real broker, real
processes). The share itself is unit-tested in tests/unit/test_lanes.py (`drain_share`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import WorkerProcess, free_port, own_worker_env

BUDGET = 800.0
DRAIN_GAUGE = "laneway_lane_drain_rate_records_per_second"


async def drain_rate(session: aiohttp.ClientSession, worker: WorkerProcess) -> float | None:
    """The lane worker's drain pace from its /metrics, None while it does not answer."""
    try:
        async with session.get(f"http://127.0.0.1:{worker.env['LANEWAY_WEB_PORT']}/metrics") as r:
            text = await r.text()
    except aiohttp.ClientError:
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == DRAIN_GAUGE:
                return sample.value
    return None


async def rates_become(
    workers: list[WorkerProcess], expected: list[float], timeout_s: float
) -> list[float | None]:
    """Poll the workers' drain paces until they equal `expected`; the last reading."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            rates = [await drain_rate(session, worker) for worker in workers]
            if rates == expected or loop.time() > deadline:
                return rates
            await asyncio.sleep(0.5)


@pytest.mark.timeout(300)
async def test_two_lane_workers_split_the_drain_budget_and_one_takes_it_all_when_alone(
    worker_env: dict, tmp_path: Path
) -> None:
    env = own_worker_env(
        worker_env, "lanes2", tmp_path / "data", dedicated_lanes="4", lane_drain_rate=str(BUDGET)
    )
    # The shared worker declares the lane topics, so the lane workers find them when they join.
    second_env = {**env, "LANEWAY_LANE_WEB_PORT": str(free_port())}
    with (
        WorkerProcess(env, tmp_path / "shared.log"),
        WorkerProcess.lane(env, tmp_path / "lane-1.log", name="lane worker 1") as first,
    ):
        assert await rates_become([first], [BUDGET], 120) == [BUDGET], first.log_tail()

        with WorkerProcess.lane(
            second_env, tmp_path / "lane-2.log", name="lane worker 2"
        ) as second:
            half = BUDGET / 2
            rates = await rates_become([first, second], [half, half], 120)
            assert rates == [half, half], (rates, first.log_tail(), second.log_tail())

        # The second one left the group: the first holds every lane again, and all the budget.
        assert await rates_become([first], [BUDGET], 120) == [BUDGET], first.log_tail()


@pytest.mark.timeout(300)
async def test_raising_the_dedicated_lanes_adds_partitions_at_start(
    worker_env: dict, tmp_path: Path
) -> None:
    env = own_worker_env(worker_env, "grow", tmp_path / "data", dedicated_lanes="2")
    lanes = WorkerProcess(env, tmp_path / "before.log").topics.dedicated_lanes
    with WorkerProcess(env, tmp_path / "before.log"):
        assert await lane_partitions(env, lanes) == 2
    with WorkerProcess({**env, "LANEWAY_DEDICATED_LANES": "5"}, tmp_path / "after.log"):
        assert await lane_partitions(env, lanes) == 5


async def lane_partitions(env: dict[str, str], topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=env["LANEWAY_KAFKA_BOOTSTRAP"])
    await admin.start()
    try:
        [description] = await admin.describe_topics([topic])
        return len(description["partitions"])
    finally:
        await admin.close()


@pytest.mark.timeout(300)
async def test_a_lane_worker_started_before_any_shared_worker_gets_its_lanes(
    worker_env: dict, tmp_path: Path
) -> None:
    env = own_worker_env(
        worker_env, "lanefirst", tmp_path / "data", dedicated_lanes="4", lane_drain_rate=str(BUDGET)
    )
    # No shared worker has declared the lanes: Faust's own declare came too late for its join.
    with WorkerProcess.lane(env, tmp_path / "lane.log") as lane:
        assert await rates_become([lane], [BUDGET], 60) == [BUDGET], lane.log_tail()
