"""Delivery of output records: acks=all, one record batch per topic partition.

Retriable failures (broker away, timeouts) are retried until Kafka acknowledges. A record Kafka
refuses as final (too large, invalid, corrupt) is parked instead: replaced by a DLQ record by
reference (`processing.park`), so one poison record never stalls its partition.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    BrokerResponseError,
    DuplicateSequenceNumber,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    OutOfOrderSequenceNumber,
    RecordTooLargeError,
    UnknownProducerId,
)

from agents.state.producers import RenewingProducer
from agents.state.topic_admin import create_topics, started_admin
from streams.app import LanewayApp
from streams.hl7 import Hl7Error
from streams.processing import KAFKA_REFUSED, OutgoingRecord, park

log = logging.getLogger(__name__)

# Largest record batch the publisher builds, unless the size contract's record limit is lower:
# a batch must fit the topic's record limit (streams/topics.py) as a whole.
_MAX_BATCH_BYTES = 1024 * 1024
_RETRY_FIRST_DELAY_S = 0.2
_RETRY_MAX_DELAY_S = 5.0
# Refusals of the producer's own sequence state, not of the records: the renewed producer
# (see agents.state.producers) sends them fine.
_PRODUCER_STATE_ERRORS = (
    OutOfOrderSequenceNumber,
    DuplicateSequenceNumber,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    UnknownProducerId,
)


def refused_as_final(error: BaseException) -> bool:
    """True if Kafka refused a batch for what it holds, so resending can never succeed:
    a non-retriable broker answer such as MessageSizeTooLarge, RecordListTooLarge or
    CorruptRecord, or aiokafka's own size check. Connection errors, timeouts, a closed
    producer and the producer's sequence errors are retriable."""
    if isinstance(error, RecordTooLargeError):
        return True
    return (
        isinstance(error, BrokerResponseError)
        and not error.retriable
        and not isinstance(error, _PRODUCER_STATE_ERRORS)
    )


class BatchPublisher:
    """Delivers output records with acks=all; creates per-tenant topics on first use.

    It owns an aiokafka producer and sends one record batch per topic partition, instead of one
    Faust `send()` per record: per-record producer overhead was ~15 % of the worker's CPU.
    Each per-tenant topic has one partition, so a batch keeps the tenant's order.

    Onboarding creates no topic: a tenant's output topic is created with its first event and
    its DLQ topic with its first reject, as the topic table specifies them, so an idle tenant
    costs the broker no partition and no client any metadata.
    """

    def __init__(self, app: LanewayApp) -> None:
        self._app = app
        # Topics created (or found) here -> the tenant incarnation they were declared for: an id
        # purged (its topics deleted, on any worker) and onboarded again is a new incarnation,
        # whose first records create them again. None: any (lane topics, records without one).
        self._known_topics: dict[str, str | None] = {}
        self._out_prefix = app.topic_names.out("")
        self._admin: AIOKafkaAdminClient | None = None
        self._producer = RenewingProducer(
            "output",
            bootstrap_servers=app.laneway.bootstrap_servers,
            **app.producer_size_config,
            max_batch_size=min(_MAX_BATCH_BYTES, app.laneway.max_record_bytes),
        )
        self._start_lock = asyncio.Lock()
        app.on_before_shutdown.connect(self._on_shutdown)  # type: ignore[arg-type]  # mode's receiver type is narrower than what it calls

    def declared(self, *topics: str) -> None:
        """Topics someone else created already: no need to declare them again."""
        self._known_topics.update(dict.fromkeys(topics))

    async def publish(self, outputs: list[OutgoingRecord]) -> dict[tuple[str, int], int]:
        """Deliver every output, or the DLQ record that replaces one Kafka refused as final.

        The batch's ingress offsets are acked when this returns, so a retriable failure is
        retried until Kafka acknowledges. A retry may duplicate outputs; duplicates carry the
        same idempotency key. Returns the offset of the last record written to each (topic,
        partition), parked records' DLQ included.
        """
        delay = _RETRY_FIRST_DELAY_S
        written: dict[tuple[str, int], int] = {}
        pending, one_per_batch = outputs, False
        while pending:
            try:
                delivered, refused = await self._send_all(pending, one_per_batch)
            except Exception as error:  # broker down or timing out: keep the batch, wait, retry
                # A topic may be gone since it was created here (a purge on any worker, and the
                # id onboarded again): the retry creates the batch's topics if they are missing.
                for record in pending:
                    self._known_topics.pop(record.topic, None)
                log.warning(
                    "publishing %d outputs failed (%s); retrying in %.1fs",
                    len(pending),
                    type(error).__name__,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_DELAY_S)
                continue
            written.update(delivered)
            pending, one_per_batch, stuck = [], False, False
            for records, refusal in refused:
                if len(records) > 1:  # which of them? Resend them one per batch to find out
                    pending.extend(records)
                    one_per_batch = True
                    continue
                replacement = self._parked(records[0], refusal)
                stuck = stuck or replacement is None
                pending.append(replacement or records[0])
            if stuck:
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_DELAY_S)
        return written

    def _parked(self, record: OutgoingRecord, error: BaseException) -> OutgoingRecord | None:
        """The by-reference DLQ record that replaces `record`, which Kafka refused as final;
        None if `record` cannot be parked, so it must be retried."""
        if record.origin is None or record.reason == KAFKA_REFUSED:
            # A parked record is small: Kafka refusing it is no fault of the record (say, a DLQ
            # topic's ACLs), and losing it is not an option.
            log.error(
                "Kafka refuses even a parked record to %s (%s); retrying",
                record.topic,
                type(error).__name__,
            )
            return None
        log.error(
            "Kafka refused an output to %s (%s): parked by reference",
            record.topic,
            type(error).__name__,
        )
        self._app.dlq_reasons[KAFKA_REFUSED] += 1
        detail = f"Kafka refused the output to {record.topic}: {type(error).__name__}"
        return park(record.origin, self._app.topic_names, Hl7Error(KAFKA_REFUSED, detail))

    async def _send_all(
        self, outputs: Iterable[OutgoingRecord], one_per_batch: bool
    ) -> tuple[dict[tuple[str, int], int], list[tuple[list[OutgoingRecord], BaseException]]]:
        producer = await self._started_producer()
        # A failed delivery, refused ones included, leaves the producer's sequence broken: the
        # producer is renewed and the next attempt goes out on the fresh one.
        written, refused = await self._producer.delivered(
            self._send_on(producer, outputs, one_per_batch), producer
        )
        if refused:
            self._producer.renew(producer)
        return written, refused

    async def _send_on(
        self, producer: AIOKafkaProducer, outputs: Iterable[OutgoingRecord], one_per_batch: bool
    ) -> tuple[dict[tuple[str, int], int], list[tuple[list[OutgoingRecord], BaseException]]]:
        """Send every output; returns the last offset written to each (topic, partition) and
        the records of each batch Kafka refused as final, with the refusal. Raises if any
        batch failed in a retriable way."""
        by_partition: dict[tuple[str, int], list[OutgoingRecord]] = defaultdict(list)
        for output in outputs:
            by_partition[output.topic, output.partition].append(output)
        due = {
            topic: incarnation
            for (topic, _), records in by_partition.items()
            if not self._known(topic, incarnation := self._incarnation(topic, records[0]))
        }
        if due:
            await self._declare(set(due))
            self._known_topics.update(due)
        await _look_up(producer, {topic for topic, _ in by_partition})
        pending = []
        batches: list[tuple[tuple[str, int], list[OutgoingRecord]]] = []
        for (topic, partition), records in by_partition.items():
            batch = producer.create_batch()
            in_batch: list[OutgoingRecord] = []
            for record in records:
                # append() refuses a record only when the batch is full and non-empty; an
                # empty batch takes any record, so this loop runs at most twice.
                while (one_per_batch and in_batch) or batch.append(
                    key=record.key, value=record.value, timestamp=None, headers=record.headers
                ) is None:
                    pending.append(await producer.send_batch(batch, topic, partition=partition))
                    batches.append(((topic, partition), in_batch))
                    batch, in_batch = producer.create_batch(), []
                in_batch.append(record)
            pending.append(await producer.send_batch(batch, topic, partition=partition))
            batches.append(((topic, partition), in_batch))
        # Every delivery is awaited, failed ones too (none is left unretrieved).
        delivered = await asyncio.gather(*pending, return_exceptions=True)
        written: dict[tuple[str, int], int] = {}
        refused: list[tuple[list[OutgoingRecord], BaseException]] = []
        for outcome, (destination, records) in zip(delivered, batches, strict=True):
            if isinstance(outcome, BaseException):
                if not refused_as_final(outcome):
                    raise outcome
                refused.append((records, outcome))
            else:
                # A batch's metadata carries its base offset; its last record is further on.
                last = outcome.offset + len(records) - 1
                written[destination] = max(written.get(destination, -1), last)
        return written, refused

    def _incarnation(self, topic: str, record: OutgoingRecord) -> str | None:
        """The tenant incarnation `record` is written for, if `topic` is one of a tenant's own."""
        if record.origin is None or not (record.is_dlq or topic.startswith(self._out_prefix)):
            return None
        return record.origin.record.incarnation

    def _known(self, topic: str, incarnation: str | None) -> bool:
        if topic not in self._known_topics:
            return False
        return incarnation is None or self._known_topics[topic] == incarnation

    async def _started_producer(self) -> AIOKafkaProducer:
        async with self._start_lock:
            if not self._producer.started:
                await self._producer.start()
            return self._producer.producer

    async def _declare(self, topics: set[str]) -> None:
        """Create those of `topics` that are missing, in one request (an existing topic is kept
        as it is). Raises if one could not be created: the batch is then retried."""
        async with self._start_lock:
            if self._admin is None:
                self._admin = await started_admin(
                    self._app.laneway.bootstrap_servers, self._app.topic_names.tenants
                )
        table = self._app.topic_table
        failed = await create_topics(self._admin, [table.spec(topic) for topic in sorted(topics)])
        if failed:
            raise TopicNotCreated(f"topics not created: {failed}")
        log.info("declared %d output topics", len(topics))

    async def _on_shutdown(self, app: LanewayApp, **_: Any) -> None:
        await self._producer.stop()
        if self._admin is not None:
            await self._admin.close()


async def _look_up(producer: AIOKafkaProducer, topics: Iterable[str]) -> None:
    """Fetch the metadata of those of `topics` the producer has not sent to yet, in one round.
    (send_batch looks a topic up one metadata round per topic, each round about every topic the
    producer tracks: O(topics²) when a thousand tenants send their first event together.)"""
    client = producer.client
    unknown = [topic for topic in topics if client.cluster.partitions_for_topic(topic) is None]
    await asyncio.gather(*(client.add_topic(topic) for topic in unknown))


class TopicNotCreated(RuntimeError):
    """Kafka did not create an output topic (the publisher retries the batch)."""
