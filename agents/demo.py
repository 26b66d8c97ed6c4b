"""Demo traffic for `make run`: synthetic HL7 from a few tenants, and a live tally downstream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import click
from aiokafka import AIOKafkaConsumer

from streams.app import LanewayApp
from streams.hl7.synthetic import SyntheticFeed, malformed

REPORT_EVERY_S = 5.0
# The second demo tenant floods for 15 s, 30 s in and then every 5 minutes, so `make run` shows
# a move to a dedicated lane and, after the 120 s hold-down, back.
BURST_START_S = 30.0
BURST_EVERY_S = 300.0
BURST_SECONDS = 15.0
BURST_FACTOR = 25


@dataclass(frozen=True, slots=True)
class DemoTenant:
    tenant_id: str
    name: str
    sending_application: str
    sending_facility: str


DEMO_TENANTS = (
    DemoTenant("st-marys", "St Mary's Hospital", "EPIC", "STMARYS"),
    DemoTenant("northside-lab", "Northside Lab", "SUNQUEST", "NORTHLAB"),
    DemoTenant("riverside-clinic", "Riverside Clinic", "ATHENA", "RIVERSIDE"),
)


def demo_tenants(count: int) -> list[DemoTenant]:
    extra = [
        DemoTenant(f"demo-{n}", f"Demo {n}", f"APP{n}", f"FACILITY{n}")
        for n in range(len(DEMO_TENANTS), count)
    ]
    return [*DEMO_TENANTS[:count], *extra]


async def run(
    app: LanewayApp,
    *,
    tenants: int,
    rate: float,
    seconds: float,
    bad_every: int,
    say: Callable[[str], None],
) -> None:
    """Send at `rate` msg/s per tenant and report per-tenant arrivals every few seconds."""
    run_tag = uuid.uuid4().hex[:6].upper()
    members = demo_tenants(tenants)
    tally = _Tally()
    consumer = asyncio.create_task(_follow_outputs(app, members, tally))
    lane_moves = asyncio.create_task(_follow_lane_moves(app, say))
    try:
        await _send(app, members, run_tag, rate, seconds, bad_every, tally, say)
        say("demo traffic finished; waiting briefly for the last events")
        tally.sending_done()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tally.caught_up.wait(), timeout=10.0)
        say(tally.report(members))
    finally:
        consumer.cancel()
        lane_moves.cancel()


class _Tally:
    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.message_types: dict[str, Counter[str]] = {}
        self.caught_up = asyncio.Event()
        self._sending_done = False

    def sending_done(self) -> None:
        self._sending_done = True
        self._check_caught_up()

    def count_event(self, tenant: str, message_type: str) -> None:
        self.events[tenant] += 1
        self.message_types.setdefault(tenant, Counter())[message_type] += 1
        self._check_caught_up()

    def count_rejected(self, tenant: str) -> None:
        self.rejected[tenant] += 1
        self._check_caught_up()

    def _check_caught_up(self) -> None:
        if self._sending_done and self.arrived() >= self.sent_total():
            self.caught_up.set()

    def sent_total(self) -> int:
        return sum(self.sent.values())

    def arrived(self) -> int:
        return sum(self.events.values()) + sum(self.rejected.values()) + sum(self.refused.values())

    def report(self, members: list[DemoTenant]) -> str:
        lines = []
        for member in members:
            tenant = member.tenant_id
            types = ", ".join(
                f"{kind} {count}" for kind, count in self.message_types.get(tenant, {}).items()
            )
            lines.append(
                f"  {tenant:<18} sent {self.sent[tenant]:>6}  refused {self.refused[tenant]:>3}"
                f"  events {self.events[tenant]:>6}  dlq {self.rejected[tenant]:>4}  [{types}]"
            )
        return "\n".join(lines)


async def _send(
    app: LanewayApp,
    members: list[DemoTenant],
    run_tag: str,
    rate: float,
    seconds: float,
    bad_every: int,
    tally: _Tally,
    say: Callable[[str], None],
) -> None:
    """Onboard the demo tenants through the admin API, then post their traffic over HTTP."""
    feeds = {
        member.tenant_id: SyntheticFeed(
            seed=index,
            sending_application=member.sending_application,
            sending_facility=member.sending_facility,
            control_id_prefix=f"{run_tag}-",
        )
        for index, member in enumerate(members)
    }
    rng = random.Random(0)
    interval = 1.0 / rate
    async with aiohttp.ClientSession(base_url=_web_url(app)) as http:
        tokens = {member.tenant_id: await _onboard(http, app, member, say) for member in members}
        started = next_report = time.monotonic()
        tick = 0
        while not seconds or time.monotonic() - started < seconds:
            tick += 1
            elapsed = time.monotonic() - started
            flooding = (
                elapsed >= BURST_START_S
                and (elapsed - BURST_START_S) % BURST_EVERY_S < BURST_SECONDS
            )
            for index, (tenant, feed) in enumerate(feeds.items()):
                # Every Nth message has a broken body: accepted at ingest, parked in the DLQ.
                bad = bad_every and tick % bad_every == 0
                if bad:
                    payload = malformed(rng, "bad_segment").payload
                elif flooding and index == 1:
                    payload = b"".join(feed.next_message() for _ in range(BURST_FACTOR))
                else:
                    payload = feed.next_message()
                async with http.post(
                    f"/api/tenants/{tenant}/messages",
                    data=payload,
                    headers={
                        "Authorization": f"Bearer {tokens[tenant]}",
                        "Content-Type": "application/hl7-v2",
                    },
                ) as response:
                    answer = await response.json()
                    tally.sent[tenant] += answer.get("accepted", 0) + answer.get("rejected", 1)
                    tally.refused[tenant] += answer.get("rejected", 1)
            if time.monotonic() >= next_report:
                next_report += REPORT_EVERY_S
                say(f"[{time.monotonic() - started:6.0f}s] per-tenant flow downstream:")
                say(tally.report(members))
            # Open loop: sleep to the next tick's intended time, so pacing does not drift.
            await asyncio.sleep(max(0.0, started + tick * interval - time.monotonic()))


def _web_url(app: LanewayApp) -> str:
    return f"http://127.0.0.1:{app.laneway.web_port}"


async def _onboard(
    http: aiohttp.ClientSession, app: LanewayApp, member: DemoTenant, say: Callable[[str], None]
) -> str:
    """The tenant's HTTP token: onboard it, or give the existing tenant a fresh token."""
    if app.laneway.admin_token is None:
        raise click.UsageError("demo-traffic needs LANEWAY_ADMIN_TOKEN to onboard its tenants")
    admin = {"Authorization": f"Bearer {app.laneway.admin_token.get_secret_value()}"}
    tenant = member.tenant_id
    body = {
        "id": tenant,
        "name": member.name,
        "senders": [
            {"application": member.sending_application, "facility": member.sending_facility}
        ],
    }
    async with http.post("/api/tenants", json=body, headers=admin) as response:
        answer = await response.json()
        if response.status == 201:
            say(f"onboarded tenant {tenant} (POST /api/tenants -> 201)")
            return str(answer["token"])
        if response.status != 409:
            raise click.ClickException(f"onboarding {tenant} failed: {response.status} {answer}")
    async with http.post(f"/api/tenants/{tenant}/token", headers=admin) as response:
        answer = await response.json()
        if response.status != 200:
            raise click.ClickException(f"token for {tenant} failed: {response.status} {answer}")
        return str(answer["token"])


async def _follow_outputs(app: LanewayApp, members: list[DemoTenant], tally: _Tally) -> None:
    # A pattern, not a topic list: the output topics appear only once the first event is written.
    prefix = re.escape(app.topic_names.prefix)
    tenants = "|".join(re.escape(m.tenant_id) for m in members)
    # From the beginning, so events written before the subscription settles are counted too;
    # records older than this demo run are skipped by timestamp.
    started_ms = int(time.time() * 1000)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=app.laneway.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        metadata_max_age_ms=1000,
    )
    consumer.subscribe(pattern=f"^{prefix}(out|dlq)\\.({tenants})$")
    await consumer.start()
    try:
        async for record in consumer:
            if record.timestamp < started_ms:
                continue
            document = json.loads(record.value)
            tenant = document["tenant"]
            if "reason" in document:
                tally.count_rejected(tenant)
            else:
                tally.count_event(tenant, document["message_type"])
    finally:
        await consumer.stop()


async def _follow_lane_moves(app: LanewayApp, say: Callable[[str], None]) -> None:
    """Print every lane move the router records on the control topic during the demo."""
    consumer = AIOKafkaConsumer(
        app.topic_names.control,
        bootstrap_servers=app.laneway.bootstrap_servers,
        auto_offset_reset="latest",
        enable_auto_commit=False,
        metadata_max_age_ms=1000,
    )
    await consumer.start()
    try:
        async for record in consumer:
            move = json.loads(record.value)
            target = "shared" if move["to"] is None else f"dedicated.{move['to']}"
            say(f"** lane move: {move['tenant']} -> {target} ({move['reason']})")
    finally:
        await consumer.stop()
