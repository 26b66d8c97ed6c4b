"""Topics created through the admin API, from their specs, outside Faust's own declaration; and
admin clients that never ask Kafka about every topic."""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code
from aiokafka.protocol.metadata import MetadataRequest

from streams.topics import TopicSpec

UNKNOWN_TOPIC_OR_PARTITION = 3  # Kafka's error code for a topic that does not exist


async def create_topics(admin: AIOKafkaAdminClient, specs: Iterable[TopicSpec]) -> dict[str, str]:
    """Create the topics as specified; an existing one is fine. Returns topic -> error name for
    each that could not be created (aiokafka reports these in the response, it does not raise)."""
    response = await admin.create_topics(
        [NewTopic(s.name, s.partitions, s.replication, topic_configs=s.config) for s in specs]
    )
    return {
        topic: for_code(code).__name__
        for topic, code, *_ in response.topic_errors
        if code not in (0, TopicAlreadyExistsError.errno)
    }


async def existing_topics(admin: AIOKafkaAdminClient, names: Iterable[str]) -> set[str]:
    """Those of `names` the broker lists. One metadata request naming them, and only them."""
    wanted = list(names)
    if not wanted:
        return set()
    # Not `describe_topics`: its metadata request lets a broker with topic auto-creation on
    # create the very topics it asks about.
    request = MetadataRequest(wanted, allow_auto_topic_creation=False)
    response = await admin._send_request(request)  # private: no public call says "don't create"
    return {
        topic["topic"]
        for topic in response.to_object()["topics"]
        if topic["error_code"] != UNKNOWN_TOPIC_OR_PARTITION
    }


async def started_admin(bootstrap_servers: list[str], tracked_topic: str) -> AIOKafkaAdminClient:
    """A started admin client whose metadata covers `tracked_topic` only.

    An aiokafka client that tracks no topic refreshes the metadata of every topic in the
    cluster (every 5 minutes, and whenever a refresh is forced): with a topic per tenant that
    held ~0.75 KB and cost ~100 µs of decoding per topic, in every such client. Naming one topic
    (one that always exists, such as the tenants topic) keeps its refreshes to that topic.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    # private: the admin client has no public way to name the topics it tracks
    admin._client.set_topics([tracked_topic])
    return admin
