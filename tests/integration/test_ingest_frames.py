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

import pytest
from aiokafka.partitioner import DefaultPartitioner

from streams.mllp import frame
from streams.topics import TopicNames
from tests.integration import test_mllp
from tests.integration.kafka_helpers import Api, WorkerProcess, consume_until
from tests.integration.test_mllp import Ack, Sender, connection, message

pytestmark = pytest.mark.integration

# How soon a quiet tenant's event must be in its out topic after its AA.
QUIET_ARRIVAL_S = 10.0
ARRIVAL_TIMEOUT_S = 60.0
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # the session worker keeps the default contract
_partitioner = DefaultPartitioner()
# The MLLP tests' fixtures, shared rather than repeated.
mllp_port = test_mllp.mllp_port
topics = test_mllp.topics


@dataclass(frozen=True)
class Onboarded:
    id: str
    sender: Sender
    token: str


def ingress_partition(tenant_id: str, partitions: int) -> int:
    """The ingress partition of a tenant: its id is the record key."""
    every = list(range(partitions))
    return int(_partitioner(tenant_id.encode(), every, every))


async def onboard(
    api: Api, name: str, partitions: int, *, partition: int | None = None, **fields: object
) -> Onboarded:
    """A tenant with an MLLP identity of its own, on `partition` of ingress when given."""
    while True:
        suffix = uuid.uuid4().hex[:8]
        tenant_id = f"{name}-{suffix}"
        if partition is None or ingress_partition(tenant_id, partitions) == partition:
            break
    sender = Sender(f"APP-{suffix.upper()}", f"FAC-{suffix.upper()}")
    fields = {"rate_per_s": 10_000, "burst": 20_000, **fields}
    answer = await api.onboard(
        tenant_id,
        senders=[{"application": sender.application, "facility": sender.facility}],
        **fields,
    )
    return Onboarded(answer["id"], sender, answer["token"])


@dataclass
class Quiet:
    """What the quiet neighbour sent and heard."""

    tenant: Onboarded
    sent: list[str] = field(default_factory=list)
    acked_at: dict[str, float] = field(default_factory=dict)
    acks: list[Ack] = field(default_factory=list)


@contextlib.asynccontextmanager
async def quiet_neighbour(
    api: Api, port: int, bootstrap: str, topics: TopicNames, partitions: int, partition: int
) -> AsyncIterator[Quiet]:
    """A well-behaved tenant on `partition`, stop-and-wait over MLLP while the body runs (at
    least 10 messages); then asserts every message got AA and reached out in time."""
    quiet = Quiet(await onboard(api, "quiet", partitions, partition=partition))
    faults_done = asyncio.Event()

    async def send() -> None:
        async with connection(port) as client:
            while len(quiet.sent) < 10 or not faults_done.is_set():
                control_id = f"QUIET-{len(quiet.sent):04d}"
                quiet.acks.append(await client.exchange(message(quiet.tenant.sender, control_id)))
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
        bootstrap,
        [topics.out(quiet.tenant.id)],
        lambda got: len(got) >= len(quiet.sent),
        ARRIVAL_TIMEOUT_S,
    )
    arrived_at = time.monotonic()
    arrived = [json.loads(record.value)["control_id"] for record in records]
    assert arrived == quiet.sent
    # Read after the fact, so this bounds lateness only for the last ones; the earlier ones
    # are bounded by the order of the topic (each arrived before the last).
    last = quiet.sent[-1]
    assert arrived_at - quiet.acked_at[last] < QUIET_ARRIVAL_S, "the quiet tenant was delayed"


async def accounted(
    bootstrap: str, topics: TopicNames, tenant: Onboarded, marker: str
) -> tuple[list[str], list[str]]:
    """Control ids in the tenant's out and DLQ topics, read until `marker` is in out: as the
    tenant's last message, everything sent before it is in by then."""

    def has_marker(records: list) -> bool:
        out = topics.out(tenant.id)
        return any(r.topic == out and json.loads(r.value)["control_id"] == marker for r in records)

    records = await consume_until(
        bootstrap,
        [topics.out(tenant.id), topics.dlq(tenant.id)],
        has_marker,
        ARRIVAL_TIMEOUT_S,
    )
    assert has_marker(records), f"the marker {marker} never arrived"
    values = [(r.topic, json.loads(r.value).get("control_id")) for r in records]
    out = [control_id for topic, control_id in values if topic == topics.out(tenant.id)]
    dlq = [control_id for topic, control_id in values if topic != topics.out(tenant.id)]
    return out, dlq


@pytest.fixture
def partitions(worker_env: dict) -> int:
    return int(worker_env["LANEWAY_INGRESS_PARTITIONS"])


# --- MLLP ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msh_15_16", "expected"),
    [(("NE", "AL"), ["AA"]), (("ER", "AL"), ["AA"]), (("AL", "AL"), ["CA", "AA"])],
    ids=["NE-AL", "ER-AL", "AL-AL"],
)
async def test_enhanced_mode_senders_get_exactly_the_acks_they_ask_for(
    api: Api,
    mllp_port: int,
    topics: TopicNames,
    bootstrap: str,
    worker: WorkerProcess,
    partitions: int,
    msh_15_16: tuple[str, str],
    expected: list[str],
) -> None:
    accept, application = msh_15_16
    tenant = await onboard(api, "enhanced", partitions)
    partition = ingress_partition(tenant.id, partitions)
    async with (
        quiet_neighbour(api, mllp_port, bootstrap, topics, partitions, partition),
        connection(mllp_port) as client,
    ):
        payload = message(tenant.sender, "ENH-1", accept_ack=accept, application_ack=application)
        await client.send(payload)
        acks = [await client.ack() for _ in expected]  # each within the ACK deadline: no hang
        # Nothing more for it: the next answer on the connection is the marker's.
        marker = await client.exchange(message(tenant.sender, "ENH-MARKER"))

    assert [(ack.code, ack.acked_id) for ack in acks] == [(code, "ENH-1") for code in expected]
    assert len({ack.msh[10] for ack in acks}) == len(acks), "two ACKs share one MSH-10"
    assert (marker.code, marker.acked_id) == ("AA", "ENH-MARKER")
    out, dlq = await accounted(bootstrap, topics, tenant, "ENH-MARKER")
    assert (out, dlq) == (["ENH-1", "ENH-MARKER"], []), worker.log_tail()


async def test_a_frame_of_three_messages_gets_an_ack_and_a_record_each(
    api: Api,
    mllp_port: int,
    topics: TopicNames,
    bootstrap: str,
    partitions: int,
) -> None:
    tenant = await onboard(api, "frame", partitions)
    partition = ingress_partition(tenant.id, partitions)
    control_ids = ["FRAME-1", "FRAME-2", "FRAME-3"]
    async with (
        quiet_neighbour(api, mllp_port, bootstrap, topics, partitions, partition),
        connection(mllp_port) as client,
    ):
        await client.send_raw(frame(b"".join(message(tenant.sender, c) for c in control_ids)))
        acks = [await client.ack() for _ in control_ids]
        marker = await client.exchange(message(tenant.sender, "FRAME-MARKER"))

    assert [(ack.code, ack.acked_id) for ack in acks] == [("AA", c) for c in control_ids]
    assert marker.code == "AA"
    out, dlq = await accounted(bootstrap, topics, tenant, "FRAME-MARKER")
    assert (out, dlq) == ([*control_ids, "FRAME-MARKER"], [])


async def test_a_frame_mixing_two_tenants_is_refused_whole_and_nothing_is_written(
    api: Api,
    mllp_port: int,
    topics: TopicNames,
    bootstrap: str,
    partitions: int,
) -> None:
    tenant = await onboard(api, "mixer", partitions)
    victim = await onboard(api, "victim", partitions)
    partition = ingress_partition(tenant.id, partitions)
    async with (
        quiet_neighbour(api, mllp_port, bootstrap, topics, partitions, partition),
        connection(mllp_port) as client,
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
    assert await accounted(bootstrap, topics, tenant, "MIX-MARKER") == (["MIX-MARKER"], [])
    assert await accounted(bootstrap, topics, victim, "VICTIM-MARKER") == (["VICTIM-MARKER"], [])


async def test_an_oversize_mllp_message_gets_ae_naming_the_limit(
    api: Api,
    mllp_port: int,
    topics: TopicNames,
    bootstrap: str,
    partitions: int,
) -> None:
    tenant = await onboard(api, "huge-mllp", partitions)
    partition = ingress_partition(tenant.id, partitions)
    huge = message(tenant.sender, "HUGE-MLLP") + b"OBX|1|TX|NOTE||" + b"X" * (5 << 20) + b"\r"
    async with quiet_neighbour(api, mllp_port, bootstrap, topics, partitions, partition):
        async with connection(mllp_port) as client:
            await client.send(huge)
            client.finish_sending()
            answers = await client.acks_until_closed()
        async with connection(mllp_port) as client:
            marker = await client.exchange(message(tenant.sender, "HUGE-MARKER"))

    assert [(ack.code, ack.acked_id, ack.has_err) for ack in answers] == [("AE", "HUGE-MLLP", True)]
    assert f"exceeds the {DEFAULT_MAX_MESSAGE_BYTES}-byte limit" in answers[0].msa[3]
    assert marker.code == "AA"
    assert await accounted(bootstrap, topics, tenant, "HUGE-MARKER") == (["HUGE-MARKER"], [])


# --- HTTP ---------------------------------------------------------------------------------------


async def test_an_http_body_keeps_order_after_a_refused_message(
    api: Api,
    mllp_port: int,
    topics: TopicNames,
    bootstrap: str,
    partitions: int,
) -> None:
    tenant = await onboard(api, "order", partitions)
    partition = ingress_partition(tenant.id, partitions)
    bad = message(tenant.sender, "ORDER-2", version="2.9")  # unsupported version
    body = message(tenant.sender, "ORDER-1") + bad + message(tenant.sender, "ORDER-3")
    async with quiet_neighbour(api, mllp_port, bootstrap, topics, partitions, partition):
        status, answer = await api.send(tenant.id, tenant.token, body)
        marker_status, _ = await api.send(
            tenant.id, tenant.token, message(tenant.sender, "ORDER-MARKER")
        )

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
    out, dlq = await accounted(bootstrap, topics, tenant, "ORDER-MARKER")
    assert (out, dlq) == (["ORDER-1", "ORDER-MARKER"], [])


async def test_an_http_body_claiming_another_tenant_is_refused_whole(
    api: Api,
    mllp_port: int,
    topics: TopicNames,
    bootstrap: str,
    partitions: int,
) -> None:
    tenant = await onboard(api, "claimer", partitions)
    victim = await onboard(api, "claimed", partitions)
    partition = ingress_partition(tenant.id, partitions)
    body = message(tenant.sender, "CLAIM-1") + message(victim.sender, "CLAIM-2")
    async with quiet_neighbour(api, mllp_port, bootstrap, topics, partitions, partition):
        status, answer = await api.send(tenant.id, tenant.token, body)
        marker_status, _ = await api.send(
            tenant.id, tenant.token, message(tenant.sender, "CLAIM-MARKER")
        )

    assert status == 403
    assert [r.get("reason") for r in answer["results"]] == [
        "body_claims_another_tenant",
        "sender_of_another_tenant",
    ]
    assert marker_status == 202
    assert await accounted(bootstrap, topics, tenant, "CLAIM-MARKER") == (["CLAIM-MARKER"], [])


async def test_http_answers_503_and_429_only_when_nothing_was_accepted(
    api: Api,
    mllp_port: int,
    topics: TopicNames,
    bootstrap: str,
    partitions: int,
) -> None:
    # Contract 0.01/s, burst 1: the ceiling (20 x contract) is 0.2/s with a burst of 20, so
    # right after the burst the next message waits ~5 s, however slow this machine is.
    tenant = await onboard(api, "ceiling", partitions, rate_per_s=0.01, burst=1)
    partition = ingress_partition(tenant.id, partitions)
    burst = b"".join(message(tenant.sender, f"CEIL-{n:02d}") for n in range(20))
    more = b"".join(message(tenant.sender, f"MORE-{n}") for n in range(3))
    async with quiet_neighbour(api, mllp_port, bootstrap, topics, partitions, partition):
        burst_status, _ = await api.send(tenant.id, tenant.token, burst)
        ceiling_status, ceiling_answer = await api.send(tenant.id, tenant.token, more)
        await api.call("POST", f"/api/tenants/{tenant.id}/pause", token=api.admin_token)
        paused_status, paused_answer = await api.send(tenant.id, tenant.token, more)
        await api.call("POST", f"/api/tenants/{tenant.id}/resume", token=api.admin_token)

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
        status, _ = await api.send(tenant.id, tenant.token, message(tenant.sender, "CEIL-MARKER"))
        if status != 429 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert status == 202
    out, dlq = await accounted(bootstrap, topics, tenant, "CEIL-MARKER")
    assert (out, dlq) == ([*(f"CEIL-{n:02d}" for n in range(20)), "CEIL-MARKER"], [])


async def test_an_oversize_http_message_gets_413_naming_the_limit(
    api: Api,
    mllp_port: int,
    topics: TopicNames,
    bootstrap: str,
    partitions: int,
) -> None:
    tenant = await onboard(api, "huge-http", partitions)
    partition = ingress_partition(tenant.id, partitions)
    huge = message(tenant.sender, "HUGE-HTTP") + b"OBX|1|TX|NOTE||" + b"X" * (5 << 20) + b"\r"
    async with quiet_neighbour(api, mllp_port, bootstrap, topics, partitions, partition):
        status, answer = await api.send(tenant.id, tenant.token, huge)
        marker_status, _ = await api.send(
            tenant.id, tenant.token, message(tenant.sender, "HUGE-HTTP-MARKER")
        )

    assert status == 413
    [result] = answer["results"]
    assert result["reason"] == "message_too_large"
    assert f"exceeds the {DEFAULT_MAX_MESSAGE_BYTES}-byte limit" in result["message"]
    assert marker_status == 202
    out, dlq = await accounted(bootstrap, topics, tenant, "HUGE-HTTP-MARKER")
    assert (out, dlq) == (["HUGE-HTTP-MARKER"], [])
