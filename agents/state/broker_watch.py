"""The worker's view of Kafka: up or down, said once, and the gate that waits for it at start.

- `wait_for_broker` runs before Faust starts its own clients (`LanewayApp.startup_gate`): a
  worker started before the broker says once that it waits, and starts when the broker answers,
  instead of crashing or logging every retry.
- `BrokerWatch` probes the cluster's metadata twice a second. Ingest refuses at once while it is
  down (AR / 503) instead of letting writes pile up in the producer; `/metrics`, `/api/stats` and
  the dashboard show it; the log gets one line when the link is lost, a summary every 10 s while
  it stays lost, one line when it is back (`streams.outage_log.BrokerLink`).
- Every Kafka client's retry lines are held back by one `RepeatLimiter` on the log handlers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.metadata import MetadataRequest
from mode import Service

from streams.app import LanewayApp
from streams.outage_log import BrokerLink, RepeatLimiter, install_repeat_limiter

log = logging.getLogger(__name__)

PROBE_EVERY_S = 0.5
PROBE_TIMEOUT_S = 2.0
# The worker's whole process shares one limiter: the retry lines of every client are held back.
LIMITER = RepeatLimiter()


async def probe(client: AIOKafkaClient) -> tuple[int, str]:
    """(brokers in the cluster's metadata, error name): 0 brokers when nobody answers.

    It asks the known brokers, one after the other, for the broker list alone, no topic: a full
    metadata read grows with the topic count, and at 20,000 topics it outlasted the deadline
    (`make bench-tenants`), so a healthy cluster read as down and ingest refused everything.
    """
    error = "NoBrokerKnown"
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            for node_id in [broker.nodeId for broker in client.cluster.brokers()]:
                try:
                    response = await client.send(node_id, MetadataRequest([]))
                except Exception as failure:  # refused, reset: ask the next broker
                    error = type(failure).__name__
                    continue
                return len(response.brokers), ""
    except TimeoutError:
        error = "TimeoutError"
    return 0, error


async def _bootstrapped_client(app: LanewayApp) -> AIOKafkaClient:
    """A client that has reached the cluster once; raises (and closes it) when nobody answers."""
    client = AIOKafkaClient(
        bootstrap_servers=app.laneway.bootstrap_servers,
        request_timeout_ms=int(PROBE_TIMEOUT_S * 1000),
        client_id=f"{app.conf.id}-broker-watch",
    )
    try:
        await asyncio.wait_for(client.bootstrap(), PROBE_TIMEOUT_S)
    except BaseException:
        await client.close()
        raise
    return client


async def wait_for_broker(app: LanewayApp) -> None:
    """Return once a broker answers; until then say so once, then every 10 s."""
    install_repeat_limiter(LIMITER)
    link = BrokerLink()
    bootstrap = app.laneway.kafka_bootstrap
    while True:
        try:
            client = await _bootstrapped_client(app)
        except Exception as failure:
            brokers, error = 0, type(failure).__name__
        else:
            try:
                brokers, error = await probe(client)
            finally:
                await client.close()
        if brokers:
            if not link.up:
                log.warning("Kafka at %s answers: starting", bootstrap)
            return
        line = link.observe(False, time.monotonic(), error, LIMITER.take_held_back())
        if line is not None:
            # Each line is its own text: the repeat limiter must not take one for a retry.
            log.warning(f"waiting for Kafka at {bootstrap}: {line}")
        await asyncio.sleep(PROBE_EVERY_S)


class BrokerWatch(Service):
    """Is the cluster reachable, and how many brokers does its metadata list."""

    def __init__(self, app: LanewayApp, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.link = BrokerLink()
        self.brokers = 0
        self._client: AIOKafkaClient | None = None

    @property
    def up(self) -> bool:
        return self.link.up

    @property
    def down_since(self) -> float | None:
        """Wall-clock time the link was lost, None while it is up."""
        if self.link.down_since is None:
            return None
        return time.time() - (time.monotonic() - self.link.down_since)

    async def on_stop(self) -> None:
        if self._client is not None:
            await self._client.close()

    @Service.task
    async def _watch(self) -> None:
        while not self.should_stop:
            await self.check()
            await self.sleep(PROBE_EVERY_S)

    async def check(self) -> None:
        """Probe once and log whatever changed."""
        if self._client is None:
            try:
                self._client = await _bootstrapped_client(self.app)
            except Exception as failure:
                self._observe(0, type(failure).__name__)
                return
        self._observe(*await probe(self._client))

    def _observe(self, brokers: int, error: str) -> None:
        if brokers and self.brokers and brokers != self.brokers:
            # One broker of a cluster lost or back: clients carry on, the operator should know.
            log.warning("Kafka cluster lists %d brokers (was %d)", brokers, self.brokers)
        self.brokers = brokers
        line = self.link.observe(brokers > 0, time.monotonic(), error, LIMITER.take_held_back())
        if line is not None:
            # Each line is its own text: the repeat limiter must not take one for a retry.
            log.log(logging.INFO if self.link.up else logging.WARNING, line)


def install(app: LanewayApp) -> BrokerWatch:
    """Gate the app's start on the broker and watch it from then on."""
    app.startup_gate = lambda: wait_for_broker(app)
    watch = BrokerWatch(app)
    app.add_service(watch)
    return watch
