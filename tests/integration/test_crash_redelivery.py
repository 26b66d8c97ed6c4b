"""Invariant 1 across a hard crash: nothing is lost, and duplicates keep their idempotency key."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from streams.hl7.synthetic import SyntheticFeed
from streams.processing import guess_control_id
from streams.topics import TopicNames
from tests.harness import Api, WorkerProcess, consume_until, own_worker_env

pytestmark = pytest.mark.integration

TENANTS = ("crash-a", "crash-b")
PER_TENANT = 3000


async def test_worker_killed_mid_stream_loses_nothing(
    worker_env: dict, producer: AIOKafkaProducer, bootstrap: str, tmp_path: Path, admin_token: str
) -> None:
    # A worker of its own (own app id and topics), so the kill cannot disturb other tests.
    # One process under test: no lane worker, so this burst must not be promoted.
    env = own_worker_env(worker_env, "crash", tmp_path / "data", lanes_enabled="false")
    topics = TopicNames(env["LANEWAY_TOPIC_PREFIX"])
    worker = WorkerProcess(env, tmp_path / "worker.log")
    worker.start()
    # Unknown tenants' records are never emitted (docs/limits.md): onboard them first.
    async with Api.of(worker) as api:
        for tenant in TENANTS:
            await api.onboard(tenant)
    sent: dict[str, list[str]] = {}
    for seed, tenant in enumerate(TENANTS):
        feed = SyntheticFeed(seed=seed, control_id_prefix=f"{tenant}-")
        sent[tenant] = []
        for _ in range(PER_TENANT):
            message = feed.next_message()
            await producer.send(topics.ingress, message, key=tenant.encode())
            sent[tenant].append(guess_control_id(message))
    await producer.flush()
    outputs = [topics.out(t) for t in TENANTS]

    try:
        # Kill -9 once part of the stream is through: no shutdown, no final commit.
        partial = await consume_until(bootstrap, outputs, lambda got: len(got) >= 500, 60)
        worker.kill()
        assert len(partial) >= 500, worker.log_tail()
        worker.start()
        expected = {control_id for ids in sent.values() for control_id in ids}
        records = await consume_until(
            bootstrap,
            outputs,
            lambda got: expected <= {json.loads(r.value)["control_id"] for r in got},
            120,
        )
    finally:
        worker.stop()

    keys_by_control_id: dict[str, set[str]] = defaultdict(set)
    first_seen: dict[str, list[str]] = defaultdict(list)
    for record in records:
        event = json.loads(record.value)
        if event["control_id"] not in keys_by_control_id:
            first_seen[event["tenant"]].append(event["control_id"])
        keys_by_control_id[event["control_id"]].add(event["idempotency_key"])
    assert set(keys_by_control_id) == expected, worker.log_tail()
    assert all(len(keys) == 1 for keys in keys_by_control_id.values())
    for tenant in TENANTS:
        assert first_seen[tenant] == sent[tenant]
