"""Per-tenant rate contracts enforced with GCRA (the generic cell rate algorithm). Pure.

A contract is (`rate_per_s`, `burst`): a sender idle for long enough may send `burst` messages
back to back at one instant, and after that one message every 1 / `rate_per_s` seconds. Over
any interval of `d` seconds at most `rate_per_s * d + burst` messages conform.

GCRA keeps one float per tenant, the theoretical arrival time (TAT): when the tenant's
allowance would be fully spent if it kept its contract exactly. A message at `now` conforms when
accepting it leaves the TAT at most `burst` emission intervals ahead of `now`.

Times are float seconds passed in by the caller. Epoch seconds as floats step by ~0.2 µs, so a
message up to 1 µs early still conforms. That tolerance never adds up: the TAT is kept relative
to an origin that moves to `now` whenever the tenant has caught up, so it stays a small float,
exact far below a microsecond, instead of an epoch sum that would drift by ~0.1 µs per message.
"""

from __future__ import annotations

import math

_SLACK_S = 1e-6  # float tolerance on "conforms now" (see the module doc)


def _checked(rate_per_s: float, burst: int) -> tuple[float, int]:
    if not (rate_per_s > 0 and math.isfinite(rate_per_s)):
        raise ValueError(f"rate_per_s must be a positive number, not {rate_per_s}")
    if burst < 1:
        raise ValueError(f"burst must be at least 1, not {burst}")
    return rate_per_s, burst


class Gcra:
    """One tenant's contract and its theoretical arrival time."""

    __slots__ = ("_allowance", "_burst", "_interval", "_origin", "_tat")

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self._origin = 0.0
        self._tat = float("-inf")  # relative to `_origin`; -inf: never sent, the whole burst left
        self.set_contract(rate_per_s, burst)

    @property
    def rate_per_s(self) -> float:
        return 1.0 / self._interval

    @property
    def burst(self) -> int:
        return self._burst

    def set_contract(self, rate_per_s: float, burst: int) -> None:
        """Change the contract in place. The TAT is kept: a change never forgives a debt."""
        rate_per_s, burst = _checked(rate_per_s, burst)
        self._interval = 1.0 / rate_per_s
        self._burst = burst
        self._allowance = burst * self._interval  # how far ahead of `now` the TAT may run

    def delay(self, now: float, n: int = 1) -> float:
        """Seconds until `n` more messages would conform: 0 if now, inf if `n` > burst."""
        if n > self._burst:
            return math.inf
        ahead = max(self._tat - (now - self._origin), 0.0)  # how far the TAT runs ahead of now
        wait = ahead + n * self._interval - self._allowance
        return wait if wait > _SLACK_S else 0.0

    def admit(self, now: float, n: int = 1) -> float:
        """Count `n` messages (at most `burst`) and return how long the caller must hold them
        (0 = send now).

        Always consumes: the caller delays, never drops. Delays stack, so a caller that admits
        more messages before the earlier ones were released is held ever longer.
        """
        wait = self.delay(now, n)
        self._consume(now, n)
        return wait

    def _consume(self, now: float, n: int) -> None:
        if self._tat <= now - self._origin:  # caught up: restart the clock here (module doc)
            self._origin = now
            self._tat = 0.0
        self._tat += n * self._interval


class RateTable:
    """tenant id -> Gcra, created on a tenant's first message with its contract (or the
    default); a contract set before that waits for it."""

    __slots__ = ("_contracts", "_default", "_limiters")

    def __init__(self, default_rate_per_s: float, default_burst: int) -> None:
        self._default = _checked(default_rate_per_s, default_burst)
        self._contracts: dict[str, tuple[float, int]] = {}
        self._limiters: dict[str, Gcra] = {}

    def set_contract(self, tenant: str, rate_per_s: float, burst: int) -> None:
        contract = _checked(rate_per_s, burst)
        self._contracts[tenant] = contract
        limiter = self._limiters.get(tenant)
        if limiter is not None:
            limiter.set_contract(*contract)

    def limiter(self, tenant: str) -> Gcra:
        limiter = self._limiters.get(tenant)
        if limiter is None:
            limiter = self._limiters[tenant] = Gcra(*self._contracts.get(tenant, self._default))
        return limiter
