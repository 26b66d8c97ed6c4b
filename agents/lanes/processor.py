"""The processor agent: parse, validate, normalize and mask whatever a lane holds.

The same agent runs on every lane, with no per-tenant code: the shared worker runs it on
`laneway.lane.shared`, the lane worker on the dedicated lanes. Each lane record carries its
ingress origin in a header (see `agents.lanes.router`), so events look the same whichever lane
produced them. A record written straight to a lane, without that header, counts as its own
origin.

Offsets are acked only after a batch's outputs are acknowledged by Kafka (acks=all): a crash
redelivers rather than loses (invariant 1). The router reads these commits to know when a lane
has drained a tenant that moves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, Callable, Iterable, Mapping, Sequence
from typing import Any

from faust.types import TP, EventT, TopicT

from agents.state.publisher import BatchPublisher
from agents.state.registry import TenantRegistry
from streams.app import LanewayApp
from streams.batching import take_event_batches
from streams.gcra import Gcra
from streams.lanes import drain_share
from streams.masking import OutputShapers
from streams.processing import (
    IngressRecord,
    OutgoingRecord,
    incarnation_of,
    lane_record_origin,
    process_records,
    tenant_of_key,
)

log = logging.getLogger(__name__)

# Longest a batch waits for the tenant registry to catch up when it holds records of a tenant
# this worker does not know (just onboarded elsewhere): long enough for a mirror that is merely
# behind, short enough that the other tenants of the partition barely notice.
UNKNOWN_TENANT_WAIT_S = 2.0


class DrainPace:
    """The lane worker's pace: its share of the deployment's drain budget (`drain_share`), which
    follows the dedicated lanes Faust assigns it."""

    def __init__(self, app: LanewayApp, budget_per_s: float) -> None:
        self.budget_per_s = budget_per_s
        self.rate_per_s = 0.0  # nothing assigned yet, nothing to drain
        self._burst = app.laneway.batch_max
        self._lane_count = app.laneway.dedicated_lanes
        self._lanes = app.topic_names.dedicated_lanes
        self._gcra = Gcra(budget_per_s, self._burst)
        app.on_partitions_assigned.connect(self._on_assigned)  # type: ignore[arg-type]  # mode's receiver type is narrower than what it calls

    async def _on_assigned(self, sender: Any, assigned: set[TP], **_: Any) -> None:
        held = sum(1 for tp in assigned if tp.topic == self._lanes)
        self.rate_per_s = drain_share(self.budget_per_s, held, self._lane_count)
        if self.rate_per_s > 0:
            self._gcra.set_contract(self.rate_per_s, self._burst)
        log.info(
            "drain pace %.0f records/s: %d of %d dedicated lanes",
            self.rate_per_s,
            held,
            self._lane_count,
        )

    async def wait_for(self, records: int) -> None:
        """Hold a batch of `records` until the pace allows it."""
        await asyncio.sleep(self._gcra.admit(time.monotonic(), records))


def install(
    app: LanewayApp,
    registry: TenantRegistry,
    lanes: TopicT,
    name: str,
    on_dlq: Callable[[Iterable[bytes]], None] | None = None,
    drain_budget: float = 0.0,
) -> DrainPace | None:
    """Process the `lanes` topic(s); `on_dlq` hears the key of every DLQ record published.

    With a `drain_budget` (records/s, the deployment's) the agent holds each batch until its
    `DrainPace` allows it, so a flood's backlog leaves the CPU and the broker to the shared lane;
    it waits in Kafka. Returns the pace, if any.

    Faust acks a batch's offsets in a `finally` once the body moves on, so nothing may escape
    the body before the batch's outputs are published: `process_records` parks whatever it
    cannot process, and the publisher retries until Kafka has every output (or its DLQ record).
    """
    settings = app.laneway
    topics = app.topic_names
    publisher = BatchPublisher(app)
    shapers = OutputShapers(registry.directory, settings.mask_secret_bytes)
    pace = DrainPace(app, drain_budget) if drain_budget > 0 else None

    def unknown(record: IngressRecord) -> bool:
        """True for a tenant's record that no current tenant owns: the registry does not know
        its tenant (or it was deleted), or ingest stamped it for another incarnation of the id
        (one deleted and purged since, whose records were still waiting). A record without the
        stamp belongs to the tenant its key names."""
        tenant = tenant_of_key(record.key)
        if tenant is None:  # no tenant's record: processing parks it as such
            return False
        config = registry.directory.get(tenant)
        if config is None:
            return True
        return record.incarnation is not None and record.incarnation != config.incarnation

    @app.agent(lanes, name=name)
    async def process(stream: AsyncIterable[bytes]) -> None:
        await registry.ready.wait()  # tenants' output options first: never emit unmasked
        async for events in take_event_batches(stream, settings.batch_max, settings.batch_within_s):
            if pace is not None:
                await pace.wait_for(len(events))
            records = [_ingress_record(event) for event in events]
            if any(unknown(record) for record in records):
                # Perhaps only this worker's registry is behind (a tenant just onboarded
                # elsewhere): wait for it, bounded, before parking anything.
                await registry.caught_up(UNKNOWN_TENANT_WAIT_S)
            outputs = process_records(
                records,
                topics,
                shapers,
                unknown=unknown,
                max_value_bytes=settings.max_value_bytes,
            )
            await publisher.publish(outputs)
            _count_dlq(app, outputs, on_dlq)

    return pace


def _ingress_record(event: EventT) -> IngressRecord:
    """The ingress record a lane event stands for (itself, without an origin header)."""
    message = event.message
    # aiokafka delivers headers as (name, value) pairs; Faust's type also allows a mapping.
    raw_headers = message.headers or []
    headers = raw_headers.items() if isinstance(raw_headers, Mapping) else raw_headers
    origin = lane_record_origin(message.key, message.value, headers)
    return origin or IngressRecord(
        key=message.key,
        value=message.value,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=int(message.timestamp * 1000),
        incarnation=incarnation_of(headers),
    )


def _count_dlq(
    app: LanewayApp,
    outputs: Sequence[OutgoingRecord],
    on_dlq: Callable[[Iterable[bytes]], None] | None,
) -> None:
    dlq = [output for output in outputs if output.is_dlq]
    app.dlq_reasons.update(output.reason for output in dlq)
    if on_dlq is not None and dlq:
        try:
            on_dlq(output.key for output in dlq)
        except Exception:  # a counting bug must not escape the body: the batch is published
            log.exception("counting DLQ records failed")


def shared_lane(app: LanewayApp) -> TopicT:
    return app.laneway_topic(app.topic_names.shared_lane)


def dedicated_lanes(app: LanewayApp) -> TopicT:
    return app.laneway_topic(app.topic_names.dedicated_lanes)
