"""One placement decision, cluster-wide (issue 14, point 4; streams/placement.py).

Two shared workers, one lane worker, two dedicated lanes. Two tenants whose ingress partitions
are owned by different routers, and whose first lane choice is the same lane, flood at once.
Each router used to count only its own tenants, saw both lanes free and sent its tenant to that
first choice: both floods in one lane, the other lane idle. Now each router counts every
tenant's published placement, and a collision of two decisions made at the same instant is
undone by moving the later claim to the free lane. Both end in different dedicated lanes, with
nothing lost or reordered on the way.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.lanes import choose_lane
from tests.harness import log, suite_env
from tests.harness.scale import Scene, eventually, owned_partitions

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "admin-" + uuid.uuid4().hex
LANES = 2
FLOOD_CONTRACT = 10
FLOOD_RATE = 100.0  # 10x the contract: promoted (above 4x and 20/s), below ingest's ceiling
FLOOD_BATCH = 10
OWNED_TIMEOUT_S = 60.0
PLACED_TIMEOUT_S = 90.0  # both promoted, and a collision (if any) spread: a cut of its own


@pytest.fixture
def placement_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A deployment of its own, two dedicated lanes; the lane worker at nice 0 (as in
    test_scale_out: CPU priority is not what this is about)."""
    with suite_env("placement", tmp_path / "data", ADMIN_TOKEN, dedicated_lanes=str(LANES)) as env:
        yield {**env, "LANEWAY_LANE_NICE": "0"}


async def test_two_floods_of_different_routers_end_in_different_dedicated_lanes(
    placement_env: dict[str, str], tmp_path: Path
) -> None:
    async with Scene.running(placement_env, tmp_path, shared=2, lane_workers=1) as scene:
        owners: list[set[int]] = []

        async def both_read_ingress() -> bool:
            owners[:] = [owned_partitions(w.log_path.read_bytes()) or set() for w in scene.shared]
            return all(owners)

        await eventually(both_read_ingress, OWNED_TIMEOUT_S, "both routers read ingress")
        noisy = same_first_choice_on_different_routers(scene, owners)
        log(f"tenants {noisy}: ingress partitions {[scene.partition_of(t) for t in noisy]}")
        senders = [
            await scene.onboard("", tag, tenant_id=tenant, rate_per_s=FLOOD_CONTRACT, burst=20)
            for tenant, tag in zip(noisy, "AB", strict=True)
        ]
        for sender in senders:
            sender.batch = FLOOD_BATCH
            scene.send(sender, FLOOD_RATE)

        lanes: list[int | None] = []

        async def apart() -> bool:
            lanes[:] = [(await scene.stats(tenant))["lane_index"] for tenant in noisy]
            return None not in lanes and len(set(lanes)) == LANES

        await eventually(apart, PLACED_TIMEOUT_S, f"{noisy} in different dedicated lanes")
        report = await scene.report()
        log(f"lanes {lanes}; {report.summary()}")
        assert not report.problems(), "\n".join(report.problems()) + "\n" + scene.logs()


def same_first_choice_on_different_routers(scene: Scene, owners: list[set[int]]) -> list[str]:
    """Two tenant ids with the same first lane choice, read by different routers."""
    run = uuid.uuid4().hex[:6]
    found: dict[tuple[int, int], str] = {}
    for i in range(1000):
        tenant = f"noisy-{run}-{i}"
        owner = next(n for n, parts in enumerate(owners) if scene.partition_of(tenant) in parts)
        found.setdefault((owner, choose_lane(tenant, [0] * LANES)), tenant)
        for lane in range(LANES):
            if (0, lane) in found and (1, lane) in found:
                return [found[0, lane], found[1, lane]]
    raise AssertionError("no two such tenants")
