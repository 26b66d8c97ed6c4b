"""The ingest ceiling per deployment (streams/ceiling.py) on the real broker: two shared workers
of one deployment, a tenant flooding both over HTTP, a quiet tenant beside it.

Each worker alone would admit the whole ceiling (20 x contract), so a sender spreading over two
got twice it. Now the partition owner's router publishes the tenant's deployment-wide rate, and
each worker admits its share: together they stay near one ceiling, while the quiet tenant,
within its contract, is never refused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Api, Sender, log, message, suite_env
from tests.harness.scale import Scene

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "admin-ceiling"
# The flood: contract 0.5 msg/s (burst 1), so the ceiling is 10 msg/s (burst 20); it offers 5x
# that to each worker, in POSTs of 5 messages.
FLOOD_CONTRACT = 0.5
CEILING = FLOOD_CONTRACT * 20  # the default LANEWAY_INGEST_CEILING_FACTOR
FLOOD_BATCH = 5
FLOOD_POSTS_PER_S = 10.0  # per worker: 50 msg/s offered to each
QUIET_RATE = 2.0  # msg/s, far below its contract of 50
# Measured once the router's 10-s window has seen the flood (streams/ceiling.py, "Lag"),
# over MEASURE_S: near 1 x the ceiling, where each worker on its own admitted 2 x.
SETTLE_S = 15.0
MEASURE_S = 20.0
NEAR = (0.6, 1.3)


@pytest.fixture
def scene_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Lanes off: this is about ingest; a promotion would only add moving parts."""
    with suite_env("ceiling", tmp_path / "data", ADMIN_TOKEN, lanes_enabled="false") as env:
        yield env


async def stream(
    api: Api,
    tenant: str,
    token: str,
    tag: str,
    batch: int,
    posts_per_s: float,
    until: float,
    accepted: list[float],
    refused: list[int],
) -> None:
    """POST `batch` messages `posts_per_s` times a second until `until` (monotonic), noting the
    time of each accepted message and the status of each refusal."""
    sender = Sender(f"APP{tag}", "CEIL")
    sequence = 0
    next_at = time.monotonic()
    while time.monotonic() < until:
        body = b""
        for _ in range(batch):
            body += message(sender, f"{tag}{sequence:07d}")
            sequence += 1
        status, answer = await api.send(tenant, token, body)
        now = time.monotonic()
        results = answer.get("results", []) if isinstance(answer, dict) else []
        taken = sum(1 for result in results if result.get("status") == "accepted")
        accepted.extend([now] * taken)
        refused.extend([status] * (batch - taken))
        next_at = max(next_at + 1 / posts_per_s, now - 1.0)
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def test_a_tenant_flooding_two_workers_is_held_near_one_ceiling(
    scene_env: dict[str, str], tmp_path: Path
) -> None:
    async with Scene.running(scene_env, tmp_path, shared=2, lane_workers=0) as scene:
        flood = await scene.onboard("flood", "F", rate_per_s=FLOOD_CONTRACT, burst=1)
        quiet = await scene.onboard("quiet", "Q", rate_per_s=50, burst=100)
        apis = [Api.of(worker) for worker in scene.live]
        flood_accepted: list[float] = []
        flood_refused: list[int] = []
        quiet_accepted: list[float] = []
        quiet_refused: list[int] = []
        start = time.monotonic()
        until = start + SETTLE_S + MEASURE_S
        async with apis[0], apis[1]:
            await asyncio.gather(
                *(
                    stream(
                        api,
                        flood.tenant,
                        flood.token,
                        f"F{n}",
                        FLOOD_BATCH,
                        FLOOD_POSTS_PER_S,
                        until,
                        flood_accepted,
                        flood_refused,
                    )
                    for n, api in enumerate(apis)
                ),
                *(
                    stream(
                        api,
                        quiet.tenant,
                        quiet.token,
                        f"Q{n}",
                        1,
                        QUIET_RATE / len(apis),
                        until,
                        quiet_accepted,
                        quiet_refused,
                    )
                    for n, api in enumerate(apis)
                ),
            )
    measured = sum(1 for at in flood_accepted if at >= start + SETTLE_S)
    rate = measured / MEASURE_S
    log(
        f"flood: {len(flood_accepted)} accepted, {len(flood_refused)} refused; {rate:.1f} msg/s "
        f"over the last {MEASURE_S:.0f} s against a ceiling of {CEILING:.0f}; quiet: "
        f"{len(quiet_accepted)} accepted, refused {quiet_refused}"
    )
    assert flood_refused and set(flood_refused) <= {207, 429}, set(flood_refused)
    assert NEAR[0] * CEILING <= rate <= NEAR[1] * CEILING, (
        f"{rate:.1f} msg/s admitted over two workers, the ceiling is {CEILING:.0f}"
    )
    assert quiet_refused == [] and len(quiet_accepted) >= QUIET_RATE * (SETTLE_S + MEASURE_S) / 2
