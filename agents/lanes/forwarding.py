"""The router's hot path and the routing state its parts share.

`Forwarder` counts each ingress record for its tenant, asks the tenant's route whether the
record waits (a cut or a pause: `streams.cutover.TenantRoutes.hold`) and, if not, forwards it to
the tenant's lane. Per record: a dict lookup and a few additions, no I/O, no table write.
Volumes count by the record's ingress timestamp, so a backlog read late (after a restart) is not
mistaken for a flood.

It owns what the router's other parts read and change: the volume windows, the lanes, the
routes, the lane marks of the ingress commits and the records found forwarded before a restart;
and the forwarding lock, under which the read loop, a replay's last stretch and a cut's
completion take turns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from aiokafka.partitioner import DefaultPartitioner

from agents.state.publisher import BatchPublisher
from agents.state.registry import TenantRegistry
from streams.app import LanewayApp
from streams.cutover import LaneMarks, LanePartition, LanePosition, Reforwarded, TenantRoutes
from streams.lanes import LaneAssignments
from streams.processing import (
    INTERNAL_ERROR,
    IngressRecord,
    Origin,
    OutgoingRecord,
    forward_to_lane,
    internal_error,
    park,
    tenant_of_key,
)
from streams.route_records import servable_lane
from streams.volume import TenantVolumes

log = logging.getLogger(__name__)


class Forwarder:
    """Routes ingress records to their tenants' lanes and keeps what that needs."""

    def __init__(self, app: LanewayApp, registry: TenantRegistry) -> None:
        self.app = app
        self.registry = registry
        self.topics = app.topic_names
        settings = app.laneway
        self.enabled = settings.lanes_enabled
        self.dedicated_lanes = settings.dedicated_lanes
        self.volumes = TenantVolumes()
        self.lanes = LaneAssignments(settings.dedicated_lanes)
        # Cuts, holds, the last forward per tenant and the ingress offsets safe to commit.
        self.routes = TenantRoutes(self.lanes)
        # Stored with each ingress commit, read back after a crash: no forward made twice.
        self.marks = LaneMarks()
        self.reforwarded = Reforwarded()
        self.publisher = BatchPublisher(app)
        self.active: set[str] = set()  # tenants with records since the last state publication
        self.lock = asyncio.Lock()  # the read loop, replays and cut completions take turns
        self._tenant_names: dict[bytes, str | None] = {}
        self._partitioner = DefaultPartitioner()
        self._partitions = list(range(settings.ingress_partitions))

    # ---------------------------------------------------------------- hot path

    def route_contained(self, record: IngressRecord, now: float) -> OutgoingRecord | None:
        """`route`, but a record it cannot route (a bug) goes to the unrouted DLQ, counted,
        and the partition moves on."""
        try:
            return self.route(record, now)
        except Exception as error:
            log.error("routing an ingress record failed (%s): parked", type(error).__name__)
            self.app.dlq_reasons[INTERNAL_ERROR] += 1
            error_code = internal_error(error)
            max_bytes = self.app.laneway.max_value_bytes
            return park(Origin(record), self.topics, error_code, max_bytes, unrouted=True)

    def route(self, record: IngressRecord, now: float) -> OutgoingRecord | None:
        """Count the record for its tenant and return its forward, or None when it is held
        because the tenant is being cut over to another lane or is paused."""
        tenant = self.tenant_of(record.key or b"")
        if tenant is not None:  # not a tenant: the shared lane DLQs it
            sent_at = min(record.timestamp_ms / 1000, now)
            self.volumes.record(tenant, sent_at, len(record.value or b""))
            self.active.add(tenant)
            if self.routes.hold(tenant, record, paused=self.paused(tenant)):
                return None
        return self.forward_record(tenant, record)

    def tenant_of(self, key: bytes) -> str | None:
        """The tenant a record key names (memoized: the key is all the hot path has)."""
        tenant = self._tenant_names.get(key, "")
        if tenant == "":
            tenant = self._tenant_names[key] = tenant_of_key(key)
        return tenant

    def forward_record(self, tenant: str | None, record: IngressRecord) -> OutgoingRecord:
        """The record's forward to its tenant's lane now."""
        lane = self.lanes.lane_of(tenant) if tenant is not None and self.enabled else None
        lane = servable_lane(lane, self.dedicated_lanes)
        if lane is None:
            return forward_to_lane(record, self.topics.shared_lane, record.partition)
        return forward_to_lane(record, self.topics.dedicated_lanes, lane)

    async def forward(self, forwards: list[OutgoingRecord]) -> None:
        """Publish the forwards (acks=all) and note where each tenant's last one went."""
        if not forwards:
            return
        last_offsets = await self.publisher.publish(forwards)
        for forward in forwards:
            tenant = self._tenant_names.get(forward.key)
            destination = (forward.topic, forward.partition)
            if not forward.is_dlq and destination in last_offsets:
                self.marks.written(destination, last_offsets[destination] + 1)
            # A record parked in a DLQ (by the router or, refused, by the publisher) is nothing
            # for a lane to drain.
            if tenant and not forward.is_dlq and destination in last_offsets:
                self.routes.forwarded(tenant, LanePosition(*destination, last_offsets[destination]))

    def count_dlq(self, keys: Iterable[bytes]) -> None:
        """The shared lane's processor published DLQ records with these keys."""
        now = time.time()
        for key in keys:
            tenant = self._tenant_names.get(key)
            if tenant:
                self.volumes.record_dlq(tenant, now)

    # ---------------------------------------------------------------- tenants

    def paused(self, tenant: str) -> bool:
        config = self.registry.directory.get(tenant)
        return config is not None and config.paused

    def partition_of(self, tenant: str) -> int:
        """The tenant's ingress partition, as producers compute it."""
        return int(self._partitioner(tenant.encode(), self._partitions, self._partitions))

    def lanes_of(self, tenant: str) -> list[LanePartition]:
        """The lane partitions the tenant may have records in: its shared-lane partition, its
        dedicated lane, and the lanes of a cut in progress."""
        dedicated = {self.lanes.lane_of(tenant)}
        cut = self.routes.cut_of(tenant)
        if cut is not None:
            dedicated |= {cut.from_lane, cut.to_lane}
        shared = (self.topics.shared_lane, self.partition_of(tenant))
        lanes = sorted(lane for lane in dedicated if lane is not None)
        return [shared, *((self.topics.dedicated_lanes, lane) for lane in lanes)]

    def forget(self, tenant: str) -> None:
        """Drop the tenant's volumes and route: another router owns it now."""
        self.volumes.forget(tenant)
        self.routes.forget(tenant)
        self.active.discard(tenant)
