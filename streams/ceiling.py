"""The ingest rate ceiling of a tenant per deployment, however many workers accept its messages.
Pure: times are passed in (monotonic seconds), never read here.

Every accepting worker runs its own GCRA per tenant (streams/gcra.py). Alone, a worker admits up
to the ceiling C (`ingest_ceiling_factor` x the contract). Beside others, it admits a share of C
computed from two rates measured over the same window, the 10-s window of streams/volume.py (the
current second and the 9 before):

- D, the deployment's rate of the tenant. The router that owns the tenant's ingress partition
  reads every record of the tenant, whichever worker wrote it, and publishes D in the tenant's
  state document (`rates.rate_10s`, see `Router.state_document`) about once a second; every
  worker mirrors those documents.
- L, this worker's own rate of the tenant: the messages it wrote to ingress.

Below the ceiling (D < C), a worker may take all of the headroom: L + (C - D). At or above it,
the workers split C in proportion to their traffic: C x L / D, so that together they admit C,
whatever their number. (Headroom alone is unstable at the ceiling: with N workers flooding, each
one subtracts the others' lagged rate, and together they swing between N x C and almost nothing.
The proportional share adds up to C. Both give L at D = C.) With one worker D = L, and the
ceiling is C, as if nothing were shared.

Never below the tenant's contract: a sender within its contract is never slowed, whichever
worker it reaches. The GCRA's burst scales with the share, never below the contract's burst.

Lag (docs/limits.md, "The rate ceiling with several workers"): D is an average over 10 s, up to
about a second old. A sender that starts flooding over N workers gets up to N x C for the first
second or two and is held to C within about 10 s (swings of 10-20 % that die out); after a
rebalance or a router restart the new owner's window starts empty, so the same happens again. A
document that nothing renewed for STALE_AFTER_S (its router saw no record of the tenant since,
or is gone) is not used: each worker then admits up to C on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeGuard

from streams.gcra import Gcra, RateTable
from streams.volume import SECOND_BUCKETS, TenantVolume

# The router publishes the state of every tenant with traffic once a second: three missed
# publications mean it saw no record of the tenant since, or is gone.
STALE_AFTER_S = 3.0


def shared_ceiling(
    ceiling: float, deployment_rate: float, local_rate: float, floor: float
) -> float:
    """The rate one worker may admit of a tenant whose deployment-wide ceiling is `ceiling`,
    when the deployment takes `deployment_rate` of it and this worker `local_rate`; at least
    `floor`. Rates in messages per second over the same window (see the module doc)."""
    deployment_rate = max(deployment_rate, local_rate)  # the router may not have seen ours yet
    if deployment_rate < ceiling:
        share = local_rate + (ceiling - deployment_rate)
    else:
        share = ceiling * local_rate / deployment_rate
    return max(floor, share)


def published_rate(document: Mapping[str, Any] | None) -> tuple[float, float] | None:
    """(the deployment's 10-s rate, the document's version) from a tenant state document; None
    when it has neither (a forgotten tenant, a hand-written record)."""
    if not document:
        return None
    rates = document.get("rates")
    rate = rates.get("rate_10s") if isinstance(rates, Mapping) else None
    version = document.get("updated_at")
    if _number(rate) and _number(version):
        return float(rate), float(version)
    return None


def _number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


class SharedCeilings:
    """Per tenant: this worker's GCRA at its share of the ceiling, and its own rate."""

    __slots__ = ("_factor", "_limiters", "_seen", "_sent")

    def __init__(self, factor: float, default_rate_per_s: float, default_burst: int) -> None:
        self._factor = factor
        self._limiters = RateTable(
            default_rate_per_s * factor, max(1, round(default_burst * factor))
        )
        self._sent: dict[str, TenantVolume] = {}
        # tenant -> (version of its latest state document, when this worker first saw it)
        self._seen: dict[str, tuple[float, float]] = {}

    def limiter(
        self,
        tenant: str,
        rate_per_s: float,
        burst: int,
        document: Mapping[str, Any] | None,
        now: float,
    ) -> Gcra:
        """The tenant's GCRA, set to this worker's share of `ingest_ceiling_factor` x the
        contract (`rate_per_s`, `burst`) given the tenant's state `document` (None: none yet)."""
        ceiling = rate_per_s * self._factor
        sent = self._sent.get(tenant)
        local = sent.recent_rate(now, SECOND_BUCKETS) if sent is not None else 0.0
        deployment = self._deployment_rate(tenant, document, now)
        rate = shared_ceiling(ceiling, deployment, local, floor=rate_per_s)
        # The burst in the same share: burst x factor alone, the contract's at the floor.
        self._limiters.set_contract(tenant, rate, max(burst, round(burst * rate / rate_per_s)))
        return self._limiters.limiter(tenant)

    def count(self, tenant: str, now: float, messages: int = 1) -> None:
        """`messages` of the tenant written to ingress by this worker at `now`."""
        sent = self._sent.get(tenant)
        if sent is None:
            sent = self._sent[tenant] = TenantVolume()
        sent.record(now, messages)

    def _deployment_rate(
        self, tenant: str, document: Mapping[str, Any] | None, now: float
    ) -> float:
        published = published_rate(document)
        if published is None:
            return 0.0
        rate, version = published
        seen = self._seen.get(tenant)
        if seen is None or seen[0] != version:
            seen = self._seen[tenant] = (version, now)
        return rate if now - seen[1] <= STALE_AFTER_S else 0.0
