"""The lane worker's DLQ records reach the tenant's volume windows (issue 14, point 4).

A tenant pinned to a dedicated lane sends records that the processor rejects. The lane worker,
another process, publishes their DLQ records; the router that owns the tenant counts them from
the DLQ topic's end offset (agents/lanes/lane_dlq.py), and the tenant's state document (its
volume windows, which every worker mirrors) shows them. Before, only the shared lane's
processor reported DLQ records: the lane's read 0.
"""

from __future__ import annotations

import json
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from streams.hl7.synthetic import SyntheticFeed
from streams.topics import TopicNames
from tests.harness import Api, WorkerProcess, consume_until
from tests.integration.test_lanes import pin, tenant_moves

pytestmark = pytest.mark.integration

BAD = 12
COUNTED_TIMEOUT_S = 60.0


async def test_a_tenant_in_a_dedicated_lane_has_its_dlq_records_counted(
    api: Api,
    lane_worker: WorkerProcess,
    worker_env: dict,
    producer: AIOKafkaProducer,
    bootstrap: str,
) -> None:
    topics = TopicNames(worker_env["LANEWAY_TOPIC_PREFIX"])
    tenant_id = (await api.onboard(f"lanedlq-{uuid.uuid4().hex[:6]}"))["id"]
    await pin(api, tenant_id, "dedicated")
    [move] = await tenant_moves(bootstrap, topics, tenant_id, 1)
    assert move["to"] is not None, move

    # Straight into ingress: ingest would refuse what is not HL7; the processor parks it.
    feed = SyntheticFeed(seed=31, control_id_prefix="LDLQ-", escape_rate=0)
    for i in range(BAD):
        for payload in (feed.next_message(), f"NOT HL7 {i}".encode()):
            await producer.send(topics.ingress, payload, key=tenant_id.encode())
    await producer.flush()
    rejected = await consume_until(
        bootstrap, [topics.dlq(tenant_id)], lambda got: len(got) >= BAD, COUNTED_TIMEOUT_S
    )
    assert len(rejected) == BAD, lane_worker.log_tail()

    def counted(records: list) -> bool:
        return (state(records) or {}).get("rates", {}).get("dlq_1m", 0) >= BAD

    def state(records: list) -> dict | None:
        """The tenant's latest state document."""
        ours = [r for r in records if r.key == tenant_id.encode() and r.value is not None]
        return json.loads(ours[-1].value) if ours else None

    records = await consume_until(bootstrap, [topics.tenant_state], counted, COUNTED_TIMEOUT_S)
    document = state(records)
    assert document is not None and counted(records), (document, lane_worker.log_tail())
    assert document["lane"] is not None, document
    assert document["rates"]["dlq_1m"] == BAD, document
    assert document["rates"]["dlq"] == BAD, document
