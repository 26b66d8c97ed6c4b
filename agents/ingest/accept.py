"""Accepting messages from senders (MLLP and HTTP): check, route to a tenant, write durably.

A message is accepted only once Kafka has acknowledged its ingress record with acks=all; only
then may a sender get AA/CA (or HTTP 202). Header problems and a message over
`max_message_bytes` are errors (AE), an unknown or paused sender or a broker failure is a reject
(AR). A tenant that requires a client certificate hears AE over an MLLP connection that did not
present it (not AR: resending over the same connection can never succeed). Rate ceilings run on
monotonic time and hold per deployment, whatever the number of accepting workers
(streams/ceiling.py). Message bodies are never logged. What a sender gets in each case:
docs/ingest.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from agents.ingest.writer import IngestUnavailable, IngressWriter
from agents.state.registry import TenantRegistry
from streams.ceiling import SharedCeilings
from streams.gcra import Gcra
from streams.hl7 import Hl7Error, split_batch
from streams.hl7.ack import (
    AN_EARLIER_MESSAGE_WAS_REFUSED,
    BROKER_FAILURE,
    MIXED_SENDERS,
    RATE_CEILING,
    SENDER_PAUSED,
    UNKNOWN_SENDER,
    AckError,
    Acknowledgment,
    ErrorCondition,
    acknowledge,
    error_for,
    message_too_large,
)
from streams.hl7.header import MessageHeader, PartialHeader, read_header, read_header_lenient
from streams.mllp import OVERSIZE_HEAD_BYTES
from streams.tenants import Peer as PeerAddress
from streams.tenants import TenantRecord
from streams.tls import CERT_MISMATCH, CERT_REQUIRED, PeerCertificate

log = logging.getLogger(__name__)
IngestPath = Literal["mllp", "http"]

# Errors (AE), not rejects (AR): AR tells the sender to resend, and a resend over the same
# connection cannot succeed until its certificate or the tenant's binding changes.
CLIENT_CERT_ERRORS = {
    CERT_REQUIRED: AckError(ErrorCondition.UNKNOWN_KEY_IDENTIFIER, "Client certificate required"),
    CERT_MISMATCH: AckError(
        ErrorCondition.UNKNOWN_KEY_IDENTIFIER, "Client certificate does not match"
    ),
}

# Longest an MLLP ACK is held for the rate ceiling: beyond it, senders time out and resend.
MAX_ACK_HOLD_S = 10.0


@dataclass(frozen=True, slots=True)
class Peer:
    """Where an MLLP connection comes from and the client certificate it proved over TLS."""

    address: PeerAddress = None  # None when the listener could not tell
    certificate: PeerCertificate | None = None  # None: plaintext, or TLS without one

    def __str__(self) -> str:
        return str(self.address)  # what logs name: never the certificate


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What happened to one message. `reason` is a stable machine-readable code when rejected."""

    header: MessageHeader | PartialHeader
    tenant_id: str | None
    error: AckError | None = None
    reason: str | None = None
    partition: int | None = None
    offset: int | None = None
    retry_after_s: float | None = None

    @property
    def accepted(self) -> bool:
        return self.error is None

    @property
    def control_id(self) -> str:
        return self.header.control_id


@dataclass(frozen=True, slots=True)
class _Checked:
    """One message of a frame or body after the checks that need no tenant."""

    raw: bytes
    header: MessageHeader | PartialHeader
    refusal: tuple[AckError, str] | None = None  # the error and its reason code


class Ingest:
    """The checks and the write shared by the MLLP listener and the HTTP endpoint.

    Both hand over a whole frame or body, which is split into messages (`split_batch`) and
    answered per message, in order:
    - every message must belong to the same tenant, else none is written;
    - each accepted message is one ingress record; rate ceilings count messages;
    - after the first refused message every later one is refused too
      (`an_earlier_message_was_refused`), so that a resend from there keeps the sender's order.
    """

    def __init__(
        self,
        registry: TenantRegistry,
        writer: IngressWriter,
        tenant_states: Mapping[str, Mapping[str, Any]],
    ) -> None:
        """`tenant_states`: tenant id -> its state document, as the tenant-state mirror keeps
        them (the deployment's rate of each tenant, for the shared ceiling)."""
        self.registry = registry
        self.writer = writer
        self._tenant_states = tenant_states
        settings = registry.app.laneway
        # The hard ceiling, `ingest_ceiling_factor` x each tenant's contract per deployment:
        # this worker's GCRA at its share of it.
        self._ceilings = SharedCeilings(
            settings.ingest_ceiling_factor, settings.default_rate_per_s, settings.default_burst
        )
        self.max_message_bytes = settings.max_message_bytes
        self._too_large = message_too_large(settings.max_message_bytes)
        # ACK control ids: unique per process and restart (pid + counter), no coordination.
        self._ack_ids = (f"LW{os.getpid()}-{n}" for n in itertools.count(1))
        # For /metrics: messages refused at ingest by (path, reason), and MLLP frames whose
        # ACKs were held at the rate ceiling.
        self.refusals: Counter[tuple[IngestPath, str]] = Counter()
        self.ceiling_holds = 0

    def count_refusals(self, path: IngestPath, results: list[IngestResult]) -> list[IngestResult]:
        for result in results:
            if result.reason is not None:
                self.refusals[path, result.reason] += 1
        return results

    async def from_mllp(self, payload: bytes, peer: Peer) -> list[IngestResult]:
        """An MLLP frame: the tenant is whoever registered the MSH-3/MSH-4 sender identity of
        every message in it. Messages from different senders refuse the whole frame, and so does
        a tenant that requires a client certificate the connection did not present."""
        return self.count_refusals("mllp", await self._frame(payload, peer))

    async def from_http(self, tenant_id: str, payload: bytes) -> list[IngestResult]:
        """An HTTP body: the authenticated path names the tenant, no message may claim another.

        Raises `Hl7Error` when the body cannot be split into messages.
        """
        return self.count_refusals("http", await self._body(tenant_id, payload))

    async def _frame(self, payload: bytes, peer: Peer) -> list[IngestResult]:
        try:
            messages = [self._check(raw) for raw in split_batch(payload)]
        except Hl7Error as error:
            return [_refused(read_header_lenient(payload), None, error_for(error), error.code)]
        tenant_ids = {self._claimed_by(message.header, peer.address) for message in messages}
        if len(tenant_ids) > 1:
            return [_refused(m.header, None, MIXED_SENDERS, "mixed_senders") for m in messages]
        [tenant_id] = tenant_ids
        if tenant_id is None:
            return [
                _refused(m.header, None, *(m.refusal or (UNKNOWN_SENDER, "unknown_sender")))
                for m in messages
            ]
        tenant = self.registry.directory.get(tenant_id)
        refusal = tenant.client_cert_refusal(peer.certificate) if tenant is not None else None
        if refusal is not None:
            # Before the rate ceiling: a sender that cannot prove itself spends none of it.
            log.warning("MLLP frame for tenant %s from %s refused: %s", tenant_id, peer, refusal)
            cert_error = CLIENT_CERT_ERRORS[refusal]
            return [_refused(m.header, tenant_id, cert_error, refusal) for m in messages]
        if tenant is not None and not tenant.paused:
            # Over the ceiling, MLLP slows the sender: its ACKs (and next frame) wait.
            hold = _admit(self._ceiling(tenant), time.monotonic(), len(messages))
            if hold > 0:
                self.ceiling_holds += 1
                await asyncio.sleep(min(hold, MAX_ACK_HOLD_S))
        return await self._in_order(messages, tenant_id, ceiling=None)

    async def _body(self, tenant_id: str, payload: bytes) -> list[IngestResult]:
        messages = [self._check(raw) for raw in split_batch(payload)]
        claims = [self._claimed_by(message.header, None) for message in messages]
        if any(claim not in (None, tenant_id) for claim in claims):
            # A's token must never put a message that claims to be B's into any topic, nor
            # the rest of a body that tried to.
            return [
                _refused(m.header, tenant_id, UNKNOWN_SENDER, "sender_of_another_tenant")
                if claim not in (None, tenant_id)
                else _refused(m.header, tenant_id, MIXED_SENDERS, "body_claims_another_tenant")
                for m, claim in zip(messages, claims, strict=True)
            ]
        tenant = self.registry.directory.get(tenant_id)
        # Over the ceiling, HTTP answers 429 and the sender retries after the delay.
        ceiling = self._ceiling(tenant) if tenant is not None else None
        return await self._in_order(messages, tenant_id, ceiling=ceiling)

    def _check(self, raw: bytes) -> _Checked:
        if len(raw) > self.max_message_bytes:
            # The MSH is at the start: reading the head is enough to answer.
            header = read_header_lenient(raw[:OVERSIZE_HEAD_BYTES])
            return _Checked(raw, header, (self._too_large, "message_too_large"))
        try:
            return _Checked(raw, read_header(raw))
        except Hl7Error as error:
            return _Checked(raw, read_header_lenient(raw), (error_for(error), error.code))

    def _claimed_by(
        self, header: MessageHeader | PartialHeader, address: PeerAddress
    ) -> str | None:
        return self.registry.directory.resolve_sender(
            header.sending_application, header.sending_facility, address
        )

    async def _in_order(
        self, messages: list[_Checked], tenant_id: str, *, ceiling: Gcra | None
    ) -> list[IngestResult]:
        """Write the messages one after another until the first refusal, refuse the rest."""
        results: list[IngestResult] = []
        for message in messages:
            if results and not results[-1].accepted:
                error, reason = AN_EARLIER_MESSAGE_WAS_REFUSED, "an_earlier_message_was_refused"
                results.append(_refused(message.header, tenant_id, error, reason))
            elif message.refusal is not None:
                results.append(_refused(message.header, tenant_id, *message.refusal))
            else:
                assert isinstance(message.header, MessageHeader)  # no error: a full header
                results.append(await self._write(message.header, tenant_id, message.raw, ceiling))
        return results

    def _ceiling(self, tenant: TenantRecord) -> Gcra:
        """The tenant's limiter at this worker's share of its ceiling, as of now."""
        state = self._tenant_states.get(tenant.id)
        return self._ceilings.limiter(
            tenant.id, tenant.rate_per_s, tenant.burst, state, time.monotonic()
        )

    async def _write(
        self, header: MessageHeader, tenant_id: str, raw: bytes, ceiling: Gcra | None
    ) -> IngestResult:
        tenant = self.registry.directory.get(tenant_id)
        if tenant is None:
            return _refused(header, tenant_id, UNKNOWN_SENDER, "unknown_tenant")
        if tenant.paused:
            return _refused(header, tenant_id, SENDER_PAUSED, "tenant_paused")
        if ceiling is not None:
            wait = ceiling.delay(time.monotonic())
            if wait > 0:
                refused = _refused(header, tenant_id, RATE_CEILING, "rate_ceiling")
                return dataclasses.replace(refused, retry_after_s=wait)
            ceiling.admit(time.monotonic())
        try:
            partition, offset = await self.writer.write(tenant_id, raw)
        except IngestUnavailable as error:
            log.warning("ingress write for tenant %s failed: %s", tenant_id, error)
            return _refused(header, tenant_id, BROKER_FAILURE, "broker_unavailable")
        self._ceilings.count(tenant_id, time.monotonic())  # what this worker's share is made of
        return IngestResult(header, tenant_id, partition=partition, offset=offset)

    def acks(self, result: IngestResult, now: datetime) -> list[Acknowledgment]:
        """The HL7 ACKs for `result`, in order: none, one or two, as MSH-15/16 ask."""
        return acknowledge(result.header, result.error, control_ids=self._ack_ids, now=now)


def _admit(ceiling: Gcra, now: float, n: int) -> float:
    """Count `n` messages against `ceiling`; how long to hold them. A GCRA admits at most its
    burst at once, so a larger frame is counted in bursts: the last one's hold is the frame's."""
    hold = 0.0
    while n > 0:
        chunk = min(n, ceiling.burst)
        hold = ceiling.admit(now, chunk)
        n -= chunk
    return hold


def _refused(
    header: MessageHeader | PartialHeader, tenant_id: str | None, error: AckError, reason: str
) -> IngestResult:
    return IngestResult(header, tenant_id, error=error, reason=reason)
