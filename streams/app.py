"""The Faust app factory. The entry points in `agents/` install agents and views onto the app."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TopicT, TransportT
from mode import ServiceT

from streams.settings import Settings
from streams.topics import TopicNames, TopicTable

# Fetches: how long the broker may hold one, and how much it waits for. Faust hard-codes a
# 1,500 ms wait for 1 byte. After a backlog its consumer then settled into a steady lag of about
# that much (measured: 1.1 s p50, 1.7 s p99 on the shared lane at 1,000 msg/s, long after the
# backlog had drained). Waiting for 1 byte, on the other hand, makes every consumer fetch a few
# records at a time under a steady load: at 1,700 msg/s the shared worker spent 80 % of a core
# (p50/p99 30/75 ms); with 20 ms / 16 KiB 54 % (22/46 ms). A quiet tenant's record waits at most
# 20 ms per hop for company.
FETCH_MAX_WAIT_MS = 20
FETCH_MIN_BYTES = 16 * 1024


class _PromptConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Both are read by start(), which builds the fetcher.
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        consumer._fetch_min_bytes = FETCH_MIN_BYTES
        return consumer


class _PromptConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _PromptConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _PromptTransport(faust_aiokafka.Transport):
    Consumer = _PromptConsumer


class LanewayApp(faust.App):
    """A Faust app that carries Laneway's settings and topics."""

    laneway: Settings
    topic_table: TopicTable
    topic_names: TopicNames
    # DLQ records this process wrote, by reason: faults it contained (internal_error,
    # unknown_tenant, event_too_large, kafka_refused) and messages' own errors.
    dlq_reasons: Counter[str]
    # Awaited before Faust starts its own Kafka clients (the worker waits for the broker there).
    startup_gate: Callable[[], Awaitable[None]] | None = None

    async def on_first_start(self) -> None:
        await super().on_first_start()
        if self.startup_gate is not None:
            await self.startup_gate()

    @property
    def producer_size_config(self) -> dict[str, int]:
        """aiokafka producer settings of the size contract: every Laneway producer uses them.
        (aiokafka's default batch size, 16 KiB, is far below any topic's limit.)"""
        return {"max_request_size": self.laneway.max_record_bytes}

    def add_service(self, service: ServiceT) -> None:
        """Start `service` with the app and stop it with the app."""
        self.service(service)  # type: ignore[arg-type]  # typed for classes; instances work too

    def _new_transport(self) -> TransportT:
        return _PromptTransport(self.conf.broker_consumer, self)

    def laneway_topic(self, *names: str) -> TopicT:
        """A Faust topic of Laneway's own, as the topic table specifies it. Faust declares one
        topic object's names alike, so they must share one spec."""
        specs = [self.topic_table.spec(name) for name in names]
        first = specs[0]
        if any(replace(spec, name=first.name) != first for spec in specs):
            raise ValueError(f"topics {names} differ in their specs")
        return self.topic(
            *names,
            key_type=bytes,
            value_type=bytes,
            partitions=first.partitions,
            replicas=first.replication,
            config=first.config,
            # Laneway owns these topics: Faust declares the ones its agents read before
            # subscribing to them.
            internal=True,
        )

    async def declare(self, *names: str) -> None:
        """Create the topics that are missing, as the topic table specifies them; an existing
        topic is kept as it is. Every topic Laneway creates goes through here, besides those
        Faust declares itself (`laneway_topic`)."""
        await asyncio.gather(*(self.laneway_topic(name).maybe_declare() for name in names))

    async def declare_ingress(self) -> None:
        """Create the ingress topic if missing; writers call this before their first send."""
        await self.declare(self.topic_names.ingress)


def create_app(settings: Settings | None = None, **overrides: Any) -> LanewayApp:
    """Build the Faust app from settings; keyword overrides go straight to Faust."""
    settings = settings or Settings()
    # One worker process per data dir: the web port is unique per process on a host.
    datadir = settings.data_dir.resolve() / f"{settings.app_id}-{settings.web_port}"
    datadir.parent.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    options: dict[str, Any] = {
        "broker": settings.broker_url,
        # RocksDB (rocksdict) holds tables; it never holds message content (invariant 5).
        "store": "rocksdb://",
        "datadir": str(datadir),
        "web_port": settings.web_port,
        "web_application_options": {"client_max_size": settings.http_body_limit},
        "web_bind": settings.web_host,
        "web_host": settings.web_host,
        # Faust's own views would expose table data, sensor stats and topic names of every
        # tenant; Laneway serves its own authorised views instead (invariant 4).
        "web_tables_enabled": False,
        "web_stats_enabled": False,
        "web_graph_enabled": False,
        "web_router_enabled": False,
        # Tenant ids are raw bytes on every topic and table, so keys hash alike everywhere.
        "key_serializer": "raw",
        "value_serializer": "raw",
        "producer_acks": -1,
        # A new consumer group starts at the oldest retained ingress record: nothing is skipped.
        "consumer_auto_offset_reset": "earliest",
        "topic_partitions": settings.ingress_partitions,
        "topic_replication_factor": settings.topic_replication,
        "producer_linger": 0.002,
        # The size contract (streams/settings.py, docs/limits.md).
        "producer_max_request_size": settings.max_record_bytes,
        "consumer_max_fetch_size": settings.max_fetch_bytes,
        # Frequent commits: the router reads them to know when a lane has drained a tenant.
        "broker_commit_interval": 0.5,
        # A crashed worker's partitions move to a live worker after ~10 s instead of Faust's 60 s.
        "broker_session_timeout": 10.0,
        "broker_heartbeat_interval": 1.0,
        "autodiscover": False,
    }
    options.update(overrides)
    app = LanewayApp(settings.app_id, **options)
    app.laneway = settings
    app.topic_table = TopicTable(settings)
    app.topic_names = app.topic_table.names
    app.dlq_reasons = Counter()
    return app
