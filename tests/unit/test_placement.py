"""Cluster-wide lane occupancy (streams.placement): every router's tenants count, and two
routers that picked one lane at once converge on different lanes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.cutover import Hold
from streams.lanes import LaneMove, place_lane
from streams.placement import Claim, document_claim, lane_loads, route_claim, spread
from streams.route_records import cut_entry, hold_entry

T0 = 1_700_000_000.0


def document(lane: int | None, moved_at: float | None, cut: LaneMove | None = None) -> dict:
    """A tenant-state document as `RouteStates.document` writes it (the fields placement reads)."""
    return {"lane": lane, "moved_at": moved_at, "cut": cut_entry(cut), "hold": hold_entry(None)}


def test_a_tenant_claims_the_lane_it_is_in_or_is_being_cut_over_to() -> None:
    assert document_claim("a", document(1, T0)) == Claim("a", 1, T0)
    into = LaneMove("b", None, 2, "rate_above_contract", T0 + 1)
    assert document_claim("b", document(None, None, into)) == Claim("b", 2, T0 + 1)
    # Leaving a dedicated lane: its new records go elsewhere, the lane is free for others.
    out = LaneMove("c", 3, None, "calm_and_drained", T0 + 2)
    assert document_claim("c", document(3, T0, out)) is None
    assert document_claim("d", document(None, None)) is None
    assert document_claim("e", {}) is None
    # A restored lane without a move time ranks first among equals, not never.
    assert document_claim("f", document(0, None)) == Claim("f", 0, 0.0)


def test_a_document_that_cannot_be_read_claims_nothing() -> None:
    assert document_claim("a", {"lane": "1"}) is None
    assert document_claim("a", {"lane": True}) is None
    assert document_claim("a", {"cut": {"to": 1}}) is None
    assert document_claim("a", {"cut": {"to": 1, "at": "soon"}}) is None


def test_a_route_claims_like_its_document() -> None:
    move = LaneMove("a", None, 2, "rate_above_contract", T0)
    assert route_claim("a", None, None, 2, T0) == document_claim("a", document(None, None, move))
    assert route_claim("a", 1, T0, None, None) == document_claim("a", document(1, T0))
    assert route_claim("a", 1, T0, None, None, pinned_lane=1) == Claim("a", 1, T0, pinned=True)
    assert route_claim("a", 1, T0, None, None, pinned_lane=0) == Claim("a", 1, T0)


def test_loads_count_every_routers_claims() -> None:
    claims = [Claim("a", 0, T0), Claim("b", 0, T0), Claim("c", 1, T0), Claim("z", 7, T0)]

    assert lane_loads(claims, 2) == [2, 1]
    assert lane_loads([], 3) == [0, 0, 0]


def test_a_second_noisy_tenant_of_another_router_gets_the_free_lane() -> None:
    """Today's bug: each router counted only its own tenants, so both picked their first
    choice. With the deployment's loads the second sees the first."""
    first, second = "noisy-b", "noisy-c"
    assert place_lane(first, [0, 0]) == place_lane(second, [0, 0])  # same first choice
    taken = place_lane(first, [0, 0])
    loads = lane_loads([Claim(first, taken, T0)], 2)

    assert place_lane(second, loads) == 1 - taken


def test_both_choices_taken_while_a_lane_is_free_gives_a_free_lane() -> None:
    loads = [0, 0, 0, 0, 0, 0]
    chosen = place_lane("t", loads)
    loads = [1] * 6
    loads[4] = 0

    assert place_lane("t", loads) == 4
    assert place_lane("t", [2, 1, 1, 1, 1, 1]) in range(6)  # none free: the two choices rule
    assert chosen == place_lane("t", [0] * 6)


def test_the_later_of_two_claims_on_one_lane_moves_to_a_free_lane() -> None:
    claims = [Claim("a", 0, T0 + 0.2), Claim("b", 0, T0 + 0.1), Claim("c", 1, T0)]

    # Router 1 owns a, router 2 owns b and c: both compute the same, each moves its own.
    assert spread(claims, {"a"}, 3) == {"a": 2}
    assert spread(claims, {"b", "c"}, 3) == {}
    # No free lane: they share.
    assert spread(claims, {"a"}, 2) == {}


def test_a_tie_is_broken_by_tenant_id_and_a_pinned_tenant_never_yields() -> None:
    assert spread([Claim("b", 0, T0), Claim("a", 0, T0)], {"a", "b"}, 2) == {"b": 1}
    pinned = [Claim("a", 0, T0), Claim("p", 0, T0 + 5, pinned=True)]
    assert spread(pinned, {"a", "p"}, 2) == {"a": 1}
    both = [Claim("p", 0, T0, pinned=True), Claim("q", 0, T0 + 1, pinned=True)]
    assert spread(both, {"p", "q"}, 2) == {}


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.floats(0, 100), st.booleans()), min_size=1, max_size=8
    ),
    st.integers(0, 7),
)
def test_every_router_moves_different_tenants_to_different_free_lanes(
    placed: list[tuple[int, float, bool]], split: int
) -> None:
    claims = [Claim(f"t{i}", lane, since, pinned) for i, (lane, since, pinned) in enumerate(placed)]
    tenants = [claim.tenant for claim in claims]
    router_1, router_2 = set(tenants[:split]), set(tenants[split:])
    moves = {**spread(claims, router_1, 6), **spread(claims, router_2, 6)}

    occupied = {claim.lane for claim in claims}
    assert not occupied & set(moves.values())  # only to lanes nobody claimed
    assert len(set(moves.values())) == len(moves)  # never two to one lane
    assert all(not claim.pinned for claim in claims if claim.tenant in moves)
    after = [Claim(c.tenant, moves.get(c.tenant, c.lane), c.since, c.pinned) for c in claims]
    # Converged: lanes stay shared only where no lane is free any more.
    assert not spread(after, set(tenants), 6) or min(lane_loads(after, 6)) > 0


def test_a_hold_entry_is_no_claim() -> None:
    assert document_claim("a", {"lane": None, "hold": hold_entry(Hold(0, 5))}) is None
