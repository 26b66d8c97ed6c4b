"""Lane moves on the real broker with the real process topology (shared + lane worker).

Per-tenant order must hold across moves in both directions, under load (invariant 2).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import datetime

import pytest
from aiokafka import AIOKafkaProducer

from streams.hl7.synthetic import SyntheticFeed
from streams.processing import guess_control_id
from streams.settings import Settings
from streams.topics import TopicNames
from tests.harness import Api, WorkerProcess, consume_until
from tests.harness.scale import end_offsets

pytestmark = pytest.mark.integration

RATE_PER_S = 150
MOVE_DEADLINE_S = 20
PAUSED_MESSAGES = 50
BACKLOG_MESSAGES = 3000


async def tenant_moves(
    bootstrap: str, topics: TopicNames, tenant_id: str, at_least: int
) -> list[dict]:
    """The tenant's lane moves on the control topic, once there are `at_least` (or the deadline)."""

    def ours(records: list) -> list[dict]:
        moves = [json.loads(r.value) for r in records]
        return [move for move in moves if move["tenant"] == tenant_id]

    records = await consume_until(
        bootstrap, [topics.control], lambda got: len(ours(got)) >= at_least, MOVE_DEADLINE_S
    )
    return ours(records)


async def pin(api: Api, tenant_id: str, pinned: str) -> None:
    status, answer = await api.call(
        "PATCH",
        f"/api/tenants/{tenant_id}",
        token=api.admin_token,
        json_body={"lane": {"pinned": pinned}},
    )
    assert status == 200, answer


async def test_order_holds_across_forced_moves_both_ways(
    api: Api,
    worker: WorkerProcess,
    lane_worker: WorkerProcess,
    worker_env: dict,
    producer: AIOKafkaProducer,
    bootstrap: str,
) -> None:
    topics = TopicNames(worker_env["LANEWAY_TOPIC_PREFIX"])
    tenant = await api.onboard(f"mover-{uuid.uuid4().hex[:6]}", rate_per_s=1000, burst=1000)
    tenant_id = tenant["id"]
    feed = SyntheticFeed(seed=5, control_id_prefix="MOVE-", escape_rate=0)
    sent: list[str] = []
    flips_done = asyncio.Event()

    async def stream() -> None:
        # Open loop until the moves are done, and a little beyond.
        while not flips_done.is_set() or len(sent) % RATE_PER_S:
            payload = feed.next_message()
            await producer.send(topics.ingress, payload, key=tenant_id.encode())
            sent.append(guess_control_id(payload))
            await asyncio.sleep(1 / RATE_PER_S)

    async def moves_of_tenant(at_least: int) -> list[dict]:
        return await tenant_moves(bootstrap, topics, tenant_id, at_least)

    async def pin_and_wait(pinned: str, moves_before: int) -> None:
        await pin(api, tenant_id, pinned)
        moves = await moves_of_tenant(moves_before + 1)
        assert len(moves) > moves_before, f"no move after pin {pinned}: {moves}"

    async def flip() -> None:
        try:
            await asyncio.sleep(1)  # some traffic in the shared lane first
            await pin_and_wait("dedicated", 0)
            await pin_and_wait("shared", 1)  # waits for the drain of the dedicated lane
            await pin_and_wait("dedicated", 2)
            await pin_and_wait("auto", 3)  # unpinned and below contract: back to shared
        finally:
            flips_done.set()

    await asyncio.gather(stream(), flip())
    await producer.flush()

    records = await consume_until(
        bootstrap,
        [topics.out(tenant_id)],
        lambda got: set(sent) <= {json.loads(r.value)["control_id"] for r in got},
        60,
    )
    first_seen: list[str] = []
    seen_keys: set[str] = set()
    for record in records:
        event = json.loads(record.value)
        if event["idempotency_key"] not in seen_keys:  # consumers drop duplicates by key
            seen_keys.add(event["idempotency_key"])
            first_seen.append(event["control_id"])
    assert first_seen == sent, worker.log_tail() + lane_worker.log_tail()

    moves = await moves_of_tenant(4)
    assert [move["to"] is None for move in moves] == [False, True, False, True]
    assert [move["reason"] for move in moves] == ["pinned"] * 3 + ["unpinned"]


async def test_paused_tenant_waits_in_kafka_and_resumes_in_order(
    api: Api,
    worker: WorkerProcess,
    worker_env: dict,
    producer: AIOKafkaProducer,
    bootstrap: str,
) -> None:
    """Records already in ingress for a paused tenant are not processed until it is resumed;
    another tenant on the same deployment is processed meanwhile, and nothing is lost."""
    topics = TopicNames(worker_env["LANEWAY_TOPIC_PREFIX"])
    paused = (await api.onboard(f"paused-{uuid.uuid4().hex[:6]}"))["id"]
    running = (await api.onboard(f"running-{uuid.uuid4().hex[:6]}"))["id"]
    status, answer = await api.call("POST", f"/api/tenants/{paused}/pause", token=api.admin_token)
    assert status == 200, answer

    feed = SyntheticFeed(seed=11, control_id_prefix="PAUSE-", escape_rate=0)
    sent: dict[str, list[str]] = {paused: [], running: []}
    for _ in range(PAUSED_MESSAGES):
        for tenant_id in (paused, running):
            payload = feed.next_message()
            # Straight into ingress: ingest refuses a paused tenant, another producer may not.
            await producer.send(topics.ingress, payload, key=tenant_id.encode())
            sent[tenant_id].append(guess_control_id(payload))
    await producer.flush()

    def control_ids(records: list) -> list[str]:
        return [json.loads(record.value)["control_id"] for record in records]

    await consume_until(
        bootstrap,
        [topics.out(running)],
        lambda got: set(sent[running]) <= set(control_ids(got)),
        30,
    )
    # The running tenant is through; the paused one has had the same time and emitted nothing.
    held = await consume_until(bootstrap, [topics.out(paused)], lambda got: bool(got), 2)
    assert held == [], worker.log_tail()

    status, answer = await api.call("POST", f"/api/tenants/{paused}/resume", token=api.admin_token)
    assert status == 200, answer
    records = await consume_until(
        bootstrap,
        [topics.out(paused)],
        lambda got: set(sent[paused]) <= set(control_ids(got)),
        30,
    )
    assert control_ids(records) == sent[paused], worker.log_tail()


async def test_a_dedicated_lane_drains_at_its_bounded_rate_and_the_move_back_waits_for_it(
    api: Api,
    lane_worker: WorkerProcess,
    worker_env: dict,
    producer: AIOKafkaProducer,
    bootstrap: str,
) -> None:
    """A backlog in a dedicated lane is processed at LANEWAY_LANE_DRAIN_RATE at most; a move
    back to shared asked for meanwhile is made only once the lane is within a batch of done."""
    settings = Settings()
    topics = TopicNames(worker_env["LANEWAY_TOPIC_PREFIX"])
    tenant_id = (await api.onboard(f"backlog-{uuid.uuid4().hex[:6]}"))["id"]
    await pin(api, tenant_id, "dedicated")
    # Before any traffic: a pin takes effect on its own.
    assert len(await tenant_moves(bootstrap, topics, tenant_id, 1)) == 1

    lanes = [topics.dedicated_lanes]
    lanes_before = await end_offsets_total(bootstrap, lanes)
    feed = SyntheticFeed(seed=13, control_id_prefix="DRAIN-", escape_rate=0)
    sent: list[str] = []
    for _ in range(BACKLOG_MESSAGES):
        payload = feed.next_message()
        await producer.send(topics.ingress, payload, key=tenant_id.encode())
        sent.append(guess_control_id(payload))
    await producer.flush()
    deadline = time.monotonic() + MOVE_DEADLINE_S
    while await end_offsets_total(bootstrap, lanes) < lanes_before + BACKLOG_MESSAGES:
        assert time.monotonic() < deadline, "the router did not forward the backlog"
        await asyncio.sleep(0.1)

    await pin(api, tenant_id, "shared")
    records = await consume_until(
        bootstrap,
        [topics.out(tenant_id)],
        lambda got: set(sent) <= {json.loads(r.value)["control_id"] for r in got},
        60,
    )
    assert [json.loads(r.value)["control_id"] for r in records] == sent, lane_worker.log_tail()
    # A batch at once, then no faster than the rate: the floor that an unpaced lane undercuts.
    floor_s = (BACKLOG_MESSAGES - settings.batch_max) / settings.lane_drain_rate
    span_s = (records[-1].timestamp - records[0].timestamp) / 1000
    assert span_s >= 0.9 * floor_s, f"{BACKLOG_MESSAGES} records drained in {span_s:.2f} s"

    back = (await tenant_moves(bootstrap, topics, tenant_id, 2))[1]
    assert back["to"] is None, back
    decided_ms = datetime.fromisoformat(back["at"]).timestamp() * 1000
    nearly_done = records[-1 - settings.batch_max].timestamp
    assert decided_ms >= nearly_done, f"moved back with {span_s:.2f} s of drain, at {back['at']}"


async def end_offsets_total(bootstrap: str, topics: list[str]) -> int:
    """The sum of the end offsets of every partition of `topics`."""
    return sum((await end_offsets(bootstrap, topics)).values())
