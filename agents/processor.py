"""Processor agents: the same HL7 processing for every lane, no per-tenant code.

- The shared worker's agent consumes `laneway.ingress`. The router measures every record; records
  of tenants in the shared lane are processed right there, records of tenants in a dedicated
  lane are forwarded, unchanged, to `laneway.lane.dedicated.N`. Processing the shared lane in the
  same pass saves a Kafka hop for the common case.
- The lane worker's agent consumes the dedicated lanes and processes their records with the
  origin carried in a header, so events look the same whichever lane produced them.

Offsets are acked only after a batch's outputs are acknowledged by Kafka (acks=all): a crash
redelivers rather than loses (invariant 1).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable

from faust.types import EventT

from agents.publisher import OutputPublisher
from agents.registry import TenantRegistry
from agents.router import HOLD, Router
from streams.app import LanewayApp
from streams.masking import OutputShapers, load_mask_secret
from streams.processing import (
    IngressRecord,
    OutputRecord,
    forward_to_lane,
    lane_record_origin,
    process_ingress_record,
)

RELEASE_EVERY_S = 0.1


def install_shared(app: LanewayApp, router: Router) -> None:
    """The ingress agent of the shared worker: measure, route, process the shared lane."""
    settings = app.laneway
    topics = app.topic_names
    publisher = OutputPublisher(app)
    shapers = OutputShapers(router.registry.directory, load_mask_secret())

    # The agent and the release timer both publish; one at a time keeps per-tenant order.
    publishing = asyncio.Lock()

    async def publish(outputs: list[OutputRecord], forwards: list[OutputRecord]) -> None:
        # Outputs first: a tenant promoted during this batch's publish has its earlier
        # messages emitted before any of its later ones reach the dedicated lane.
        await publisher.publish(outputs)
        router.count_dlq(output.key for output in outputs if output.is_dlq)
        if forwards:
            router.forwarded(forwards, await publisher.publish(forwards))

    def route(record: IngressRecord, lane: int | None, outputs: list, forwards: list) -> None:
        if lane is None:
            outputs.extend(process_ingress_record(record, topics, shapers))
        else:
            forwards.append(forward_to_lane(record, topics.dedicated_lane(lane)))

    @app.agent(app.ingress_topic(), name="laneway.shared")
    async def shared_lane(stream: AsyncIterable[bytes]) -> None:
        # Lanes restored from the tenant-state topic must be known before the first record, and
        # every tenant's output options (thin, masks): an event is never emitted unmasked.
        await router.ready.wait()
        await router.registry.ready.wait()
        async for events in stream.take_events(  # type: ignore[attr-defined]
            settings.batch_max, within=settings.batch_within_s
        ):
            async with publishing:
                now = time.time()
                outputs: list[OutputRecord] = []
                forwards: list[OutputRecord] = []
                for event in events:
                    record = _ingress_record(event)
                    lane = router.route(record, now)
                    if lane == HOLD:
                        # An extra reference keeps the offset uncommitted after this batch.
                        event.message.incref()
                        router.hold(record, (event, record))
                    else:
                        route(record, lane, outputs, forwards)
                await publish(outputs, forwards)

    @app.timer(RELEASE_EVERY_S)
    async def release_held() -> None:
        """Send the records held during a cut, once the old lane has drained the tenant."""
        async with publishing:
            released = router.take_released()
            if not released:
                return
            outputs: list[OutputRecord] = []
            forwards: list[OutputRecord] = []
            for lane, items in released:
                for _, record in items:
                    route(record, lane, outputs, forwards)
            await publish(outputs, forwards)
            for _, items in released:
                for event, _ in items:
                    event.ack()


def install_lanes(app: LanewayApp, registry: TenantRegistry) -> None:
    """The agent of the lane worker: process whatever the router forwarded to the pool."""
    settings = app.laneway
    topics = app.topic_names
    publisher = OutputPublisher(app)
    shapers = OutputShapers(registry.directory, load_mask_secret())
    lanes = app.topic(
        *(topics.dedicated_lane(lane) for lane in range(settings.dedicated_lanes)),
        key_type=bytes,
        value_type=bytes,
        partitions=1,  # one partition per lane: a tenant's records stay in order
        internal=True,
    )

    @app.agent(lanes, name="laneway.dedicated")
    async def dedicated_lanes(stream: AsyncIterable[bytes]) -> None:
        await registry.ready.wait()  # tenants' output options first: never emit unmasked
        async for events in stream.take_events(  # type: ignore[attr-defined]
            settings.batch_max, within=settings.batch_within_s
        ):
            outputs: list[OutputRecord] = []
            for event in events:
                message = event.message
                origin = lane_record_origin(message.key, message.value, message.headers or [])
                record = origin or _ingress_record(event)
                outputs.extend(process_ingress_record(record, topics, shapers))
            await publisher.publish(outputs)


def _ingress_record(event: EventT) -> IngressRecord:
    message = event.message
    return IngressRecord(
        key=message.key,
        value=message.value,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=int(message.timestamp * 1000),
    )
