"""`make run-cluster` end to end: scripts/run.sh with 3 shared and 2 lane workers on the real
broker, a short demo, then Ctrl-C's path (the script stops every worker on its way out).

Checked: all 5 workers became ready and served their web port while the demo ran, every shared
worker's router read a share of ingress (one consumer group, not 3 deployments), and each demo
tenant's events arrived downstream. The deployment has its own app id and topic prefix, deleted
after the test.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import socket
import subprocess
import time
import uuid
from pathlib import Path

import aiohttp
import pytest

from tests.harness import REPO, HarnessError, suite_env

pytestmark = pytest.mark.integration

SHARED, LANES = 3, 2
DEMO_SECONDS = 5
READY_TIMEOUT_S = 150.0  # two start waves of the script, on a busy 2-core host
EXIT_TIMEOUT_S = 60.0  # the demo, its 10-s wait for the last events, the workers' stop
DEMO_TENANTS = ("st-marys", "northside-lab", "riverside-clinic")
# The demo's final per-tenant line: "  st-marys  sent  198  refused  0  events  191  dlq  7  [...]"
# A router's log line once it holds ingress partitions (none: "[]").
READS_INGRESS = re.compile(rb"router reads ingress partitions \[[0-9]")
REPORT_LINE = re.compile(
    r"^\s+(\S+)\s+sent\s+(\d+)\s+refused\s+(\d+)\s+events\s+(\d+)\s+dlq\s+(\d+)"
)


def free_port_block(size: int) -> int:
    """The first of `size` consecutive ports nothing listens on (the script lays its workers'
    ports out from bases, 2 apart)."""
    for _ in range(200):
        base = random.randrange(20000, 32000 - size)
        try:
            for port in range(base, base + size):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise HarnessError("no free block of ports between 20000 and 32000")


async def serving(port: int, timeout_s: float) -> bool:
    """The worker on `port` answers GET /metrics with 200 within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    if response.status == 200:
                        return True
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    return False


async def all_serving(ports: list[int], timeout_s: float) -> list[bool]:
    return await asyncio.gather(*(serving(port, timeout_s) for port in ports))


def wait_for_line(
    path: Path, text: str, process: subprocess.Popen[bytes], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in path.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise HarnessError(f"no {text!r} from scripts/run.sh:\n{path.read_text()[-4000:]}")
        time.sleep(0.2)


def test_run_cluster_starts_five_workers_and_the_demo_reaches_downstream(tmp_path: Path) -> None:
    base = free_port_block(16)
    ports = {
        "LANEWAY_WEB_PORT": base,  # shared: base, +2, +4
        "LANEWAY_LANE_WEB_PORT": base + 1,  # lanes: +1, +3
        "LANEWAY_MLLP_PORT": base + 10,  # +10, +12, +14
        "LANEWAY_MLLP_TLS_PORT": base + 11,  # not bound: no certificate
    }
    output = tmp_path / "run-cluster.out"
    with suite_env("cluster", tmp_path / "data", "admin-" + uuid.uuid4().hex) as env:
        env = {**env, **{name: str(port) for name, port in ports.items()}}
        env["LANEWAY_RUN_DIR"] = str(tmp_path / "run")
        # The default 8, not the suites' 4: Faust's sticky assignment leaves a third worker
        # joining two that hold 2 partitions each without any.
        env["LANEWAY_INGRESS_PARTITIONS"] = "8"
        command = ["bash", "scripts/run.sh", "--shared", str(SHARED), "--lanes", str(LANES)]
        command += ["--seconds", str(DEMO_SECONDS)]
        with output.open("wb") as out:
            process = subprocess.Popen(
                command,
                cwd=REPO,
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for_line(output, f"all {SHARED + LANES} workers ready", process, READY_TIMEOUT_S)
            web_ports = [base + 2 * n for n in range(SHARED)] + [
                base + 1 + 2 * m for m in range(LANES)
            ]
            answered = asyncio.run(all_serving(web_ports, 20.0))
            process.wait(timeout=EXIT_TIMEOUT_S)
        finally:
            if process.poll() is None:
                process.terminate()  # its EXIT trap stops the workers
                process.wait(timeout=60)
    text = output.read_text(errors="replace")
    assert process.returncode == 0, text[-4000:]
    assert dict(zip(web_ports, answered, strict=True)) == dict.fromkeys(web_ports, True), text
    for n in range(1, SHARED + 1):
        log = (tmp_path / "run" / "logs" / f"shared-{n}.log").read_bytes()
        assert READS_INGRESS.search(log), f"shared-{n}'s router never read an ingress partition"
    final = text.split("demo traffic finished", 1)[-1].splitlines()
    report = {m[1]: [int(g) for g in m.groups()[1:]] for m in map(REPORT_LINE.match, final) if m}
    assert set(report) == set(DEMO_TENANTS), text[-4000:]
    for tenant, (sent, _refused, events, _dlq) in report.items():
        assert sent > 0 and events > 0, f"{tenant}: sent {sent}, {events} events downstream"
