"""Quiet logs through a Kafka outage: what to say when the broker goes, stays away and returns.

Kafka clients retry every few milliseconds while a broker is away, and aiokafka logs each retry
(`Unable connect to node with id 1`, ~4,000 lines a second measured with one producer). An
operator needs three facts instead: the connection is lost, it is still lost (with a count of
what was held back), it is back. `BrokerLink` decides those lines; `RepeatLimiter` is the
logging filter that holds back the retries. Neither knows about Faust or Kafka clients.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

SUMMARY_EVERY_S = 10.0


@dataclass(slots=True)
class BrokerLink:
    """The state of one process's link to Kafka, fed by a periodic probe.

    `observe` returns the line to log for this observation, or None: one line when the link is
    lost, one every `summary_every_s` while it stays lost, one when it is back.
    """

    summary_every_s: float = SUMMARY_EVERY_S
    up: bool = True
    down_since: float | None = None
    last_error: str = ""
    _last_said: float = 0.0
    _held_back: int = 0

    def observe(
        self, reachable: bool, now: float, error: str = "", held_back: int = 0
    ) -> str | None:
        """Record one probe; `held_back`: client log lines suppressed since the last probe."""
        self._held_back += held_back
        if reachable:
            if self.up:
                return None
            down_for = now - (self.down_since or now)
            self.up, self.down_since, self._held_back = True, None, 0
            return f"Kafka reachable again after {down_for:.1f} s"
        self.last_error = error
        if self.up:
            self.up, self.down_since, self._last_said, self._held_back = False, now, now, 0
            return f"Kafka unreachable ({error})"
        if now - self._last_said < self.summary_every_s:
            return None
        held_back, self._last_said, self._held_back = self._held_back, now, 0
        down_for = now - (self.down_since or now)
        return (
            f"Kafka still unreachable after {down_for:.0f} s ({error}); "
            f"{held_back} repeated client log lines held back"
        )


class RepeatLimiter(logging.Filter):
    """Lets one record per (logger, message template) through every `every_s` seconds.

    Only records at WARNING and above are limited: retries of a Kafka client are logged at
    WARNING/ERROR, while INFO lines (lane moves, start-up) are one-offs that must all be kept.
    A record let through after others were held back says how many.
    """

    def __init__(
        self, every_s: float = SUMMARY_EVERY_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.every_s = every_s
        self._clock = clock
        self._lock = threading.Lock()  # Faust's consumer thread logs too
        self._windows: dict[tuple[str, object], tuple[float, int]] = {}
        self._held_back_total = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.msg)
        now = self._clock()
        with self._lock:
            opened, held = self._windows.get(key, (-float("inf"), 0))
            if now - opened < self.every_s:
                self._windows[key] = (opened, held + 1)
                self._held_back_total += 1
                return False
            self._windows[key] = (now, 0)
            if len(self._windows) > 1000:  # templates are few; this bounds a pathological case
                self._windows = {key: (now, 0)}
        if held:
            record.msg = f"{record.getMessage()} [{held} more like this held back]"
            record.args = ()
        return True

    def take_held_back(self) -> int:
        """Records held back since the last call."""
        with self._lock:
            total, self._held_back_total = self._held_back_total, 0
        return total


def install_repeat_limiter(limiter: RepeatLimiter, logger: logging.Logger | None = None) -> None:
    """Put `limiter` on every handler of `logger` (the root logger by default): a filter on a
    handler sees the records of every child logger, a filter on a logger only its own."""
    for handler in (logger or logging.getLogger()).handlers:
        if limiter not in handler.filters:
            handler.addFilter(limiter)
