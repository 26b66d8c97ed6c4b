"""Lane decisions across routers (agents/lanes/decisions.py), without a broker: the loads a
promotion reads count the other routers' tenants, and a lane claimed twice is spread."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agents.lanes.router import Router
from streams.lanes import LaneMove
from streams.placement import lane_loads
from tests.unit.router_fakes import offline_router

T0 = 1_700_000_000.0
LANES = 2


def _router(tmp_path: Path, states: dict[str, dict[str, Any]]) -> Router:
    return offline_router(tmp_path, states, web_port=6143, dedicated_lanes=LANES)


def _apart(router: Router, *tenants: str) -> None:
    """This router owns the first tenant's ingress partition, not the others'."""
    forwarder = router.forwarder
    first, *others = (forwarder.partition_of(tenant) for tenant in tenants)
    assert first not in others, "pick tenant ids on different partitions"
    router.reader.owned = {first}


def test_a_promotion_sees_the_lane_another_routers_tenant_is_in(tmp_path: Path) -> None:
    router = _router(tmp_path, {})
    mine, theirs = "acme", "beta"
    _apart(router, mine, theirs)
    for lane in range(LANES):
        router.tenant_states.states = {theirs: {"lane": lane, "moved_at": T0, "cut": None}}
        loads = [0] * LANES
        loads[lane] = 1
        assert lane_loads(router.decisions._claims(), LANES) == loads


def test_the_later_of_two_tenants_in_one_lane_is_cut_to_the_free_lane(tmp_path: Path) -> None:
    mine, theirs = "acme", "beta"
    router = _router(tmp_path, {theirs: {"lane": 0, "moved_at": T0, "cut": None}})
    _apart(router, mine, theirs)
    forwarder = router.forwarder
    forwarder.lanes.apply(LaneMove(mine, None, 0, "rate_above_contract", T0 + 1))

    assert router.decisions._spread(T0 + 2) == [mine]

    assert forwarder.routes.cut_of(mine) == LaneMove(mine, 0, 1, "spread", T0 + 2)
    assert forwarder.lanes.lane_of(mine) == 0  # until its old lane has drained


def test_a_promotion_still_cutting_is_re_targeted(tmp_path: Path) -> None:
    mine, theirs = "acme", "beta"
    router = _router(tmp_path, {theirs: {"lane": 0, "moved_at": T0, "cut": None}})
    _apart(router, mine, theirs)
    routes = router.forwarder.routes
    routes.start_cut(LaneMove(mine, None, 0, "rate_above_contract", T0 + 1))

    assert router.decisions._spread(T0 + 2) == [mine]
    assert routes.cut_of(mine) == LaneMove(mine, None, 1, "rate_above_contract", T0 + 1)


def test_the_earlier_tenant_stays(tmp_path: Path) -> None:
    mine, theirs = "acme", "beta"
    router = _router(tmp_path, {theirs: {"lane": 0, "moved_at": T0 + 1, "cut": None}})
    _apart(router, mine, theirs)
    router.forwarder.lanes.apply(LaneMove(mine, None, 0, "rate_above_contract", T0))

    assert router.decisions._spread(T0 + 2) == []
    assert router.forwarder.routes.cut_of(mine) is None
