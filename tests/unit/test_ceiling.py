"""The ingest ceiling per deployment (streams/ceiling.py): the share arithmetic, the state
document it reads, and a simulated deployment of N workers with a router publishing the
tenant's rate once a second. The wiring over real workers and the real broker is in
tests/integration/test_ingest_ceiling_cluster.py."""

from __future__ import annotations

import pytest

from streams.ceiling import STALE_AFTER_S, SharedCeilings, published_rate, shared_ceiling
from streams.volume import TenantVolume

CONTRACT, BURST, FACTOR = 10.0, 10, 20.0
CEILING = CONTRACT * FACTOR  # 200 msg/s, burst 200


def document(rate: float, at: float) -> dict[str, object]:
    """The part of a tenant state document (Router.state_document) the ceiling reads."""
    return {"tenant": "t", "lane": None, "rates": {"rate_10s": rate}, "updated_at": at}


@pytest.mark.parametrize("rate", [0.0, 5.0, 150.0, 200.0, 900.0])
def test_alone_a_worker_gets_the_whole_ceiling(rate: float) -> None:
    # One worker: the deployment's rate is its own, whatever it is.
    assert shared_ceiling(CEILING, rate, rate, floor=CONTRACT) == CEILING


def test_below_the_ceiling_a_worker_may_take_all_of_the_headroom() -> None:
    assert shared_ceiling(CEILING, 120.0, 20.0, floor=CONTRACT) == 20.0 + 80.0


@pytest.mark.parametrize("locals_", [[100.0, 100.0], [300.0, 50.0, 50.0], [80.0] * 5])
def test_at_or_above_the_ceiling_the_shares_add_up_to_it(locals_: list[float]) -> None:
    deployment = sum(locals_)
    shares = [shared_ceiling(CEILING, deployment, rate, floor=0.0) for rate in locals_]
    assert sum(shares) == pytest.approx(CEILING)
    assert shares == pytest.approx([CEILING * rate / deployment for rate in locals_])


def test_never_below_the_contract() -> None:
    # Others flood; this worker has sent nothing yet: a sender within its contract still passes.
    assert shared_ceiling(CEILING, 5000.0, 0.0, floor=CONTRACT) == CONTRACT


def test_a_deployment_rate_behind_the_local_one_counts_as_the_local_one() -> None:
    # The router has not read this worker's latest records yet: nobody else is sending.
    assert shared_ceiling(CEILING, 0.0, 50.0, floor=CONTRACT) == CEILING


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (document(12.5, 100.0), (12.5, 100.0)),
        (document(3, 7), (3.0, 7.0)),
        (None, None),
        ({}, None),
        ({"rates": {"rate_10s": 1.0}}, None),  # no version
        ({"rates": None, "updated_at": 1.0}, None),
        (document(True, 1.0), None),  # a bool is no rate
        ({"rates": {"rate_10s": "9"}, "updated_at": 1.0}, None),
    ],
)
def test_the_published_rate_is_read_from_the_state_document(
    doc: dict[str, object] | None, expected: tuple[float, float] | None
) -> None:
    assert published_rate(doc) == expected


def test_without_a_document_the_limiter_is_the_whole_ceiling() -> None:
    limiter = SharedCeilings(FACTOR, 50.0, 100).limiter("t", CONTRACT, BURST, None, 1000.0)
    assert (limiter.rate_per_s, limiter.burst) == (pytest.approx(CEILING), BURST * FACTOR)


def flood_locally(ceilings: SharedCeilings, rate: int, until: int) -> float:
    """`rate` messages in each of the 10 seconds up to `until`; returns the instant after."""
    for second in range(until - 9, until + 1):
        ceilings.count("t", second + 0.5, rate)
    return until + 0.999  # the 10-s window then spans 9.999 s


def test_half_of_a_flood_at_twice_the_ceiling_gets_half_of_it() -> None:
    ceilings = SharedCeilings(FACTOR, 50.0, 100)
    now = flood_locally(ceilings, 200, until=1000)  # ~200/s here, 400/s in all
    limiter = ceilings.limiter("t", CONTRACT, BURST, document(400.0, 1000.0), now)
    assert limiter.rate_per_s == pytest.approx(CEILING / 2, rel=0.01)
    assert limiter.burst == pytest.approx(BURST * FACTOR / 2, abs=1)


def test_a_document_nothing_renewed_is_dropped_and_a_new_one_counts_again() -> None:
    ceilings = SharedCeilings(FACTOR, 50.0, 100)
    now = flood_locally(ceilings, 1, until=1000)
    busy = document(1000.0, 5.0)  # others flood: this worker is held to its contract
    assert ceilings.limiter("t", CONTRACT, BURST, busy, now).rate_per_s == pytest.approx(CONTRACT)
    later = now + STALE_AFTER_S + 0.1
    assert ceilings.limiter("t", CONTRACT, BURST, busy, later).rate_per_s == pytest.approx(CEILING)
    renewed = document(1000.0, 6.0)
    assert ceilings.limiter("t", CONTRACT, BURST, renewed, later).rate_per_s == pytest.approx(
        CONTRACT
    )


# ---------------------------------------------------------------- a simulated deployment

STEP_S = 0.01
PUBLISH_EVERY_S = 1.0
PUBLISH_LAG_S = 1.0  # the router's publication and the mirrors: at most this late


def simulate(demands: list[float], seconds: int) -> list[int]:
    """Workers each offered `demands[i]` msg/s of one tenant (HTTP: a message over the limiter
    is refused, not held), a router counting every admitted message and publishing its 10-s rate
    once a second, PUBLISH_LAG_S late. Returns the messages admitted in each second."""
    workers = [SharedCeilings(FACTOR, 50.0, 100) for _ in demands]
    offered = [0.0] * len(demands)
    router = TenantVolume()
    published: list[tuple[float, dict[str, object]]] = []  # (visible from, document)
    visible: dict[str, object] | None = None
    admitted = [0] * seconds
    next_publish = PUBLISH_EVERY_S
    for step in range(int(seconds / STEP_S)):
        now = 1_000.0 + step * STEP_S
        if now - 1_000.0 >= next_publish:
            next_publish += PUBLISH_EVERY_S
            doc = document(router.recent_rate(now, 10), now)
            published.append((now + PUBLISH_LAG_S, doc))
        while published and published[0][0] <= now:
            visible = published.pop(0)[1]
        for index, ceilings in enumerate(workers):
            offered[index] += demands[index] * STEP_S
            limiter = ceilings.limiter("t", CONTRACT, BURST, visible, now)
            while offered[index] >= 1:
                offered[index] -= 1
                if limiter.delay(now) == 0:
                    limiter.admit(now)
                    ceilings.count("t", now)
                    router.record(now)
                    admitted[int(now - 1_000.0)] += 1
    return admitted


@pytest.mark.parametrize("workers", [1, 2, 5])
def test_a_flood_over_n_workers_is_held_to_one_ceiling(workers: int) -> None:
    """5x the ceiling offered, spread evenly. The first seconds overshoot (up to N x, until the
    router's window shows the flood); 10 s later, as they leave the window, the workers swing
    once; from then on the deployment admits the ceiling, not N times it."""
    admitted = simulate([5 * CEILING / workers] * workers, seconds=60)
    assert sum(admitted[10:]) / 50 == pytest.approx(CEILING, rel=0.05), admitted
    assert max(admitted[20:]) <= 1.1 * CEILING, admitted
    assert sum(admitted[20:]) / 40 == pytest.approx(CEILING, rel=0.03), admitted
    assert sum(admitted[:10]) <= workers * (10 * CEILING + BURST * FACTOR), admitted


def test_a_flood_sent_mostly_to_one_worker_is_held_to_one_ceiling() -> None:
    admitted = simulate([4 * CEILING, 0.2 * CEILING], seconds=60)
    assert sum(admitted[10:]) / 50 == pytest.approx(CEILING, rel=0.05), admitted


def test_a_tenant_below_its_ceiling_is_not_slowed() -> None:
    offered = [0.3 * CEILING, 0.3 * CEILING, 0.3 * CEILING]  # 0.9 x the ceiling in all
    admitted = simulate(offered, seconds=30)
    assert sum(admitted[2:]) == pytest.approx(0.9 * CEILING * 28, rel=0.02), admitted
