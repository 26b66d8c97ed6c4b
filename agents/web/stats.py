"""Per-tenant stats for operators: counts, rates, lane, backlog and flags.

GET /api/tenants/{tenant_id}/stats   that tenant's token or the admin token
GET /api/stats                       admin: every tenant plus totals;
                                     ?sort=&order=asc|desc&lane=&flag=&q=&limit=

Every worker answers the same, whichever is asked, because nothing here is local to a worker:
- received, rates, lane and recent moves, last message: the tenant-state document that the
  router owning the tenant publishes about once a second (`TenantStateMirror`, in every worker);
- paused and the contract rate: the tenant registry (mirrored the same way);
- processed / events / DLQ counts and backlogs: Kafka offsets, read once a second by
  `KafkaProbe`: end offsets of the tenant's out and DLQ topics, and consumer-group lag.
Only the sparkline is sampled locally (every `SAMPLE_S`), from the same mirrored rates.
Nothing here reads message content (invariant 5).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faust.web import View
from mode import Service

from agents.state.broker_watch import BrokerWatch
from agents.state.registry import TenantRegistry
from agents.state.tenant_state import TenantStateMirror
from agents.web.admin import api_errors
from agents.web.auth import ApiError, Guard
from streams.app import LanewayApp
from streams.tenants import TenantRecord
from streams.topics import TopicNames
from streams.volume import TenantVolume

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 1.0  # Kafka offsets (counts, backlog) are at most this old, plus the read
PROBE_TIMEOUT_S = 5.0
TOPIC_LIST_TTL_S = 30.0  # the topic list is re-read this often, and whenever one is missing
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


# ---------------------------------------------------------------- Kafka offsets


@dataclass(frozen=True, slots=True)
class Offsets:
    """What the last probe read from Kafka; `read_at` 0.0: nothing read yet."""

    read_at: float = 0.0
    ends: Mapping[str, int] = field(default_factory=dict)  # one-partition topic -> end offset
    lane_backlog: Mapping[int, int] = field(default_factory=dict)  # dedicated lane -> lag
    shared_backlog: int | None = None  # ingress not yet routed + shared lane not yet processed


class KafkaProbe(Service):
    """Reads end offsets and committed offsets every `PROBE_INTERVAL_S`, in the background, so
    that requests and metric scrapes never wait for Kafka and cost it nothing extra."""

    def __init__(
        self, app: LanewayApp, registry: TenantRegistry, broker: BrokerWatch, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.registry = registry
        self.broker = broker
        self.offsets = Offsets()
        self.dlq_grew_at: dict[str, float] = {}  # tenant -> when its DLQ topic last grew
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._topics: set[str] = set()
        self._topics_read_at = -math.inf
        self._failing = False
        self._started_at = time.time()  # DLQ records of tenants onboarded since are recent

    async def on_start(self) -> None:
        servers = self.app.laneway.bootstrap_servers
        self._admin = AIOKafkaAdminClient(bootstrap_servers=servers)
        # No group: it only asks for end offsets, it never consumes.
        self._consumer = AIOKafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False)
        await self._admin.start()
        await self._consumer.start()

    async def on_stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        if self._admin is not None:
            await self._admin.close()

    @Service.timer(PROBE_INTERVAL_S)
    async def _probe(self) -> None:
        if not self.broker.up:  # the watch says so already; the last numbers stay, and age
            return
        try:
            await asyncio.wait_for(self.refresh(time.time()), PROBE_TIMEOUT_S)
        except Exception as error:  # the broker is away: the last numbers stay, `read_at` ages
            if not self._failing:
                log.warning("stats: Kafka offsets not read: %s", type(error).__name__)
            self._failing = True
        else:
            self._failing = False

    async def refresh(self, now: float) -> None:
        assert self._consumer is not None and self._admin is not None
        names = self.app.topic_names
        settings = self.app.laneway
        records = self.registry.directory.all()
        tenants = [record.id for record in records]
        lanes = {lane: names.dedicated_lane(lane) for lane in range(settings.dedicated_lanes)}
        single = [names.control, *lanes.values()]
        single += [topic for tenant in tenants for topic in (names.out(tenant), names.dlq(tenant))]
        stale = now - self._topics_read_at >= TOPIC_LIST_TTL_S
        if stale or not self._topics.issuperset(single):
            # Only topics that exist are asked for: an unknown one would block the request (or
            # be auto-created). A new tenant's topics are so counted from the next read on.
            self._topics = set(await self._consumer.topics())
            self._topics_read_at = now
        partitions = [TopicPartition(topic, 0) for topic in single if topic in self._topics]
        # The shared lane's backlog: ingress the routers have not forwarded yet, plus
        # laneway.lane.shared the shared workers have not processed yet.
        ingress, shared_lane = (
            [TopicPartition(topic, p) for p in range(settings.ingress_partitions)]
            if topic in self._topics
            else []
            for topic in (names.ingress, names.shared_lane)
        )
        wanted = partitions + ingress + shared_lane
        ends = {}
        if wanted:
            # aiokafka looks up the leaders of unknown topics one topic per metadata round
            # (2,000 tenant topics: minutes); naming them all first takes one round, none after.
            await self._consumer._client.set_topics({tp.topic for tp in wanted})
            ends = await self._consumer.end_offsets(wanted)
        router_commits, shared_commits, lane_commits = await asyncio.gather(
            self._admin.list_consumer_group_offsets(settings.router_group),
            self._admin.list_consumer_group_offsets(self.app.conf.id),
            self._admin.list_consumer_group_offsets(settings.lane_worker_app_id),
        )
        previous = self.offsets
        offsets = Offsets(
            read_at=now,
            ends={
                tp.topic: end
                for tp, end in ends.items()
                if tp.topic not in (names.ingress, names.shared_lane)
            },
            lane_backlog={
                lane: _lag(ends, lane_commits, [TopicPartition(topic, 0)])
                for lane, topic in lanes.items()
                if topic in self._topics
            },
            shared_backlog=(
                _lag(ends, router_commits, ingress) + _lag(ends, shared_commits, shared_lane)
                if ingress
                else None
            ),
        )
        self.offsets = offsets
        self._note_dlq_growth(records, names, previous, offsets, now)

    def _note_dlq_growth(
        self,
        records: Iterable[TenantRecord],
        names: TopicNames,
        previous: Offsets,
        offsets: Offsets,
        now: float,
    ) -> None:
        grew_at = {}
        for record in records:
            tenant = record.id
            topic = names.dlq(tenant)
            end = offsets.ends.get(topic)
            if end is None:
                continue
            if previous.read_at:
                before = previous.ends.get(topic, 0)  # a topic new since: all of it is recent
            elif datetime.fromisoformat(record.created_at).timestamp() >= self._started_at:
                before = 0  # onboarded since this worker started: all of it is recent
            else:
                before = end  # the first read is the baseline: older DLQ records do not count
            if end > before:
                grew_at[tenant] = now
            elif now - self.dlq_grew_at.get(tenant, -math.inf) < ERRORING_WINDOW_S:
                grew_at[tenant] = self.dlq_grew_at[tenant]
        self.dlq_grew_at = grew_at


def _lag(
    ends: Mapping[TopicPartition, int],
    commits: Mapping[Any, Any],
    partitions: Iterable[TopicPartition],
) -> int:
    """Records not yet committed by the group; a partition without a commit counts from 0 (the
    groups start at the earliest offset)."""
    total = 0
    for tp in partitions:
        committed = commits.get(tp)
        offset = max(committed.offset, 0) if committed is not None else 0
        total += max(ends.get(tp, 0) - offset, 0)
    return total


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
    rates: dict[str, float]
    lane: int | None  # None: the shared lane
    moved_at: float | None
    moves: list[dict[str, Any]]
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
            "rates": {key: round(value, 3) for key, value in self.rates.items()},
            "lane": "shared" if self.lane is None else "dedicated",
            "lane_index": self.lane,
            "pinned": self.pinned,
            "moved_at": _iso(self.moved_at),
            "moves": self.moves,
            "backlog": {
                "messages": self.backlog,
                "scope": "shared_lane" if self.lane is None else "dedicated_lane",
            },
            "last_message_at": _iso(self.last_message_at),
            "updated_at": _iso(self.updated_at),
            "flags": list(self.flags),
            "sparkline": self.sparkline,
        }


def current_rates(document: Mapping[str, Any] | None, now: float) -> dict[str, float]:
    """The document's windows as of `now`.

    The router republishes a tenant every second while it sends, so a document older than
    `FRESH_S` means no message since `updated_at`: the 5-min and 1-h windows are recomputed from
    its minute buckets, and the 10-s and 1-min windows, which it does not keep, fade linearly
    to zero over their width (exact for traffic that was steady until it stopped).
    """
    if not document:
        return dict.fromkeys(RATE_KEYS + BYTES_KEYS, 0.0)
    published = document["rates"]
    age = now - document.get("updated_at", now)
    if age <= FRESH_S:
        return {key: float(published[key]) for key in RATE_KEYS + BYTES_KEYS}
    volume = document.get("volume")
    recomputed = TenantVolume.from_state(volume, now).rates(now) if volume else None
    rates = {}
    for key in RATE_KEYS + BYTES_KEYS:
        width = SHORT_WINDOWS_S.get(key)
        if width is not None:
            rates[key] = float(published[key]) * max(0.0, 1.0 - age / width)
        else:
            rates[key] = float(getattr(recomputed, key)) if recomputed is not None else 0.0
    return rates


def tenant_stats(
    record: TenantRecord,
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
    if rates["rate_10s"] > record.rate_per_s or (
        lane is not None and record.lane.pinned != "dedicated"
    ):
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
        pinned=record.lane.pinned,
        received=int(published.get("received", 0)),
        events=offsets.ends.get(names.out(record.id), 0) if read else None,
        dlq=offsets.ends.get(names.dlq(record.id), 0) if read else None,
        rates=rates,
        lane=lane,
        moved_at=document.get("moved_at") if document else None,
        moves=list(document.get("moves", [])) if document else [],
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


class StatsService(Service):
    """Builds the stats of every tenant from the mirrors and the probe; samples sparklines."""

    def __init__(
        self,
        app: LanewayApp,
        registry: TenantRegistry,
        tenant_states: TenantStateMirror,
        broker: BrokerWatch,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.registry = registry
        self.tenant_states = tenant_states
        self.broker = broker
        self.probe = KafkaProbe(app, registry, broker)
        self.history = RateHistory()

    def on_init_dependencies(self) -> Iterable[Service]:
        return [self.probe]

    @Service.timer(SAMPLE_S)
    async def _sample(self) -> None:
        self.history.sample({row.tenant: row.rates["rate_10s"] for row in self.rows(time.time())})

    def tenant(self, tenant_id: str, now: float) -> TenantStats | None:
        record = self.registry.directory.get(tenant_id)
        return None if record is None else self._stats(record, now)

    def rows(self, now: float) -> list[TenantStats]:
        """Every onboarded tenant, by id."""
        records = sorted(self.registry.directory.all(), key=lambda record: record.id)
        return [self._stats(record, now) for record in records]

    def _stats(self, record: TenantRecord, now: float) -> TenantStats:
        return tenant_stats(
            record,
            self.tenant_states.states.get(record.id),
            self.probe.offsets,
            self.probe.dlq_grew_at.get(record.id),
            self.history.series(record.id),
            self.app.topic_names,
            now,
        )


# ---------------------------------------------------------------- queries


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
        """From the query string; `flags` are all the `flag` values (each may be a list)."""
        sort = params.get("sort", "rate_1m")
        if sort not in SORT_KEYS:
            raise _bad_query("sort", sorted(SORT_KEYS))
        order = params.get("order", "asc" if sort in ASCENDING_BY_DEFAULT else "desc")
        if order not in ("asc", "desc"):
            raise _bad_query("order", ["asc", "desc"])
        lane = params.get("lane") or None
        if lane is not None and lane not in ("shared", "dedicated") and not lane.isdigit():
            raise _bad_query("lane", ["shared", "dedicated", "<lane index>"])
        wanted = tuple(flag for value in flags for flag in value.split(",") if flag)
        if any(flag not in FLAGS for flag in wanted):
            raise _bad_query("flag", list(FLAGS))
        limit = params.get("limit")
        if limit is not None and not (limit.isdigit() and 1 <= int(limit) <= MAX_LIMIT):
            raise _bad_query("limit", [f"1..{MAX_LIMIT}"])
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


def _bad_query(parameter: str, allowed: list[str]) -> ApiError:
    message = f"invalid value for: {parameter}"
    return ApiError(400, "invalid_query", message, parameter=parameter, allowed=allowed)


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------- views

Handler = Callable[..., Awaitable[web.Response]]


def no_store(handler: Handler) -> Handler:
    """Stats and the dashboard are per-user data: no cache (browser or proxy) may keep them."""

    async def wrapped(view: View, request: web.Request, **match: str) -> web.Response:
        response = await handler(view, request, **match)
        response.headers["Cache-Control"] = "no-store"
        return response

    return wrapped


def json_response(body: Mapping[str, Any]) -> web.Response:
    # orjson: /api/stats for 1,000 tenants is ~1 MB of JSON, every dashboard refresh.
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def kafka_status(broker: BrokerWatch) -> dict[str, Any]:
    """The broker link as the stats answers show it: counts stop moving while it is down."""
    return {"up": broker.up, "brokers": broker.brokers, "down_since": _iso(broker.down_since)}


def install(
    app: LanewayApp,
    registry: TenantRegistry,
    tenant_states: TenantStateMirror,
    guard: Guard,
    broker: BrokerWatch,
) -> StatsService:
    """Register the stats views on `app`; the service also feeds the dashboard and metrics."""
    stats_service = StatsService(app, registry, tenant_states, broker)
    app.add_service(stats_service)

    @app.page("/api/tenants/{tenant_id}/stats")
    class TenantStatsView(View):
        @no_store
        @api_errors
        async def get(self, request: web.Request, tenant_id: str) -> web.Response:
            await guard.tenant_or_admin(request, tenant_id)
            stats = stats_service.tenant(tenant_id, time.time())
            if stats is None:  # offboarded between the check and here
                raise ApiError(404, "unknown_tenant", "no such tenant")
            return json_response({**stats.as_json(), "kafka": kafka_status(broker), "notes": NOTES})

    @app.page("/api/stats")
    class AllStatsView(View):
        @no_store
        @api_errors
        async def get(self, request: web.Request) -> web.Response:
            await guard.admin(request)
            query = StatsQuery.parse(request.query, request.query.getall("flag", []))
            now = time.time()
            rows = stats_service.rows(now)
            shown = query.apply(rows)
            offsets = stats_service.probe.offsets
            return json_response(
                {
                    "generated_at": _iso(now),
                    "kafka": kafka_status(broker),
                    "offsets_read_at": _iso(offsets.read_at) if offsets.read_at else None,
                    "sparkline_interval_s": SAMPLE_S,
                    "sort": query.sort,
                    "order": "desc" if query.descending else "asc",
                    "matched": len(shown),
                    "totals": totals(rows, offsets, app.topic_names),
                    "tenants": [row.as_json() for row in shown[: query.limit]],
                    "notes": NOTES,
                }
            )

    return stats_service
