"""The shared harness (tests/harness): worker settings and the subprocess wrapper, no broker."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from tests.harness import ChildProcess, HarnessError, WorkerProcess, own_worker_env, worker_env

PORTS = ("LANEWAY_WEB_PORT", "LANEWAY_LANE_WEB_PORT", "LANEWAY_MLLP_PORT")


def test_worker_env_gives_a_worker_of_its_own(tmp_path: Path) -> None:
    first = worker_env("broker:9092", "lw-a", tmp_path / "a", lanes_enabled="false")
    second = worker_env("broker:9092", "lw-b", tmp_path / "b")
    assert first["LANEWAY_TOPIC_PREFIX"] == "lw-a."
    assert first["LANEWAY_DATA_DIR"] == str(tmp_path / "a")
    assert first["LANEWAY_LANES_ENABLED"] == "false"  # a setting by field name
    assert len({first[port] for port in PORTS} | {second[port] for port in PORTS}) == 6
    assert first["LANEWAY_ADMIN_TOKEN"] != second["LANEWAY_ADMIN_TOKEN"]


def test_own_worker_env_sits_under_its_base_with_ports_of_its_own(tmp_path: Path) -> None:
    base = worker_env(
        "broker:9092", "lw-run", tmp_path, topic_prefix="lwrun.", admin_token="t", hold_down_s="3"
    )
    own = own_worker_env(base, "small", tmp_path / "small", max_message_bytes="1024")
    assert own["LANEWAY_APP_ID"] == "lw-run-small"
    # Under the base's prefix: the session's clean-up of that prefix removes these topics too.
    assert own["LANEWAY_TOPIC_PREFIX"] == "lwrun.small."
    assert own["LANEWAY_DATA_DIR"] == str(tmp_path / "small")
    assert all(own[port] != base[port] for port in PORTS)
    assert own["LANEWAY_HOLD_DOWN_S"] == "3"
    assert own["LANEWAY_ADMIN_TOKEN"] == "t"
    assert own["LANEWAY_MAX_MESSAGE_BYTES"] == "1024"


def test_the_lane_worker_serves_on_the_lane_web_port(tmp_path: Path) -> None:
    env = worker_env("broker:9092", "lw-lane", tmp_path)
    lane = WorkerProcess.lane(env, tmp_path / "lane.log")
    assert lane.env["LANEWAY_WEB_PORT"] == env["LANEWAY_LANE_WEB_PORT"]
    assert lane.command[-4:] == ["agents.lane_worker", "worker", "-l", "info"]
    assert lane.topics.prefix == "lw-lane."


def python(tmp_path: Path, code: str) -> ChildProcess:
    return ChildProcess("child", [sys.executable, "-c", code], {}, tmp_path / "child.log")


def test_start_returns_once_the_process_is_ready_and_stop_ends_it(tmp_path: Path) -> None:
    child = python(tmp_path, "import time; print('Ready', flush=True); time.sleep(60)")
    with child:
        assert child.running
    assert not child.running


def test_a_process_that_exits_during_start_up_fails_with_its_log(tmp_path: Path) -> None:
    child = python(tmp_path, "import sys; print('no broker', flush=True); sys.exit(3)")
    with pytest.raises(HarnessError, match="exited during start-up:\nno broker"):
        child.start()


def test_a_process_never_ready_times_out(tmp_path: Path) -> None:
    child = python(tmp_path, "import time; time.sleep(60)")
    try:
        with pytest.raises(HarnessError, match="not ready within"):
            child.start(ready_timeout_s=0.5)
    finally:
        child.stop()


async def test_ready_waits_without_blocking_the_event_loop(tmp_path: Path) -> None:
    code = "import time; time.sleep(1); print('Ready', flush=True); time.sleep(60)"
    child = python(tmp_path, code)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    child.spawn()
    ticker = asyncio.create_task(tick())
    try:
        await child.ready(timeout_s=30)
        child.check_alive()
    finally:
        ticker.cancel()
        child.stop()
    assert ticks > 0  # other tasks ran while it waited
    with pytest.raises(HarnessError, match="is not running"):
        child.check_alive()
