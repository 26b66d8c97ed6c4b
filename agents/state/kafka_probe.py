"""Kafka offsets behind the stats: counts, backlogs and DLQ growth, read in the background.

`KafkaProbe` reads, once a second, the end offsets of the control topic and the lanes, the
committed offsets of the router, shared and lane-worker groups, and the end offsets of the out
and DLQ topics of the tenants that sent lately. Requests and metric scrapes read its last
`Offsets` and never wait for Kafka.

It never asks Kafka about every topic, and never about every tenant. A tenant's topics exist only
once it has sent (the publisher creates them with its first record), and the router publishes
the state document of a tenant that sends (`TenantStateMirror`): the probe reads the topics of
tenants whose document changed within `RECENT_S` every second, those of every tenant with a
document every `ALL_EVERY_S`, and none of the others, whose counts are 0.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from mode import Service

from agents.state.broker_watch import BrokerWatch
from agents.state.registry import TenantRegistry
from agents.state.tenant_state import TenantStateMirror
from agents.state.topic_admin import existing_topics, started_admin
from streams.app import LanewayApp
from streams.stats import ERRORING_WINDOW_S, Offsets
from streams.topics import TopicNames

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 1.0  # Kafka offsets (counts, backlog) are at most this old, plus the read
PROBE_TIMEOUT_S = 5.0
# A tenant's out and DLQ topics are read every probe while its state document changed within
# RECENT_S (its last records reach them a moment after its last message), and every ALL_EVERY_S
# whatever (a backlog drained later).
RECENT_S = 15.0
ALL_EVERY_S = 30.0
# A topic found missing (the DLQ topic of a tenant that never had a reject) is looked for again
# this long after: its first record is counted up to that much later.
ABSENT_RECHECK_S = 5.0
# Topics found to exist join the consumer's tracked topics (and so the read) at the next probe,
# unless that would spend more than TRACK_CPU_SHARE of a core: each change refreshes the metadata
# of every tracked topic (~100 µs per topic here), and a thousand tenants sending their first
# records add topics every second for a while. So 100 topics join within a second (every
# worker's counts agree within a probe or two), 2,500 or more at most every TRACK_EVERY_S.
METADATA_S_PER_TOPIC = 100e-6
TRACK_CPU_SHARE = 0.05
TRACK_EVERY_S = 5.0


def track_interval_s(tracked_topics: int) -> float:
    """The least time between two changes of the tracked topics (see TRACK_CPU_SHARE)."""
    return min(TRACK_EVERY_S, tracked_topics * METADATA_S_PER_TOPIC / TRACK_CPU_SHARE)


class KafkaProbe(Service):
    """Reads end offsets and committed offsets every `PROBE_INTERVAL_S`, in the background, so
    that requests and metric scrapes never wait for Kafka and cost it nothing extra."""

    def __init__(
        self,
        app: LanewayApp,
        registry: TenantRegistry,
        tenant_states: TenantStateMirror,
        broker: BrokerWatch,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.registry = registry
        self.tenant_states = tenant_states
        self.broker = broker
        self.offsets = Offsets()
        self.dlq_grew_at: dict[str, float] = {}  # tenant -> when its DLQ topic last grew
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._existing: set[str] = set()  # topics found to exist
        self._tracked: set[str] = set()  # those of them the consumer tracks, and the probe reads
        self._tracked_at = -math.inf
        self._absent: dict[str, float] = {}  # topic -> when it was last found missing
        self._all_read_at = -math.inf
        self._failing = False
        self._started_at = time.time()  # DLQ records of tenants onboarded since are recent

    async def on_start(self) -> None:
        servers = self.app.laneway.bootstrap_servers
        self._admin = await started_admin(servers, self.app.topic_names.tenants)
        # No group: it only asks for end offsets, it never consumes.
        self._consumer = AIOKafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False)
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
        if not (self.registry.ready.is_set() and self.tenant_states.ready.is_set()):
            return  # the first read is the DLQ baseline: it must see every tenant that sent
        try:
            await asyncio.wait_for(self.refresh(time.time()), PROBE_TIMEOUT_S)
        except Exception as error:  # the broker is away: the last numbers stay, `read_at` ages
            if not self._failing:
                log.warning("stats: Kafka offsets not read: %s", type(error).__name__)
            self._failing = True
            # A topic deleted meanwhile must not fail the next read.
            self._existing.clear()
            self._tracked.clear()
        else:
            self._failing = False

    def _tenants_to_read(self, now: float) -> list[str]:
        """Live tenants whose out and DLQ topics this probe reads (see the module's doc)."""
        directory = self.registry.directory
        read_all = now - self._all_read_at >= ALL_EVERY_S
        if read_all:
            self._all_read_at = now
        return [
            tenant
            for tenant, document in self.tenant_states.states.items()
            if (read_all or now - document.get("updated_at", 0.0) < RECENT_S)
            and directory.summary(tenant) is not None
        ]

    async def refresh(self, now: float) -> None:
        assert self._consumer is not None and self._admin is not None
        names = self.app.topic_names
        settings = self.app.laneway
        tenants = self._tenants_to_read(now)
        single = [names.control]
        single += [topic for tenant in tenants for topic in (names.out(tenant), names.dlq(tenant))]
        fixed = [names.ingress, names.shared_lane, names.dedicated_lanes]
        # Only topics that exist are asked for: an unknown one would block the request. Those
        # not known to exist yet are looked up by name (a new tenant's topics, the DLQ topic of
        # one that never had a reject): one metadata request about them alone.
        live = {names.control, *fixed, *self._live_topics(names)}
        self._existing &= live
        self._absent = {topic: at for topic, at in self._absent.items() if topic in live}
        unknown = [
            topic
            for topic in (*fixed, *single)
            if topic not in self._existing
            and now - self._absent.get(topic, -math.inf) >= ABSENT_RECHECK_S
        ]
        found = await existing_topics(self._admin, unknown)
        self._existing |= found
        self._absent.update((topic, now) for topic in unknown if topic not in found)
        self._tracked &= live
        if not self._existing <= self._tracked and now - self._tracked_at >= track_interval_s(
            len(self._tracked)
        ):
            self._tracked, self._tracked_at = set(self._existing), now
        partitions = [TopicPartition(topic, 0) for topic in single if topic in self._tracked]
        # The shared lane's backlog: ingress the routers have not forwarded yet, plus
        # laneway.lane.shared the shared workers have not processed yet.
        ingress, shared_lane = (
            [TopicPartition(topic, p) for p in range(settings.ingress_partitions)]
            if topic in self._tracked
            else []
            for topic in (names.ingress, names.shared_lane)
        )
        lanes = (
            {
                lane: TopicPartition(names.dedicated_lanes, lane)
                for lane in range(settings.dedicated_lanes)
            }
            if names.dedicated_lanes in self._tracked
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
            # Tracking every topic found to exist (not only this read's) refreshes metadata only
            # when one is new; a consumer tracking none would refresh every topic's.
            await self._consumer._client.set_topics(self._tracked)  # private: see above
            ends = await self._consumer.end_offsets(wanted)
        router_commits, shared_commits, lane_commits = await asyncio.gather(
            self._admin.list_consumer_group_offsets(settings.router_group),
            self._admin.list_consumer_group_offsets(self.app.conf.id),
            self._admin.list_consumer_group_offsets(settings.lane_worker_app_id),
        )
        previous = self.offsets
        # Tenants not read this time keep their last counts; offboarded ones are dropped.
        kept = {topic: end for topic, end in previous.ends.items() if topic in self._tracked}
        offsets = Offsets(
            read_at=now,
            ends=kept
            | {
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
        self._note_dlq_growth(tenants, names, previous, offsets, now)

    def _live_topics(self, names: TopicNames) -> Iterable[str]:
        """The out and DLQ topics of the live tenants that have sent (a state document)."""
        directory = self.registry.directory
        for tenant in self.tenant_states.states:
            if directory.summary(tenant) is not None:
                yield names.out(tenant)
                yield names.dlq(tenant)

    def _note_dlq_growth(
        self,
        tenants: Iterable[str],
        names: TopicNames,
        previous: Offsets,
        offsets: Offsets,
        now: float,
    ) -> None:
        """When each tenant read this time last saw its DLQ grow; the others keep theirs while
        within ERRORING_WINDOW_S."""
        grew_at = {
            tenant: at
            for tenant, at in self.dlq_grew_at.items()
            if now - at < ERRORING_WINDOW_S and self.registry.directory.summary(tenant)
        }
        for tenant in tenants:
            topic = names.dlq(tenant)
            end = offsets.ends.get(topic)
            summary = self.registry.directory.summary(tenant)
            if end is None or summary is None:
                continue
            if topic in previous.ends:
                before = previous.ends[topic]
            elif previous.read_at or summary.created_at >= self._started_at:
                before = 0  # a topic new since, or a tenant onboarded since: all of it is recent
            else:
                before = end  # the first read is the baseline: older DLQ records do not count
            if end > before:
                grew_at[tenant] = now
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
