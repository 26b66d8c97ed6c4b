"""Idempotent Kafka producers that recover from a broken sequence by replacing themselves.

An idempotent producer numbers its batches per partition. When a batch fails after it was
numbered (it expired while the broker was away, or the broker refused it: measured after a broker
restart, `LeaderNotAvailable`), the broker never sees that number, so it refuses every later batch
on that partition with `OutOfOrderSequenceNumber`, forever. The Java client resets its producer id
in that case; aiokafka does not. `RenewingProducer` does it here: after any failed delivery it
starts a fresh producer (new producer id, sequences from 0) and retires the old one.

A failed write was not written, so writing it again through the new producer cannot duplicate it;
the callers decide whether to (the publisher retries, ingest answers AR / 503 and the sender
resends).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer

log = logging.getLogger(__name__)

T = TypeVar("T")

RETIRE_TIMEOUT_S = 10.0  # the old producer's last batches fail or land within this


class RenewingProducer:
    """An aiokafka producer (acks=all, idempotent) that `delivered` replaces after a failure."""

    def __init__(self, name: str, **config: Any) -> None:
        self.name = name
        self._config = {"acks": "all", "enable_idempotence": True, **config}
        self._producer: AIOKafkaProducer | None = None
        self._renewal: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self.renewals = 0

    @property
    def producer(self) -> AIOKafkaProducer:
        """The producer to send on now."""
        if self._producer is None:
            raise RuntimeError(f"{self.name} producer not started")
        return self._producer

    @property
    def started(self) -> bool:
        return self._producer is not None

    async def start(self) -> None:
        producer = AIOKafkaProducer(**self._config)
        await producer.start()
        self._producer = producer

    async def stop(self) -> None:
        if self._renewal is not None:
            self._renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewal
        if self._producer is not None:
            await self._producer.stop()
        await asyncio.gather(*self._retiring, return_exceptions=True)

    async def delivered(self, delivery: Awaitable[T], sent_on: AIOKafkaProducer) -> T:
        """Await a delivery made on `sent_on`; if it fails, renew that producer and re-raise."""
        try:
            return await delivery
        except asyncio.CancelledError:
            raise
        except Exception:
            self.renew(sent_on)
            raise

    def renew(self, broken: AIOKafkaProducer) -> None:
        """Replace `broken` with a fresh producer, unless that is already done or under way."""
        if broken is not self._producer or self._renewal is not None:
            return
        self._renewal = asyncio.ensure_future(self._renew(broken))

    async def _renew(self, broken: AIOKafkaProducer) -> None:
        try:
            delay = 0.1
            while True:
                fresh = AIOKafkaProducer(**self._config)
                try:
                    await fresh.start()
                    break
                except Exception:  # the broker is still away: the watch says so, not us
                    with contextlib.suppress(Exception):
                        await fresh.stop()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
            self._producer = fresh
            self.renewals += 1
            log.info("%s producer renewed after a failed delivery", self.name)
            retiring = asyncio.ensure_future(self._retire(broken))
            self._retiring.add(retiring)
            retiring.add_done_callback(self._retiring.discard)
        finally:
            self._renewal = None

    @staticmethod
    async def _retire(producer: AIOKafkaProducer) -> None:
        # stop() flushes what the old producer still holds; an idempotent producer retries
        # forever, so it is bounded here and whatever is left fails (its callers see that).
        try:
            await asyncio.wait_for(producer.stop(), RETIRE_TIMEOUT_S)
        except Exception as error:
            log.debug("retired producer did not stop cleanly: %s", type(error).__name__)
