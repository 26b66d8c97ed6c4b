"""CLI commands added to `faust -A agents.worker …`. Importing this module registers them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click
from faust.cli import AppCommand, argument, option

from agents import demo
from streams.app import LanewayApp
from streams.topics import is_valid_tenant_id


def _tenant_option(value: str) -> str:
    if not is_valid_tenant_id(value):
        raise click.BadParameter("a tenant id is 1-64 lower-case letters, digits and inner hyphens")
    return value


@AppCommand.from_handler(
    option("--tenant", required=True, callback=lambda _ctx, _param, v: _tenant_option(v)),
    argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False)),
)
async def send_hl7(self: AppCommand, tenant: str, files: tuple[str, ...], **_: Any) -> None:
    """Write HL7 files to the ingress topic for TENANT, one ingress record per file."""
    app: LanewayApp = self.app  # type: ignore[assignment]
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
    app: LanewayApp = self.app  # type: ignore[assignment]
    await demo.run(
        app, tenants=tenants, rate=rate, seconds=seconds, bad_every=bad_every, say=self.say
    )
