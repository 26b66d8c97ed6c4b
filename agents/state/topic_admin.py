"""Topics created through the admin API, from their specs, outside Faust's own declaration."""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from streams.topics import TopicSpec


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
