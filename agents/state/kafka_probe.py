"""Kafka offsets behind the stats: counts, backlogs and DLQ growth, read in the background.

`KafkaProbe` reads, once a second, the end offsets of every tenant's out and DLQ topics, of the
control topic and of the lanes, and the committed offsets of the router, shared and lane-worker
groups. Requests and metric scrapes read its last `Offsets` and never wait for Kafka.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from mode import Service

from agents.state.broker_watch import BrokerWatch
from agents.state.registry import TenantRegistry
from streams.app import LanewayApp
from streams.stats import ERRORING_WINDOW_S, Offsets
from streams.tenants import TenantRecord
from streams.topics import TopicNames

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 1.0  # Kafka offsets (counts, backlog) are at most this old, plus the read
PROBE_TIMEOUT_S = 5.0
TOPIC_LIST_TTL_S = 30.0  # the topic list is re-read this often, and whenever one is missing


class KafkaProbe(Service):
    """Reads end offsets and committed offsets every `PROBE_INTERVAL_S`, in the background, so
    that requests and metric scrapes never wait for Kafka and cost it nothing extra."""

    def __init__(
        self, app: LanewayApp, registry: TenantRegistry, broker: BrokerWatch, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.registry = registry
        self.broker = broker
        self.offsets = Offsets()
        self.dlq_grew_at: dict[str, float] = {}  # tenant -> when its DLQ topic last grew
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._topics: set[str] = set()
        self._topics_read_at = -math.inf
        self._failing = False
        self._started_at = time.time()  # DLQ records of tenants onboarded since are recent

    async def on_start(self) -> None:
        servers = self.app.laneway.bootstrap_servers
        self._admin = AIOKafkaAdminClient(bootstrap_servers=servers)
        # No group: it only asks for end offsets, it never consumes.
        self._consumer = AIOKafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False)
        await self._admin.start()
        await self._consumer.start()

    async def on_stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        if self._admin is not None:
            await self._admin.close()

    @Service.timer(PROBE_INTERVAL_S)
    async def _probe(self) -> None:
        if not self.broker.up:  # the watch says so already; the last numbers stay, and age
            return
        try:
            await asyncio.wait_for(self.refresh(time.time()), PROBE_TIMEOUT_S)
        except Exception as error:  # the broker is away: the last numbers stay, `read_at` ages
            if not self._failing:
                log.warning("stats: Kafka offsets not read: %s", type(error).__name__)
            self._failing = True
        else:
            self._failing = False

    async def refresh(self, now: float) -> None:
        assert self._consumer is not None and self._admin is not None
        names = self.app.topic_names
        settings = self.app.laneway
        records = self.registry.directory.all()
        tenants = [record.id for record in records]
        single = [names.control]
        single += [topic for tenant in tenants for topic in (names.out(tenant), names.dlq(tenant))]
        stale = now - self._topics_read_at >= TOPIC_LIST_TTL_S
        if stale or not self._topics.issuperset(single):
            # Only topics that exist are asked for: an unknown one would block the request (or
            # be auto-created). A new tenant's topics are so counted from the next read on.
            self._topics = set(await self._consumer.topics())
            self._topics_read_at = now
        partitions = [TopicPartition(topic, 0) for topic in single if topic in self._topics]
        # The shared lane's backlog: ingress the routers have not forwarded yet, plus
        # laneway.lane.shared the shared workers have not processed yet.
        ingress, shared_lane = (
            [TopicPartition(topic, p) for p in range(settings.ingress_partitions)]
            if topic in self._topics
            else []
            for topic in (names.ingress, names.shared_lane)
        )
        lanes = (
            {
                lane: TopicPartition(names.dedicated_lanes, lane)
                for lane in range(settings.dedicated_lanes)
            }
            if names.dedicated_lanes in self._topics
            else {}
        )
        wanted = partitions + ingress + shared_lane + list(lanes.values())
        ends = {}
        if wanted:
            # aiokafka looks up the leaders of unknown topics one topic per metadata round
            # (measured: 200 new topics 20 s, 2,000 minutes); naming them all first takes one
            # round (0.03 s). No public call does only that: aiokafka 0.14's admin client has no
            # list_offsets, `partitions_for_topic` reads the cache only, and assign() + pause()
            # tracks the topics too but, while an assigned topic is missing (deleted, no
            # leader), its fetcher sends metadata requests in a busy loop (1,300 in 2 s).
            topics = {tp.topic for tp in wanted}
            await self._consumer._client.set_topics(topics)  # private: no public call, see above
            ends = await self._consumer.end_offsets(wanted)
        router_commits, shared_commits, lane_commits = await asyncio.gather(
            self._admin.list_consumer_group_offsets(settings.router_group),
            self._admin.list_consumer_group_offsets(self.app.conf.id),
            self._admin.list_consumer_group_offsets(settings.lane_worker_app_id),
        )
        previous = self.offsets
        offsets = Offsets(
            read_at=now,
            ends={
                tp.topic: end
                for tp, end in ends.items()
                if tp.topic not in (names.ingress, names.shared_lane, names.dedicated_lanes)
            },
            lane_backlog={
                lane: _lag(ends, lane_commits, [partition]) for lane, partition in lanes.items()
            },
            shared_backlog=(
                _lag(ends, router_commits, ingress) + _lag(ends, shared_commits, shared_lane)
                if ingress
                else None
            ),
        )
        self.offsets = offsets
        self._note_dlq_growth(records, names, previous, offsets, now)

    def _note_dlq_growth(
        self,
        records: Iterable[TenantRecord],
        names: TopicNames,
        previous: Offsets,
        offsets: Offsets,
        now: float,
    ) -> None:
        grew_at = {}
        for record in records:
            tenant = record.id
            topic = names.dlq(tenant)
            end = offsets.ends.get(topic)
            if end is None:
                continue
            if previous.read_at:
                before = previous.ends.get(topic, 0)  # a topic new since: all of it is recent
            elif datetime.fromisoformat(record.created_at).timestamp() >= self._started_at:
                before = 0  # onboarded since this worker started: all of it is recent
            else:
                before = end  # the first read is the baseline: older DLQ records do not count
            if end > before:
                grew_at[tenant] = now
            elif now - self.dlq_grew_at.get(tenant, -math.inf) < ERRORING_WINDOW_S:
                grew_at[tenant] = self.dlq_grew_at[tenant]
        self.dlq_grew_at = grew_at


def _lag(
    ends: Mapping[TopicPartition, int],
    commits: Mapping[Any, Any],
    partitions: Iterable[TopicPartition],
) -> int:
    """Records not yet committed by the group; a partition without a commit counts from 0 (the
    groups start at the earliest offset)."""
    total = 0
    for tp in partitions:
        committed = commits.get(tp)
        offset = max(committed.offset, 0) if committed is not None else 0
        total += max(ends.get(tp, 0) - offset, 0)
    return total
