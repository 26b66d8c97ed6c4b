"""The topics real workers create on the broker are the topic table's (streams/topics.py)."""

from __future__ import annotations

import json
import uuid

import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from agents.state.topic_admin import existing_topics
from streams.hl7.synthetic import SyntheticFeed
from streams.settings import Settings
from streams.topics import TopicTable
from tests.harness import Api, WorkerProcess, consume_until

pytestmark = pytest.mark.integration

WAIT_S = 30.0
# DescribeConfigs' config source of a value set on the topic itself (DYNAMIC_TOPIC_CONFIG).
TOPIC_CONFIG = 1


async def topic_configs(
    admin: AIOKafkaAdminClient, names: list[str]
) -> dict[str, dict[str, tuple[str, int]]]:
    """Topic -> config name -> (value, source), as the broker describes them."""
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
    [response] = await admin.describe_configs(resources)
    configs = {}
    for error_code, _, _, name, entries in response.resources:
        assert error_code == 0, name
        # (name, value, read only, source, ...): the source says where the value comes from.
        configs[name] = {entry[0]: (entry[1], entry[3]) for entry in entries}
    return configs


async def test_every_topic_on_the_broker_is_created_as_its_spec_says(
    api: Api,
    worker: WorkerProcess,
    worker_env: dict,
    bootstrap: str,
    admin: AIOKafkaAdminClient,
    producer: AIOKafkaProducer,
) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        topic_prefix=worker_env["LANEWAY_TOPIC_PREFIX"],
        ingress_partitions=int(worker_env["LANEWAY_INGRESS_PARTITIONS"]),
    )
    table = TopicTable(settings)
    names = table.names
    tenant = await api.onboard(f"specs-{uuid.uuid4().hex[:8]}")
    own = [names.out(tenant["id"]), names.dlq(tenant["id"])]
    # Onboarding creates no topic: the publisher creates each with its first record.
    assert await existing_topics(admin, own) == set()
    feed = SyntheticFeed(seed=3)
    status, answer = await api.send(tenant["id"], tenant["token"], feed.next_message())
    assert status == 202, answer
    await producer.send_and_wait(names.ingress, b"not HL7", key=tenant["id"].encode())
    # A record of no tenant: the processor's publisher creates the unrouted DLQ for it.
    sent = await producer.send_and_wait(names.ingress, feed.next_message(), key=b"No Tenant")

    def parked(records: list[ConsumerRecord]) -> bool:
        sources = [json.loads(record.value)["source"] for record in records]
        return any((s["partition"], s["offset"]) == (sent.partition, sent.offset) for s in sources)

    records = await consume_until(bootstrap, [names.dlq_unrouted], parked, WAIT_S)
    assert parked(records), worker.log_tail()
    for topic in own:  # the event and the reject
        assert await consume_until(bootstrap, [topic], bool, WAIT_S), (topic, worker.log_tail())

    expected = [
        names.ingress,
        names.shared_lane,
        names.dedicated_lanes,
        names.control,
        names.tenants,
        names.tenant_state,
        names.out(tenant["id"]),
        names.dlq(tenant["id"]),
        names.dlq_unrouted,
    ]
    configs = await topic_configs(admin, expected)
    partitions = {
        topic["topic"]: len(topic["partitions"]) for topic in await admin.describe_topics(expected)
    }

    for name in expected:
        spec = table.spec(name)
        assert partitions[name] == spec.partitions, name
        # Each value set on the topic itself, not the broker's default that happens to match.
        assert {key: configs[name][key] for key in spec.config} == {
            key: (value, TOPIC_CONFIG) for key, value in spec.config.items()
        }, name
