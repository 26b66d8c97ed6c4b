"""Lane policy: when a tenant moves to a dedicated lane and back, and which lane it gets. Pure.

- Promote (shared -> dedicated) as soon as the tenant's recent rate (`TenantVolume.recent_rate`,
  ~2 s) is far above its contract: above `promote_factor` x contract and above
  `promote_min_rate`.
- Demote (dedicated -> shared) only after the 10-s rate has stayed below `calm_factor` x
  contract for `hold_down_s` without a break, and the old lane holds none of the tenant's
  records (`backlog_empty`).
  The gap between the two thresholds plus the hold-down is the hysteresis: a rate oscillating
  around either threshold cannot make a tenant flap.
- An operator pin (`shared`, or `dedicated` with an optional lane index) overrides the traffic
  rules. When the pin is lifted a tenant that only the pin held in a dedicated lane returns to
  the shared lane ("unpinned") unless its traffic would promote it right now.
- Leaving a dedicated lane, for whatever reason, waits until that lane is drained of the tenant:
  per-tenant order across moves (architecture invariant 2).
- Dedicated lanes are picked by two stable hash choices of the tenant id, the less loaded of the
  two wins (shuffle sharding with the power of two choices); if both are taken while another
  lane is free, a free lane (`place_lane`). The loads are the deployment's, every router's
  tenants (`streams.placement`), and a tenant that ends up sharing a lane anyway (two routers
  deciding at once) moves to a free lane ("spread", `streams.placement.spread`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Pin = Literal["auto", "shared", "dedicated"]
MoveReason = Literal["rate_above_contract", "calm_and_drained", "pinned", "unpinned", "spread"]


@dataclass(frozen=True, slots=True)
class LanePolicy:
    promote_factor: float = 4.0
    promote_min_rate: float = 20.0  # msgs/s; below this no tenant is worth a lane of its own
    calm_factor: float = 1.0
    hold_down_s: float = 120.0
    dedicated_lanes: int = 4

    def __post_init__(self) -> None:
        # Promotion thresholds must sit above the calm ones, or there is no hysteresis band.
        if self.calm_factor > self.promote_factor:
            raise ValueError("calm_factor must not exceed promote_factor")
        if self.hold_down_s < 0:
            raise ValueError("hold_down_s must not be negative")
        if self.dedicated_lanes < 1:
            raise ValueError("dedicated_lanes must be at least 1")


@dataclass(slots=True)
class LaneAssignment:
    """Where one tenant's records go; `lane` None is the shared lane."""

    tenant: str
    lane: int | None = None
    moved_at: float | None = None
    calm_since: float | None = None  # start of the current calm streak (the hold-down clock)
    pinned: Pin = "auto"
    pinned_lane: int | None = None  # with pinned == "dedicated": this lane, else any
    pin_held: bool = False  # the current lane was entered because of a pin


@dataclass(frozen=True, slots=True)
class LaneMove:
    tenant: str
    from_lane: int | None
    to_lane: int | None
    reason: MoveReason
    at: float


def choose_lane(tenant: str, lane_loads: Sequence[int]) -> int:
    """The less loaded of the tenant's two hash-chosen lanes (ties: the first choice).

    The two choices are distinct whenever there are two lanes or more.
    """
    lanes = len(lane_loads)
    digest = hashlib.blake2b(tenant.encode(), digest_size=8).digest()
    first = int.from_bytes(digest[:4], "big") % lanes
    if lanes == 1:
        return first
    second = (first + 1 + int.from_bytes(digest[4:], "big") % (lanes - 1)) % lanes
    return second if lane_loads[second] < lane_loads[first] else first


def place_lane(tenant: str, lane_loads: Sequence[int]) -> int:
    """`choose_lane`, unless both of its choices are taken while a lane is free: then one of
    the free lanes, by the tenant's hash (two tenants placed at once rarely pick the same)."""
    chosen = choose_lane(tenant, lane_loads)
    free = [lane for lane, load in enumerate(lane_loads) if load == 0]
    if lane_loads[chosen] == 0 or not free:
        return chosen
    digest = hashlib.blake2b(tenant.encode(), digest_size=8).digest()
    return free[int.from_bytes(digest, "big") % len(free)]


def drain_share(budget_per_s: float, held_lanes: int, dedicated_lanes: int) -> float:
    """A lane worker's part of the deployment's drain budget (records/s): in proportion to the
    dedicated lanes it holds. Lane workers together never drain faster than the budget, and one
    that holds every lane gets all of it; Kafka's rebalance moves lanes, and so budget, between
    them."""
    if held_lanes <= 0 or dedicated_lanes <= 0:
        return 0.0
    return budget_per_s * min(held_lanes, dedicated_lanes) / dedicated_lanes


def decide(
    assignment: LaneAssignment,
    *,
    recent_rate: float,
    rate_10s: float,
    contract_rate: float,
    now: float,
    backlog_empty: bool,
    lane_loads: Sequence[int],
    policy: LanePolicy,
) -> LaneMove | None:
    """The move to make now, or None.

    `lane_loads` has one entry per dedicated lane.
    Never changes `assignment.lane` (`LaneAssignments.apply` does), but keeps its bookkeeping: the
    hold-down clock `calm_since`, and `pin_held` once traffic alone would keep the tenant.
    """
    if assignment.pinned != "auto":
        assignment.calm_since = None  # the hold-down clock only runs under the traffic rules
        return _leave_or_enter(
            assignment, _pinned_target(assignment, lane_loads), "pinned", now, backlog_empty
        )
    hot = _promotion_reason(policy, recent_rate, contract_rate)
    if assignment.lane is None:
        if hot is None:
            return None
        return LaneMove(
            assignment.tenant, None, place_lane(assignment.tenant, lane_loads), hot, now
        )
    if assignment.pin_held:
        if hot is None:
            return _leave_or_enter(assignment, None, "unpinned", now, backlog_empty)
        assignment.pin_held = False  # still hot: from now on its traffic keeps it there
    if rate_10s >= policy.calm_factor * contract_rate:
        assignment.calm_since = None
        return None
    if assignment.calm_since is None:
        assignment.calm_since = now
    if now - assignment.calm_since >= policy.hold_down_s and backlog_empty:
        return LaneMove(assignment.tenant, assignment.lane, None, "calm_and_drained", now)
    return None


def _promotion_reason(
    policy: LanePolicy, recent_rate: float, contract_rate: float
) -> MoveReason | None:
    if recent_rate <= policy.promote_min_rate:
        return None
    return "rate_above_contract" if recent_rate > policy.promote_factor * contract_rate else None


def _pinned_target(assignment: LaneAssignment, lane_loads: Sequence[int]) -> int | None:
    if assignment.pinned == "shared":
        return None
    if assignment.pinned_lane is not None:
        return assignment.pinned_lane % len(lane_loads)  # a pin beyond the pool wraps around
    if assignment.lane is not None:
        return assignment.lane  # already dedicated: any lane satisfies the pin
    return place_lane(assignment.tenant, lane_loads)


def _leave_or_enter(
    assignment: LaneAssignment,
    target: int | None,
    reason: MoveReason,
    now: float,
    backlog_empty: bool,
) -> LaneMove | None:
    current = assignment.lane
    if target == current:
        return None
    if current is not None and not backlog_empty:
        return None  # leave a dedicated lane only once it holds none of the tenant's records
    return LaneMove(assignment.tenant, current, target, reason, now)


class LaneAssignments:
    """tenant id -> LaneAssignment, kept only for tenants outside the shared lane or pinned.

    Every other tenant is in the shared lane and costs nothing here.
    """

    __slots__ = ("_assignments", "_lanes")

    def __init__(self, dedicated_lanes: int = 4) -> None:
        self._lanes = dedicated_lanes
        self._assignments: dict[str, LaneAssignment] = {}

    def lane_of(self, tenant: str) -> int | None:
        """Hot path: the tenant's dedicated lane, or None for the shared lane."""
        assignment = self._assignments.get(tenant)
        return None if assignment is None else assignment.lane

    def assignment(self, tenant: str) -> LaneAssignment:
        """The stored assignment, or a fresh shared one that `apply` or `pin` will store."""
        return self._assignments.get(tenant) or LaneAssignment(tenant)

    def pin(self, tenant: str, pinned: Pin, lane: int | None = None) -> None:
        """Record the operator's pin; `decide` acts on it."""
        if lane is not None and pinned != "dedicated":
            raise ValueError("a pinned lane needs pinned='dedicated'")
        assignment = self.assignment(tenant)
        assignment.pinned = pinned
        assignment.pinned_lane = lane
        self._keep(assignment)

    def apply(self, move: LaneMove) -> None:
        assignment = self.assignment(move.tenant)
        if assignment.lane != move.from_lane:
            raise ValueError(
                f"stale move for {move.tenant}: from {move.from_lane}, but it is in "
                f"{assignment.lane}"
            )
        assignment.lane = move.to_lane
        assignment.moved_at = move.at
        assignment.calm_since = None
        # A spread keeps the reason the tenant was in a dedicated lane.
        assignment.pin_held = move.reason == "pinned" or (
            move.reason == "spread" and assignment.pin_held
        )
        self._keep(assignment)

    def restore(self, tenant: str, lane: int | None, moved_at: float | None) -> None:
        """Adopt a persisted lane after a restart (not a move: nothing to drain or report)."""
        assignment = self.assignment(tenant)
        assignment.lane = lane
        assignment.moved_at = moved_at
        self._keep(assignment)

    def forget(self, tenant: str) -> None:
        """Drop a tenant's assignment (another router owns it now)."""
        self._assignments.pop(tenant, None)

    def placed(self) -> list[str]:
        """Tenants in a dedicated lane or pinned: `decide` must see them even without traffic."""
        return list(self._assignments)

    def loads(self) -> list[int]:
        """Tenants per dedicated lane."""
        counts = [0] * self._lanes
        for assignment in self._assignments.values():
            if assignment.lane is not None and assignment.lane < self._lanes:
                counts[assignment.lane] += 1
        return counts

    def _keep(self, assignment: LaneAssignment) -> None:
        if assignment.lane is None and assignment.pinned == "auto":
            self._assignments.pop(assignment.tenant, None)
        else:
            self._assignments[assignment.tenant] = assignment

    def __len__(self) -> int:
        return len(self._assignments)
