"""Ingest per message on the real worker and broker: MSH-15/16 acknowledgments, frames and
bodies of several messages, their order, and oversize messages (docs/ingest.md).

Every test runs a quiet, well-behaved tenant on the same ingress partition as the faulty one,
sending stop-and-wait over MLLP for as long as the faulty input lasts: it must keep getting AA,
and its events must reach its out topic within a few seconds. The faulty input must be
accounted for: refused with a reason, or in out/DLQ exactly once. Synthetic data only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner

from streams.mllp import frame
from streams.topics import TopicNames
from tests.harness import Ack, Api, Sender, WorkerProcess, connection, consume_until, message

pytestmark = pytest.mark.integration

# How soon a quiet tenant's event must be in its out topic after its AA.
QUIET_ARRIVAL_S = 10.0
ARRIVAL_TIMEOUT_S = 60.0
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # the session worker keeps the default contract
_partitioner = DefaultPartitioner()


def oversize(sender: Sender, control_id: str) -> bytes:
    """A message 1 MiB over the default size contract (and the default MLLP frame limit)."""
    note = b"OBX|1|TX|NOTE||" + b"X" * (DEFAULT_MAX_MESSAGE_BYTES + (1 << 20)) + b"\r"
    return message(sender, control_id) + note


@dataclass(frozen=True)
class Onboarded:
    id: str
    sender: Sender
    token: str


@dataclass
class Quiet:
    """What the quiet neighbour sent and heard."""

    tenant: Onboarded
    sent: list[str] = field(default_factory=list)
    acked_at: dict[str, float] = field(default_factory=dict)
    acks: list[Ack] = field(default_factory=list)


@dataclass(frozen=True)
class Scene:
    """The session worker as the tests here use it: its API, MLLP port, topics and broker."""

    api: Api
    port: int
    topics: TopicNames
    bootstrap: str
    partitions: int

    def partition_of(self, tenant_id: str) -> int:
        """The ingress partition of a tenant: its id is the record key."""
        every = list(range(self.partitions))
        return int(_partitioner(tenant_id.encode(), every, every))

    async def onboard(
        self, name: str, *, partition: int | None = None, **fields: object
    ) -> Onboarded:
        """A tenant with an MLLP identity of its own, on `partition` of ingress when given."""
        while True:
            suffix = uuid.uuid4().hex[:8]
            tenant_id = f"{name}-{suffix}"
            if partition is None or self.partition_of(tenant_id) == partition:
                break
        sender = Sender(f"APP-{suffix.upper()}", f"FAC-{suffix.upper()}")
        fields = {"rate_per_s": 10_000, "burst": 20_000, **fields}
        answer = await self.api.onboard(
            tenant_id,
            senders=[{"application": sender.application, "facility": sender.facility}],
            **fields,
        )
        return Onboarded(answer["id"], sender, answer["token"])

    async def send(self, tenant: Onboarded, body: bytes) -> tuple[int, Any]:
        """POST `body` to the tenant's HTTP ingest with its token: (status, JSON answer)."""
        return await self.api.send(tenant.id, tenant.token, body)

    async def admin_post(self, tenant: Onboarded, action: str) -> None:
        status, answer = await self.api.call(
            "POST", f"/api/tenants/{tenant.id}/{action}", token=self.api.admin_token
        )
        assert status == 200, answer

    @contextlib.asynccontextmanager
    async def quiet_beside(self, faulty: Onboarded) -> AsyncIterator[Quiet]:
        """A well-behaved tenant on the faulty one's ingress partition, stop-and-wait over
        MLLP while the body runs (at least 10 messages); then asserts that every message got
        AA and reached out in time."""
        tenant = await self.onboard("quiet", partition=self.partition_of(faulty.id))
        quiet = Quiet(tenant)
        faults_done = asyncio.Event()

        async def send() -> None:
            async with connection(self.port) as client:
                while len(quiet.sent) < 10 or not faults_done.is_set():
                    control_id = f"QUIET-{len(quiet.sent):04d}"
                    quiet.acks.append(await client.exchange(message(tenant.sender, control_id)))
                    quiet.acked_at[control_id] = time.monotonic()
                    quiet.sent.append(control_id)
                    await asyncio.sleep(0.05)  # a steady trickle, not a flood

        sender = asyncio.create_task(send())
        try:
            yield quiet
        finally:
            faults_done.set()
            await sender
        assert [(ack.code, ack.acked_id) for ack in quiet.acks] == [("AA", c) for c in quiet.sent]
        records = await consume_until(
            self.bootstrap,
            [self.topics.out(tenant.id)],
            lambda got: len(got) >= len(quiet.sent),
            ARRIVAL_TIMEOUT_S,
        )
        arrived_at = time.monotonic()
        assert [json.loads(record.value)["control_id"] for record in records] == quiet.sent
        # Read after the fact, so this bounds the lateness of the last one; the earlier ones
        # arrived before it (the topic keeps order).
        last = quiet.sent[-1]
        assert arrived_at - quiet.acked_at[last] < QUIET_ARRIVAL_S, "the quiet tenant waited"

    async def accounted(self, tenant: Onboarded, marker: str) -> tuple[list[str], list[str]]:
        """Control ids in the tenant's out and DLQ topics, read until `marker` is in out: as
        the tenant's last message, everything sent before it is in by then."""
        out_topic = self.topics.out(tenant.id)

        def has_marker(records: list) -> bool:
            return any(
                r.topic == out_topic and json.loads(r.value)["control_id"] == marker
                for r in records
            )

        records = await consume_until(
            self.bootstrap, [out_topic, self.topics.dlq(tenant.id)], has_marker, ARRIVAL_TIMEOUT_S
        )
        assert has_marker(records), f"the marker {marker} never arrived"
        values = [(r.topic, json.loads(r.value).get("control_id")) for r in records]
        out = [control_id for topic, control_id in values if topic == out_topic]
        dlq = [control_id for topic, control_id in values if topic != out_topic]
        return out, dlq


@pytest.fixture
def scene(api: Api, worker_env: dict, bootstrap: str) -> Scene:
    return Scene(
        api,
        int(worker_env["LANEWAY_MLLP_PORT"]),
        TopicNames(worker_env["LANEWAY_TOPIC_PREFIX"]),
        bootstrap,
        int(worker_env["LANEWAY_INGRESS_PARTITIONS"]),
    )


# --- MLLP ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msh_15_16", "expected"),
    [(("NE", "AL"), ["AA"]), (("ER", "AL"), ["AA"]), (("AL", "AL"), ["CA", "AA"])],
    ids=["NE-AL", "ER-AL", "AL-AL"],
)
async def test_enhanced_mode_senders_get_exactly_the_acks_they_ask_for(
    scene: Scene,
    worker: WorkerProcess,
    msh_15_16: tuple[str, str],
    expected: list[str],
) -> None:
    accept, application = msh_15_16
    tenant = await scene.onboard("enhanced")
    async with (
        scene.quiet_beside(tenant),
        connection(scene.port) as client,
    ):
        payload = message(tenant.sender, "ENH-1", accept_ack=accept, application_ack=application)
        await client.send(payload)
        acks = [await client.ack() for _ in expected]  # each within the ACK deadline: no hang
        # Nothing more for it: the next answer on the connection is the marker's.
        marker = await client.exchange(message(tenant.sender, "ENH-MARKER"))

    assert [(ack.code, ack.acked_id) for ack in acks] == [(code, "ENH-1") for code in expected]
    assert len({ack.msh[10] for ack in acks}) == len(acks), "two ACKs share one MSH-10"
    assert (marker.code, marker.acked_id) == ("AA", "ENH-MARKER")
    out, dlq = await scene.accounted(tenant, "ENH-MARKER")
    assert (out, dlq) == (["ENH-1", "ENH-MARKER"], []), worker.log_tail()


async def test_a_frame_of_three_messages_gets_an_ack_and_a_record_each(scene: Scene) -> None:
    tenant = await scene.onboard("frame")
    control_ids = ["FRAME-1", "FRAME-2", "FRAME-3"]
    async with (
        scene.quiet_beside(tenant),
        connection(scene.port) as client,
    ):
        await client.send_raw(frame(b"".join(message(tenant.sender, c) for c in control_ids)))
        acks = [await client.ack() for _ in control_ids]
        marker = await client.exchange(message(tenant.sender, "FRAME-MARKER"))

    assert [(ack.code, ack.acked_id) for ack in acks] == [("AA", c) for c in control_ids]
    assert marker.code == "AA"
    out, dlq = await scene.accounted(tenant, "FRAME-MARKER")
    assert (out, dlq) == ([*control_ids, "FRAME-MARKER"], [])


async def test_a_frame_mixing_two_tenants_is_refused_whole_and_nothing_is_written(
    scene: Scene,
) -> None:
    tenant = await scene.onboard("mixer")
    victim = await scene.onboard("victim")
    async with (
        scene.quiet_beside(tenant),
        connection(scene.port) as client,
    ):
        mixed = message(tenant.sender, "MIX-1") + message(victim.sender, "MIX-2")
        await client.send_raw(frame(mixed))
        acks = [await client.ack() for _ in range(2)]
        own_marker = await client.exchange(message(tenant.sender, "MIX-MARKER"))
        victim_marker = await client.exchange(message(victim.sender, "VICTIM-MARKER"))

    assert [(ack.code, ack.acked_id, ack.has_err) for ack in acks] == [
        ("AR", "MIX-1", True),
        ("AR", "MIX-2", True),
    ]
    assert (own_marker.code, victim_marker.code) == ("AA", "AA")
    assert await scene.accounted(tenant, "MIX-MARKER") == (["MIX-MARKER"], [])
    assert await scene.accounted(victim, "VICTIM-MARKER") == (["VICTIM-MARKER"], [])


async def test_an_oversize_mllp_message_gets_ae_naming_the_limit(scene: Scene) -> None:
    tenant = await scene.onboard("huge-mllp")
    huge = oversize(tenant.sender, "HUGE-MLLP")
    async with scene.quiet_beside(tenant):
        async with connection(scene.port) as client:
            await client.send(huge)
            client.finish_sending()
            answers = await client.acks_until_closed()
        async with connection(scene.port) as client:
            marker = await client.exchange(message(tenant.sender, "HUGE-MARKER"))

    assert [(ack.code, ack.acked_id, ack.has_err) for ack in answers] == [("AE", "HUGE-MLLP", True)]
    assert f"exceeds the {DEFAULT_MAX_MESSAGE_BYTES}-byte limit" in answers[0].msa[3]
    assert marker.code == "AA"
    assert await scene.accounted(tenant, "HUGE-MARKER") == (["HUGE-MARKER"], [])


# --- HTTP ---------------------------------------------------------------------------------------


async def test_an_http_body_keeps_order_after_a_refused_message(scene: Scene) -> None:
    tenant = await scene.onboard("order")
    bad = message(tenant.sender, "ORDER-2", version="2.9")  # unsupported version
    body = message(tenant.sender, "ORDER-1") + bad + message(tenant.sender, "ORDER-3")
    async with scene.quiet_beside(tenant):
        status, answer = await scene.send(tenant, body)
        marker_status, _ = await scene.send(tenant, message(tenant.sender, "ORDER-MARKER"))

    assert status == 207
    assert (answer["accepted"], answer["rejected"]) == (1, 2)
    results = answer["results"]
    assert [(r["control_id"], r["status"], r.get("reason")) for r in results] == [
        ("ORDER-1", "accepted", None),
        ("ORDER-2", "rejected", "unsupported_version"),
        ("ORDER-3", "rejected", "an_earlier_message_was_refused"),
    ]
    assert [len(r["acks"]) for r in results] == [1, 1, 1]
    assert [r["ack"] for r in results] == [r["acks"][0] for r in results]
    assert marker_status == 202
    out, dlq = await scene.accounted(tenant, "ORDER-MARKER")
    assert (out, dlq) == (["ORDER-1", "ORDER-MARKER"], [])


async def test_an_http_body_claiming_another_tenant_is_refused_whole(scene: Scene) -> None:
    tenant = await scene.onboard("claimer")
    victim = await scene.onboard("claimed")
    body = message(tenant.sender, "CLAIM-1") + message(victim.sender, "CLAIM-2")
    async with scene.quiet_beside(tenant):
        status, answer = await scene.send(tenant, body)
        marker_status, _ = await scene.send(tenant, message(tenant.sender, "CLAIM-MARKER"))

    assert status == 403
    assert [r.get("reason") for r in answer["results"]] == [
        "body_claims_another_tenant",
        "sender_of_another_tenant",
    ]
    assert marker_status == 202
    assert await scene.accounted(tenant, "CLAIM-MARKER") == (["CLAIM-MARKER"], [])


async def test_http_answers_503_and_429_only_when_nothing_was_accepted(scene: Scene) -> None:
    # Contract 0.01/s, burst 1: the ceiling (20 x contract) is 0.2/s with a burst of 20, so
    # right after the burst the next message waits ~5 s, however slow this machine is.
    tenant = await scene.onboard("ceiling", rate_per_s=0.01, burst=1)
    burst = b"".join(message(tenant.sender, f"CEIL-{n:02d}") for n in range(20))
    more = b"".join(message(tenant.sender, f"MORE-{n}") for n in range(3))
    async with scene.quiet_beside(tenant):
        burst_status, _ = await scene.send(tenant, burst)
        ceiling_status, ceiling_answer = await scene.send(tenant, more)
        await scene.admin_post(tenant, "pause")
        paused_status, paused_answer = await scene.send(tenant, more)
        await scene.admin_post(tenant, "resume")

    assert burst_status == 202
    assert ceiling_status == 429
    assert [r.get("reason") for r in ceiling_answer["results"]] == [
        "rate_ceiling",
        "an_earlier_message_was_refused",
        "an_earlier_message_was_refused",
    ]
    assert paused_status == 503
    assert [r.get("reason") for r in paused_answer["results"]] == [
        "tenant_paused",
        "an_earlier_message_was_refused",
        "an_earlier_message_was_refused",
    ]
    # The ceiling refills at 0.2/s; the marker waits for it like a well-behaved sender would.
    deadline = time.monotonic() + 20
    while True:
        status, _ = await scene.send(tenant, message(tenant.sender, "CEIL-MARKER"))
        if status != 429 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert status == 202
    out, dlq = await scene.accounted(tenant, "CEIL-MARKER")
    assert (out, dlq) == ([*(f"CEIL-{n:02d}" for n in range(20)), "CEIL-MARKER"], [])


async def test_an_oversize_http_message_gets_413_naming_the_limit(scene: Scene) -> None:
    tenant = await scene.onboard("huge-http")
    huge = oversize(tenant.sender, "HUGE-HTTP")
    async with scene.quiet_beside(tenant):
        status, answer = await scene.send(tenant, huge)
        marker_status, _ = await scene.send(tenant, message(tenant.sender, "HUGE-HTTP-MARKER"))

    assert status == 413
    [result] = answer["results"]
    assert result["reason"] == "message_too_large"
    assert f"exceeds the {DEFAULT_MAX_MESSAGE_BYTES}-byte limit" in result["message"]
    assert marker_status == 202
    out, dlq = await scene.accounted(tenant, "HUGE-HTTP-MARKER")
    assert (out, dlq) == (["HUGE-HTTP-MARKER"], [])
