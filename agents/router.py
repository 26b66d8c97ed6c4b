"""The router: measures every tenant on every ingress record and keeps each tenant's lane.

Hot path (`observe`): a dict lookup and a few additions per record, no I/O, no table write.
Twice a second `_evaluate` applies the lane policy to the tenants that sent something or sit in
a dedicated lane; once a second `_persist` publishes each active tenant's state (volume
windows, lane, recent moves) to the compacted tenant-state topic that every worker mirrors.

Leaving a dedicated lane is a cut: from the decision on, the tenant's new records are held
(their ingress offsets stay uncommitted) until the lane worker has committed past the last record
forwarded to the old lane, i.e. emitted all of the tenant's earlier messages. Then the move is
applied and the held records are released, in order, to their new lane (invariant 2). Other
tenants are never held.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from mode import Service

from agents.registry import TenantRegistry
from agents.tenant_state import TenantStateMirror
from streams.app import LanewayApp
from streams.lanes import LaneBook, LaneMove, LanePolicy, decide
from streams.processing import IngressRecord, OutputRecord, tenant_of_key
from streams.volume import VolumeBook

log = logging.getLogger(__name__)

RECENT_MOVES_KEPT = 10
HOLD = -1  # `route` result: keep the record back until the tenant's cut completes


class Router(Service):
    """Volume windows, rate contracts and lane assignment of the tenants this worker owns."""

    def __init__(
        self,
        app: LanewayApp,
        registry: TenantRegistry,
        tenant_states: TenantStateMirror,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.app = app
        self.registry = registry
        self.tenant_states = tenant_states
        settings = app.laneway
        self.enabled = settings.lanes_enabled
        self.policy = LanePolicy(
            promote_factor=settings.promote_factor,
            promote_min_rate=settings.promote_min_rate,
            calm_factor=settings.calm_factor,
            hold_down_s=settings.hold_down_s,
            dedicated_lanes=settings.dedicated_lanes,
        )
        self.volumes = VolumeBook()
        self.lanes = LaneBook(settings.dedicated_lanes)
        self.moves: dict[str, deque[dict[str, Any]]] = {}
        self.move_count = 0
        self._tenant_names: dict[bytes, str | None] = {}
        self._active: set[str] = set()
        self._last_forwarded: dict[str, tuple[int, int]] = {}  # tenant -> (lane, lane offset)
        self._admin: AIOKafkaAdminClient | None = None
        self._cutting: dict[str, LaneMove] = {}  # tenant -> decided move out of a dedicated lane
        self._held: dict[str, list[Any]] = {}  # tenant -> records kept back, in ingress order
        self.ready = asyncio.Event()

    async def on_start(self) -> None:
        await self.app.producer.create_topic(
            self.app.topic_names.control,
            partitions=1,
            replication=self.app.laneway.topic_replication,
        )
        self._admin = AIOKafkaAdminClient(bootstrap_servers=self.app.laneway.bootstrap_servers)
        await self._admin.start()
        await self.tenant_states.ready.wait()
        now = time.time()
        for tenant_id, document in self.tenant_states.states.items():
            if document.get("volume"):
                self.volumes.restore(tenant_id, document["volume"], now)
            lane = document.get("lane")
            if lane is not None:
                self.lanes.restore(tenant_id, lane, document.get("moved_at"))
            self.moves[tenant_id] = deque(document.get("moves", []), maxlen=RECENT_MOVES_KEPT)
        self.ready.set()

    async def on_stop(self) -> None:
        if self._admin is not None:
            await self._admin.close()

    # ---------------------------------------------------------------- hot path

    def route(self, record: IngressRecord, now: float) -> int | None:
        """Count the record for its tenant; where it goes: a dedicated lane, None (shared) or
        HOLD (the tenant is leaving a dedicated lane: keep it back, see `hold`)."""
        key = record.key or b""
        tenant = self._tenant_names.get(key, "")
        if tenant == "":
            tenant = self._tenant_names[key] = tenant_of_key(key)
        if tenant is None:
            return None  # not a tenant: processed in the shared lane, which DLQs it
        self.volumes.record(tenant, now, len(record.value or b""))
        self._active.add(tenant)
        if tenant in self._cutting or tenant in self._held:
            return HOLD
        return self.lanes.lane_of(tenant) if self.enabled else None

    def hold(self, record: IngressRecord, item: Any) -> None:
        """Keep `item` (the caller's handle on `record`) until the tenant's cut completes."""
        tenant = self._tenant_names[record.key or b""]
        assert tenant is not None
        self._held.setdefault(tenant, []).append(item)

    def take_released(self) -> list[tuple[int | None, list[Any]]]:
        """Held items of tenants whose cut is complete, with the lane they go to now."""
        released = [tenant for tenant in self._held if tenant not in self._cutting]
        return [(self.lanes.lane_of(tenant), self._held.pop(tenant)) for tenant in released]

    def count_dlq(self, keys: Iterable[bytes]) -> None:
        now = time.time()
        for key in keys:
            tenant = self._tenant_names.get(key)
            if tenant:
                self.volumes.record_dlq(tenant, now)

    def forwarded(self, forwards: list[OutputRecord], last_offsets: dict[str, int]) -> None:
        """Remember, per tenant, the last lane offset that holds one of its records."""
        for record in forwards:
            tenant = self._tenant_names.get(record.key)
            if tenant:
                lane = int(record.topic.rsplit(".", 1)[1])
                self._last_forwarded[tenant] = (lane, last_offsets[record.topic])

    # ---------------------------------------------------------------- decisions

    @Service.timer(0.5)
    async def _evaluate(self) -> None:
        if not self.enabled:
            return
        try:
            await self._evaluate_lanes(time.time())
        except Exception:  # a bug here must not stop the worker: lanes stay as they are
            log.exception("lane evaluation failed")

    async def _evaluate_lanes(self, now: float) -> None:
        if self._cutting:
            await self._complete_cuts(await self._lane_commits())
        for tenant in self._active | set(self.lanes.placed()):
            if tenant in self._cutting:
                continue
            move = self._decision(tenant, now)
            if move is None:
                continue
            if move.from_lane is None:
                await self._apply(tenant, move)  # into a lane: publish order already drains
            else:
                self._cutting[tenant] = move

    async def _complete_cuts(self, committed: dict[int, int]) -> None:
        for tenant, move in list(self._cutting.items()):
            forwarded = self._last_forwarded.get(tenant)
            if forwarded is None or committed.get(forwarded[0], -1) > forwarded[1]:
                del self._cutting[tenant]
                await self._apply(tenant, move)

    def _decision(self, tenant: str, now: float) -> LaneMove | None:
        record = self.registry.directory.get(tenant)
        settings = self.app.laneway
        contract = record.rate_per_s if record is not None else settings.default_rate_per_s
        if record is not None:
            pinned_lane = record.lane.dedicated_lane if record.lane.pinned == "dedicated" else None
            self.lanes.pin(tenant, record.lane.pinned, pinned_lane)
        snapshot = self.volumes.snapshot(tenant, now)
        return decide(
            self.lanes.assignment(tenant),
            recent_rate=self.volumes.recent_rate(tenant, now),
            rate_10s=snapshot.rate_10s,
            contract_rate=contract,
            now=now,
            backlog_empty=True,  # the drain is the cut's job (see the module docstring)
            lane_loads=self.lanes.loads(),
            policy=self.policy,
        )

    async def _apply(self, tenant: str, move: LaneMove) -> None:
        self.lanes.apply(move)
        self.move_count += 1
        entry = {
            "tenant": tenant,
            "from": move.from_lane,
            "to": move.to_lane,
            "reason": move.reason,
            "at": _iso(move.at),
        }
        self.moves.setdefault(tenant, deque(maxlen=RECENT_MOVES_KEPT)).append(entry)
        log.info(
            "tenant %s moved from lane %s to %s (%s)",
            tenant,
            move.from_lane,
            move.to_lane,
            move.reason,
        )
        await self.app.producer.send(
            self.app.topic_names.control, tenant.encode(), orjson.dumps(entry), None, None, None
        )
        await self.tenant_states.publish(tenant, self.state_document(tenant, time.time()))

    async def _lane_commits(self) -> dict[int, int]:
        """Lane index -> the lane worker's committed offset (the next record it will read)."""
        assert self._admin is not None
        group = f"{self.app.laneway.app_id}-lanes"
        try:
            offsets = await self._admin.list_consumer_group_offsets(group)
        except Exception as error:  # no commit yet, or broker busy: nothing counts as drained
            log.debug("lane offsets unavailable: %s", type(error).__name__)
            return {}
        prefix = self.app.topic_names.dedicated_lane(0)[:-1]
        return {
            int(tp.topic[len(prefix) :]): meta.offset
            for tp, meta in offsets.items()
            if isinstance(tp, TopicPartition) and tp.topic.startswith(prefix)
        }

    # ---------------------------------------------------------------- state

    @Service.timer(1.0)
    async def _persist(self) -> None:
        now = time.time()
        active, self._active = self._active, set()
        try:
            for tenant in active | set(self.lanes.placed()):
                await self.tenant_states.publish(tenant, self.state_document(tenant, now))
        except Exception as error:  # the broker is away: the next second's state supersedes
            log.warning("tenant state not published: %s", type(error).__name__)

    def state_document(self, tenant: str, now: float) -> dict[str, Any]:
        snapshot = self.volumes.snapshot(tenant, now)
        lane = self.lanes.lane_of(tenant)
        return {
            "tenant": tenant,
            "lane": lane,
            "moved_at": self.lanes.assignment(tenant).moved_at,
            "moves": list(self.moves.get(tenant, ())),
            "volume": self.volumes.state(tenant),
            "rates": snapshot.as_dict(),
            "updated_at": now,
        }


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")
