"""CLI commands added to `faust -A agents.worker …`. Importing this module registers them."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any, BinaryIO, cast

import click
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faust.cli import AppCommand, argument, option

from agents import demo
from agents.state.topic_admin import existing_topics
from streams.app import LanewayApp
from streams.topics import is_valid_tenant_id

TOPIC_POLL_S = 1.0  # `consume --follow` of a tenant without records: how often it looks


def _tenant_option(value: str) -> str:
    if not is_valid_tenant_id(value):
        raise click.BadParameter("a tenant id is 1-64 lower-case letters, digits and inner hyphens")
    return value


@AppCommand.from_handler(
    option("--tenant", required=True, callback=lambda _ctx, _param, v: _tenant_option(v)),
    argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False)),
)
async def send_hl7(self: AppCommand, tenant: str, files: tuple[str, ...], **_: Any) -> None:
    """Write HL7 files to the ingress topic for TENANT (onboarded: records of unknown tenants
    are parked in the unrouted DLQ), one ingress record per file."""
    app = cast(LanewayApp, self.app)
    producer = await app.maybe_start_producer()
    await app.declare_ingress()
    for file in files:
        payload = await asyncio.to_thread(Path(file).read_bytes)
        metadata = await producer.send_and_wait(
            app.topic_names.ingress, tenant.encode(), payload, None, None, None
        )
        self.say(f"{file}: {len(payload)} bytes -> ingress {metadata.partition}:{metadata.offset}")


@AppCommand.from_handler(
    option("--tenants", default=3, show_default=True, help="How many demo tenants send."),
    option("--rate", default=20.0, show_default=True, help="Messages per second per tenant."),
    option("--seconds", default=0.0, show_default=True, help="Stop after this long; 0 = forever."),
    option(
        "--bad-every",
        default=25,
        show_default=True,
        help="Every Nth message is malformed, to show the DLQ path; 0 = never.",
    ),
)
async def demo_traffic(
    self: AppCommand, tenants: int, rate: float, seconds: float, bad_every: int, **_: Any
) -> None:
    """Send synthetic HL7 traffic from demo tenants and print what arrives downstream."""
    app = cast(LanewayApp, self.app)
    await demo.run(
        app, tenants=tenants, rate=rate, seconds=seconds, bad_every=bad_every, say=self.say
    )


@AppCommand.from_handler(
    option("--tenant", required=True, callback=lambda _ctx, _param, v: _tenant_option(v)),
    option("--from-beginning", is_flag=True, help="Start at the oldest retained record."),
    option("--follow", is_flag=True, help="Keep printing new records until Ctrl-C."),
    option("--dlq", is_flag=True, help="Read the tenant's DLQ records instead of its events."),
)
async def consume(
    self: AppCommand, tenant: str, from_beginning: bool, follow: bool, dlq: bool, **_: Any
) -> None:
    """Print TENANT's events (or DLQ records) as JSON lines on stdout.

    Reading starts at the end of the topic (only new records), or at the oldest retained record
    with --from-beginning. Without --follow it stops at the end offsets seen at start.
    """
    app = cast(LanewayApp, self.app)
    topic = app.topic_names.dlq(tenant) if dlq else app.topic_names.out(tenant)
    await _print_records(
        app.laneway.bootstrap_servers,
        topic,
        from_beginning=from_beginning,
        follow=follow,
        out=sys.stdout.buffer,
    )


async def _topic_exists(bootstrap_servers: list[str], topic: str, *, wait: bool) -> bool:
    """True if `topic` exists; with `wait`, once it does (asked every `TOPIC_POLL_S`)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        while not await existing_topics(admin, [topic]):
            if not wait:
                return False
            await asyncio.sleep(TOPIC_POLL_S)
        return True
    finally:
        await admin.close()


async def _print_records(
    bootstrap_servers: list[str], topic: str, *, from_beginning: bool, follow: bool, out: BinaryIO
) -> None:
    """Write each record's value (a JSON document) as one line to `out`."""
    # No consumer group: reading for a look commits nothing and disturbs no real consumer.
    if not await _topic_exists(bootstrap_servers, topic, wait=False):
        # A tenant's topics come with its first records (agents.state.publisher).
        print(f"no records yet: {topic} comes with the tenant's first one", file=sys.stderr)
        if not follow:
            return
        await _topic_exists(bootstrap_servers, topic, wait=True)
        from_beginning = True  # every record of a topic that appeared since is new
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)  # tenant topics have one partition: one order
        consumer.assign([partition])
        if from_beginning:
            await consumer.seek_to_beginning(partition)
        else:
            await consumer.seek_to_end(partition)
        end = None if follow else (await consumer.end_offsets([partition]))[partition]
        while end is None or await consumer.position(partition) < end:
            batch = await consumer.getmany(partition, timeout_ms=500)
            for record in batch.get(partition, []):
                if end is not None and record.offset >= end:
                    break
                if record.value is not None:
                    out.write(record.value + b"\n")
            out.flush()  # a pipe (e.g. into jq) sees each batch as it arrives
    finally:
        await consumer.stop()
