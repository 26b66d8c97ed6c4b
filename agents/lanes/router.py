"""The router: reads the tenant-keyed ingress, measures every tenant, forwards each record to its
tenant's lane.

Its per-record cost is what keeps a flooding tenant from slowing everyone else, so it is a plain
aiokafka consumer, not a Faust agent. The processing of each lane is a Faust agent
(`agents.lanes.processor`), the same code for every lane. Records of tenants in the shared lane
go to `laneway.lane.shared`, same partition as in ingress; those of promoted tenants go to
partition N of `laneway.lane.dedicated` (lane N), read by the lane workers. The ingress origin
travels in a header: events keep their `ref` and idempotency key.

`Router` wires its parts, one job each, and runs their loop and timers:
- `Forwarder` (`forwarding.py`): the hot path, and the routing state the parts share: volume
  windows, lanes, and one `streams.cutover.TenantRoute` per tenant (cut, hold, last forward);
- `IngressReader` (`ingress.py`): which ingress partitions to read (Faust's assignment of the
  shared lane), the read loop's passes, the commits; on taking partitions it adopts their
  tenants' states and recovers from Kafka what a restart forgot (`Recovery`, `recovery.py`);
- `HoldReplays` (`replay.py`): a released hold's records, re-read from Kafka, in order;
- `LaneDecisions` (`decisions.py`): the lane policy twice a second, and the drain-first cuts;
- `RouteStates` (`state.py`): the tenant-state documents, published each second and adopted;
- `LaneDlq` (`lane_dlq.py`): the lane workers' DLQ records of its tenants, into their windows;
- `LaneOffsets` (`offsets.py`): the lanes' committed and end offsets it asks Kafka for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from mode import Service

from agents.lanes.decisions import LaneDecisions
from agents.lanes.forwarding import Forwarder
from agents.lanes.ingress import FETCH_TIMEOUT_MS, IngressReader
from agents.lanes.lane_dlq import LaneDlq
from agents.lanes.offsets import LaneOffsets
from agents.lanes.recovery import Recovery
from agents.lanes.replay import HoldReplays
from agents.lanes.state import RouteStates
from agents.state.registry import TenantRegistry
from agents.state.tenant_state import TenantStateMirror
from streams.app import LanewayApp

log = logging.getLogger(__name__)

RELEASE_EVERY_S = 0.1


class Router(Service):
    """Volume windows, rate contracts and lane assignment of the tenants this worker owns."""

    def __init__(
        self,
        app: LanewayApp,
        registry: TenantRegistry,
        tenant_states: TenantStateMirror,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.registry = registry
        self.tenant_states = tenant_states
        self.forwarder = Forwarder(app, registry)
        self.offsets = LaneOffsets(app)
        self.states = RouteStates(self.forwarder, tenant_states)
        recovery = Recovery(self.forwarder, self.offsets, tenant_states)
        self.reader = IngressReader(self.forwarder, self.states, recovery, tenant_states)
        self.replays = HoldReplays(self.forwarder, self.reader, self.states)
        self.lane_dlq = LaneDlq(self.forwarder, self.offsets)
        self.decisions = LaneDecisions(
            self.forwarder, self.reader, self.states, self.offsets, self.lane_dlq
        )
        self._wanted: set[int] | None = None  # ingress partitions to read, set by Faust's rebalance
        self.ready = asyncio.Event()
        app.on_partitions_assigned.connect(self._on_faust_assignment)  # type: ignore[arg-type]  # mode's receiver type is narrower than what it calls

    async def on_start(self) -> None:
        topics = self.app.topic_names
        lanes = topics.dedicated_lanes
        await self.app.declare(topics.ingress, topics.control, topics.shared_lane, lanes)
        self.forwarder.publisher.declared(topics.shared_lane, lanes)
        await self.offsets.start()
        await self.offsets.grow_dedicated_lanes()
        await self.reader.start()
        await self.tenant_states.ready.wait()
        self.ready.set()

    async def on_stop(self) -> None:
        await self.replays.stop()
        await self.reader.stop()
        await self.offsets.stop()

    async def _on_faust_assignment(self, sender: Any, assigned: set[Any], **_: Any) -> None:
        # Only noted here: the read loop applies it, so a rebalance never waits on a forward.
        shared_lane = self.app.topic_names.shared_lane
        self._wanted = {tp.partition for tp in assigned if tp.topic == shared_lane}

    def count_dlq(self, keys: Iterable[bytes]) -> None:
        """The shared lane's processor published DLQ records with these keys."""
        self.forwarder.count_dlq(keys)

    def state_document(self, tenant: str, now: float) -> dict[str, Any]:
        """The tenant's state, as published to the tenant-state topic."""
        return self.states.document(tenant, now)

    @Service.task
    async def _read_ingress(self) -> None:
        await self.ready.wait()
        await self.registry.ready.wait()
        while not self.should_stop:
            wanted, self._wanted = self._wanted, None
            if wanted is not None:
                await self.reader.take_partitions(wanted, self.replays.stop)
            if not self.reader.owned:
                await asyncio.sleep(FETCH_TIMEOUT_MS / 1000)
                continue
            await self.reader.read_once()

    @Service.timer(0.5)
    async def _evaluate(self) -> None:
        if not self.forwarder.enabled:
            return
        try:
            await self.decisions.evaluate(time.time())
        except Exception:  # a bug here must not stop the worker: lanes stay as they are
            log.exception("lane evaluation failed")

    @Service.timer(RELEASE_EVERY_S)
    async def _release_held(self) -> None:
        self.replays.release()

    @Service.timer(1.0)
    async def _persist(self) -> None:
        now = time.time()
        await self.lane_dlq.count(now)  # the lane workers' DLQ records, before publishing
        await self.states.persist(now)
