"""Per-tenant stats as operators see them: rows, flags, rates, sparklines, queries and totals.

Pure: every input (tenant record, tenant-state document, Kafka offsets, the time) is passed in.
`agents.web.stats` gathers the inputs and serves the answers; `agents.state.kafka_probe` reads
the offsets. Nothing here reads message content (invariant 5).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from streams.tenants import TenantSummary
from streams.topics import TopicNames
from streams.volume import TenantVolume

SAMPLE_S = 5.0  # one sparkline point per tenant every SAMPLE_S ...
SPARKLINE_POINTS = 60  # ... over the last 5 minutes
# The router republishes a tenant's state every second while it sends; an older document means
# the tenant has sent nothing since (see `current_rates`).
FRESH_S = 2.5
SILENT_AFTER_S = 300.0  # no message for 5 minutes (or never): the connection is silent
ERRORING_WINDOW_S = 60.0  # a DLQ record within the last minute: the tenant is erroring

RATE_KEYS = ("rate_10s", "rate_1m", "rate_5m", "rate_1h")
BYTES_KEYS = ("bytes_10s", "bytes_1m", "bytes_5m", "bytes_1h")
SHORT_WINDOWS_S = {"rate_10s": 10, "bytes_10s": 10, "rate_1m": 60, "bytes_1m": 60}
FLAGS = ("noisy", "paused", "silent", "erroring")

NOTES = {
    "received": "ingress records the router has counted for the tenant",
    "processed": "events + dlq: records written to the tenant's out and DLQ topics (Kafka end "
    "offsets); a redelivery after a crash can count a message twice, with the same "
    "idempotency key",
    "rates": "messages (or bytes) per window from the router's rolling windows",
    "backlog": "scope dedicated_lane: consumer lag (end offset - committed offset) of the lane "
    "worker group on the tenant's dedicated lane, shared with any other tenant in that lane; "
    "scope shared_lane: ingress not yet routed plus laneway.lane.shared not yet processed, all "
    "tenants together. "
    "Committed offsets advance every few seconds, so a backlog of a few seconds' traffic is normal",
    "flags": f"noisy: 10-s rate above the contract rate_per_s, or in a dedicated lane by the "
    f"router's choice; paused: ingest paused by an operator; silent: no message for "
    f"{SILENT_AFTER_S:.0f} s (or never); erroring: a DLQ record within the last "
    f"{ERRORING_WINDOW_S:.0f} s",
}


@dataclass(frozen=True, slots=True)
class Offsets:
    """What the last read of Kafka found; `read_at` 0.0: nothing read yet."""

    read_at: float = 0.0
    ends: Mapping[str, int] = field(default_factory=dict)  # one-partition topic -> end offset
    lane_backlog: Mapping[int, int] = field(default_factory=dict)  # dedicated lane -> lag
    shared_backlog: int | None = None  # ingress not yet routed + shared lane not yet processed


# ---------------------------------------------------------------- rows


@dataclass(slots=True)
class TenantStats:
    """One tenant's stats at one instant; counts None = Kafka offsets not read yet."""

    tenant: str
    name: str
    paused: bool
    rate_per_s: float
    pinned: str
    received: int
    events: int | None
    dlq: int | None
    rates: Mapping[str, float]
    lane: int | None  # None: the shared lane
    moved_at: float | None
    moves: Sequence[dict[str, Any]]
    backlog: int | None
    last_message_at: float | None
    updated_at: float | None
    flags: tuple[str, ...]
    sparkline: list[float]

    @property
    def processed(self) -> int | None:
        if self.events is None or self.dlq is None:
            return None
        return self.events + self.dlq

    def as_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "name": self.name,
            "paused": self.paused,
            "rate_per_s": self.rate_per_s,
            "received": self.received,
            "processed": self.processed,
            "events": self.events,
            "dlq": self.dlq,
            "rates": (
                dict(_NO_RATES)  # most rows: a tenant that never sent; nothing to round
                if self.rates is _NO_RATES
                else {key: round(value, 3) for key, value in self.rates.items()}
            ),
            "lane": "shared" if self.lane is None else "dedicated",
            "lane_index": self.lane,
            "pinned": self.pinned,
            "moved_at": iso_time(self.moved_at),
            "moves": self.moves,
            "backlog": {
                "messages": self.backlog,
                "scope": "shared_lane" if self.lane is None else "dedicated_lane",
            },
            "last_message_at": iso_time(self.last_message_at),
            "updated_at": iso_time(self.updated_at),
            "flags": self.flags,
            "sparkline": self.sparkline,
        }


# The rates of a tenant that never sent: one mapping shared by all such rows (never changed).
_NO_RATES: Mapping[str, float] = MappingProxyType(dict.fromkeys(RATE_KEYS + BYTES_KEYS, 0.0))


def current_rates(document: Mapping[str, Any] | None, now: float) -> Mapping[str, float]:
    """The document's windows as of `now`.

    The router republishes a tenant every second while it sends, so a document older than
    `FRESH_S` means no message since `updated_at`: the 5-min and 1-h windows are recomputed from
    its minute buckets, and the 10-s and 1-min windows, which it does not keep, fade linearly
    to zero over their width (exact for traffic that was steady until it stopped).
    """
    if not document:
        return _NO_RATES
    published = document["rates"]
    age = now - document.get("updated_at", now)
    if age <= FRESH_S:
        return {key: float(published[key]) for key in RATE_KEYS + BYTES_KEYS}
    volume = document.get("volume")
    recomputed = TenantVolume.from_state(volume, now).rates(now) if volume else None
    rates = {}
    for key in RATE_KEYS + BYTES_KEYS:
        if key in SHORT_WINDOWS_S:
            rates[key] = _faded(published, key, age)
        else:
            rates[key] = float(getattr(recomputed, key)) if recomputed is not None else 0.0
    return rates


def current_rate_10s(document: Mapping[str, Any] | None, now: float) -> float:
    """`current_rates(document, now)["rate_10s"]`, without recomputing the long windows."""
    if not document:
        return 0.0
    age = now - document.get("updated_at", now)
    published = document["rates"]
    return float(published["rate_10s"]) if age <= FRESH_S else _faded(published, "rate_10s", age)


def _faded(published: Mapping[str, Any], key: str, age: float) -> float:
    """A short window `age` seconds after the last message: linearly down to 0 over its width."""
    return float(published[key]) * max(0.0, 1.0 - age / SHORT_WINDOWS_S[key])


def tenant_stats(
    record: TenantSummary,
    document: Mapping[str, Any] | None,
    offsets: Offsets,
    dlq_grew_at: float | None,
    history: list[float],
    names: TopicNames,
    now: float,
) -> TenantStats:
    rates = current_rates(document, now)
    published = document["rates"] if document else {}
    lane = document.get("lane") if document else None
    last_message_at = published.get("last_message_at")
    read = offsets.read_at > 0
    flags = []
    if rates["rate_10s"] > record.rate_per_s or (lane is not None and record.pinned != "dedicated"):
        flags.append("noisy")
    if record.paused:
        flags.append("paused")
    if last_message_at is None or now - last_message_at > SILENT_AFTER_S:
        flags.append("silent")
    if dlq_grew_at is not None and now - dlq_grew_at < ERRORING_WINDOW_S:
        flags.append("erroring")
    return TenantStats(
        tenant=record.id,
        name=record.name,
        paused=record.paused,
        rate_per_s=record.rate_per_s,
        pinned=record.pinned,
        received=int(published.get("received", 0)),
        events=offsets.ends.get(names.out(record.id), 0) if read else None,
        dlq=offsets.ends.get(names.dlq(record.id), 0) if read else None,
        rates=rates,
        lane=lane,
        moved_at=document.get("moved_at") if document else None,
        moves=document.get("moves", ()) if document else (),
        backlog=offsets.shared_backlog if lane is None else offsets.lane_backlog.get(lane),
        last_message_at=last_message_at,
        updated_at=document.get("updated_at") if document else None,
        flags=tuple(flags),
        sparkline=[*history, round(rates["rate_10s"], 2)],  # the last point is now
    )


class RateHistory:
    """Each tenant's 10-s rate, one point every `SAMPLE_S`, over the last 5 minutes.

    Only tenants with traffic in that span hold a series, so 1,000 quiet tenants cost nothing.
    """

    def __init__(self, points: int = SPARKLINE_POINTS - 1) -> None:  # + the live point
        self._points = points
        self._series: dict[str, deque[float]] = {}

    def sample(self, rates: Mapping[str, float]) -> None:
        for tenant, rate in rates.items():
            series = self._series.get(tenant)
            if series is None:
                if rate <= 0:
                    continue
                series = self._series[tenant] = deque(maxlen=self._points)
            series.append(round(rate, 2))
        for tenant in [t for t, series in self._series.items() if not any(series)]:
            del self._series[tenant]
        for tenant in self._series.keys() - rates.keys():
            del self._series[tenant]

    def series(self, tenant: str) -> list[float]:
        return list(self._series.get(tenant, ()))


# ---------------------------------------------------------------- queries


class InvalidQuery(ValueError):
    """A query parameter out of its allowed values."""

    def __init__(self, parameter: str, allowed: list[str]) -> None:
        super().__init__(f"invalid value for: {parameter}")
        self.parameter = parameter
        self.allowed = allowed


def _rate_of(key: str) -> Callable[[TenantStats], Any]:
    return lambda row: row.rates[key]


SORT_KEYS: dict[str, Callable[[TenantStats], Any]] = {
    "tenant": lambda row: row.tenant,
    "name": lambda row: row.name.casefold(),
    "received": lambda row: row.received,
    "processed": lambda row: _number(row.processed),
    "events": lambda row: _number(row.events),
    "dlq": lambda row: _number(row.dlq),
    "backlog": lambda row: _number(row.backlog),
    "lane": lambda row: _number(row.lane),
    "last_message_at": lambda row: row.last_message_at or 0.0,
    **{key: _rate_of(key) for key in RATE_KEYS},
}
ASCENDING_BY_DEFAULT = {"tenant", "name", "lane"}
MAX_LIMIT = 100_000


@dataclass(frozen=True, slots=True)
class StatsQuery:
    """The parameters of `GET /api/stats`, validated."""

    sort: str = "rate_1m"
    descending: bool = True
    lane: str | None = None  # "shared", "dedicated" or a lane index
    flags: tuple[str, ...] = ()
    text: str = ""
    limit: int | None = None

    @classmethod
    def parse(cls, params: Mapping[str, str], flags: list[str]) -> StatsQuery:
        """From the query string; `flags` are all the `flag` values (each may be a list).
        Raises InvalidQuery naming the first bad parameter."""
        sort = params.get("sort", "rate_1m")
        if sort not in SORT_KEYS:
            raise InvalidQuery("sort", sorted(SORT_KEYS))
        order = params.get("order", "asc" if sort in ASCENDING_BY_DEFAULT else "desc")
        if order not in ("asc", "desc"):
            raise InvalidQuery("order", ["asc", "desc"])
        lane = params.get("lane") or None
        if lane is not None and lane not in ("shared", "dedicated") and not lane.isdigit():
            raise InvalidQuery("lane", ["shared", "dedicated", "<lane index>"])
        wanted = tuple(flag for value in flags for flag in value.split(",") if flag)
        if any(flag not in FLAGS for flag in wanted):
            raise InvalidQuery("flag", list(FLAGS))
        limit = params.get("limit")
        if limit is not None and not (limit.isdigit() and 1 <= int(limit) <= MAX_LIMIT):
            raise InvalidQuery("limit", [f"1..{MAX_LIMIT}"])
        return cls(
            sort=sort,
            descending=order == "desc",
            lane=lane,
            flags=wanted,
            text=params.get("q", "").casefold(),
            limit=int(limit) if limit is not None else None,
        )

    def matches(self, row: TenantStats) -> bool:
        if self.lane == "shared" and row.lane is not None:
            return False
        if self.lane == "dedicated" and row.lane is None:
            return False
        if self.lane is not None and self.lane.isdigit() and row.lane != int(self.lane):
            return False
        if self.text and self.text not in row.tenant and self.text not in row.name.casefold():
            return False
        return all(flag in row.flags for flag in self.flags)

    def apply(self, rows: list[TenantStats]) -> list[TenantStats]:
        """The matching rows, sorted (ties by tenant id, as `rows` come), without the limit."""
        matching = [row for row in rows if self.matches(row)]
        # A stable sort keeps equal keys in tenant-id order, also with reverse=True.
        return sorted(matching, key=SORT_KEYS[self.sort], reverse=self.descending)


def totals(rows: list[TenantStats], offsets: Offsets, names: TopicNames) -> dict[str, Any]:
    """Sums over every tenant (not only the ones a filter shows)."""
    read = offsets.read_at > 0

    def total(values: Iterable[int | None]) -> int | None:
        return sum(value or 0 for value in values) if read else None

    return {
        "tenants": len(rows),
        "shared": sum(1 for row in rows if row.lane is None),
        "dedicated": sum(1 for row in rows if row.lane is not None),
        "received": sum(row.received for row in rows),
        "processed": total(row.processed for row in rows),
        "events": total(row.events for row in rows),
        "dlq": total(row.dlq for row in rows),
        **{key: round(sum(row.rates[key] for row in rows), 3) for key in RATE_KEYS},
        "flags": {flag: sum(1 for row in rows if flag in row.flags) for flag in FLAGS},
        "lane_moves": offsets.ends.get(names.control, 0) if read else None,
        "backlog": {
            "shared_lane": offsets.shared_backlog,
            "dedicated_lanes": {str(lane): lag for lane, lag in offsets.lane_backlog.items()},
        },
    }


def _number(value: float | None) -> float:
    return -1 if value is None else value


def iso_time(timestamp: float | None) -> str | None:
    """An epoch timestamp as the stats answers show it (UTC, milliseconds); None stays None."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")
