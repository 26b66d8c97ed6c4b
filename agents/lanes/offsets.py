"""The Kafka offsets the router asks about, besides its own reads and commits: the lanes'
committed offsets (has a lane emitted a tenant's records?), their end offsets (what may still
be in them after a restart), the ingress commits' metadata, and the dedicated lanes' count."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions
from aiokafka.errors import InvalidPartitionsError

from streams.app import LanewayApp
from streams.cutover import LanePartition

log = logging.getLogger(__name__)

RETRY_S = 1.0


class LaneOffsets:
    """An admin client and a consumer without a group (it only asks for end offsets)."""

    def __init__(self, app: LanewayApp) -> None:
        self.app = app
        self.topics = app.topic_names
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        servers = self.app.laneway.bootstrap_servers
        self._admin = AIOKafkaAdminClient(bootstrap_servers=servers)
        await self._admin.start()
        self._consumer = AIOKafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False)
        await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        if self._admin is not None:
            await self._admin.close()

    async def grow_dedicated_lanes(self) -> None:
        """A deployment that raised LANEWAY_DEDICATED_LANES gets the new lanes' partitions
        (`declare` keeps an existing topic as it is). The router picks a lane's partition by
        number, not by the key's hash, so adding partitions moves no tenant."""
        assert self._admin is not None
        topic, wanted = self.topics.dedicated_lanes, self.app.laneway.dedicated_lanes
        [description] = await self._admin.describe_topics([topic])
        present = len(description["partitions"])
        if present >= wanted:
            return
        try:
            await self._admin.create_partitions({topic: NewPartitions(wanted)})
        except InvalidPartitionsError as error:
            # Grown since (another worker starting too), or the metadata read lagged behind the
            # topic's creation (seen on a fresh 3-broker cluster): it has them, start anyway.
            log.info("dedicated lanes not grown: %s", error)
            return
        log.info("dedicated lanes grown from %d to %d", present, wanted)

    async def lane_commits(self, partitions: Iterable[LanePartition]) -> dict[LanePartition, int]:
        """(lane topic, partition) -> the committed offset (the next record its worker reads)
        of the consumer group that processes that lane. A lane whose offsets are unavailable
        (no commit yet, or the broker busy) is left out: nothing counts as drained there."""
        settings = self.app.laneway
        by_group: dict[str, set[TopicPartition]] = {}
        for topic, partition in partitions:
            shared = topic == self.topics.shared_lane
            group = settings.app_id if shared else settings.lane_worker_app_id
            by_group.setdefault(group, set()).add(TopicPartition(topic, partition))
        committed: dict[LanePartition, int] = {}
        for group, group_partitions in by_group.items():
            try:
                offsets = await self.group_commits(group, group_partitions)
            except Exception as error:
                log.debug("lane offsets unavailable: %s", type(error).__name__)
                continue
            for tp, meta in offsets.items():
                if meta.offset >= 0:
                    committed[tp.topic, tp.partition] = meta.offset
        return committed

    async def group_commits(self, group: str, partitions: Iterable[TopicPartition]) -> Any:
        """TopicPartition -> OffsetAndMetadata of the group's commits (raises if unreadable)."""
        assert self._admin is not None
        return await self._admin.list_consumer_group_offsets(group, partitions=sorted(partitions))

    async def lane_ends(self, lane_partitions: Iterable[LanePartition]) -> dict[LanePartition, int]:
        """The lane partitions' end offsets; retried until Kafka answers: without them no cut
        could know what to wait for."""
        tps = [TopicPartition(topic, partition) for topic, partition in lane_partitions]
        while True:
            try:
                ends = await self.end_offsets(tps)
            except Exception as error:
                log.warning("lane end offsets unavailable: %s", type(error).__name__)
                await asyncio.sleep(RETRY_S)
                continue
            return {(tp.topic, tp.partition): offset for tp, offset in ends.items()}

    async def existing(self, topics: list[str]) -> set[str]:
        """Those of `topics` that exist: one metadata request. Asking a consumer for the end
        offset of a missing topic would wait for it (and keep asking for it afterwards)."""
        assert self._admin is not None
        described = await self._admin.describe_topics(topics)
        return {topic["topic"] for topic in described if topic["error_code"] == 0}

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        assert self._consumer is not None
        ends: dict[TopicPartition, int] = await self._consumer.end_offsets(partitions)
        return ends
