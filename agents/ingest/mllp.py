"""The MLLP listener: HL7 v2 senders over TCP, served inside the worker process.

One asyncio task per connection, so hundreds of connections cost no threads. Bytes go through
`MllpDecoder`; every complete frame goes to `Ingest.from_mllp`, which splits it into messages
and makes all the HL7 decisions (header checks, sender -> tenant, paused, size, the durable
acks=all write per message), and the connection answers each message with whatever
`Ingest.acks` returns for it (none, one or two ACKs, as MSH-15/16 ask).

A connection handles its frames strictly one after another: the next frame is not looked at
before the previous frame's ACKs are written. ACKs therefore come back in order, and a sender's
messages reach ingress in the order it sent them.

Protocol problems, per connection:
- a frame over `frame_limit` is refused with AE naming the limit in bytes (echoing what the
  frame's first bytes tell of its MSH) and the connection is closed once the sender has
  finished writing the frame;
- bytes outside frames are skipped with a warning;
- broken framing (a VT inside a frame) closes the connection: the sender lost track of the
  framing, so nothing it sends next can be trusted to be whole;
- no progress for `mllp_idle_timeout_s` (no bytes from the sender, or ACKs it does not read)
  closes the connection.

An unexpected failure is logged (its type and place, never content) and closes that connection
only. Message bytes are never logged: they are PHI.

Resource limits (pure logic in streams/mllp_limits.py; docs/limits.md says what a sender gets):
- a connection over `mllp_max_connections`, or over `mllp_max_connections_per_source` from its
  source address, is closed as soon as it is accepted;
- a frame must end within `mllp_frame_timeout_s` of its VT, counting only the time spent waiting
  for the sender's bytes (or for buffer room), else the connection is closed (slowloris);
- partial frames of all connections together hold at most `buffer_limit` bytes: a connection
  that needs more stops being read (TCP pushes back on its sender) until others' frames end or
  are closed at their deadline. Frames that end within one read need no room, so small frames
  keep flowing while large partial ones fill the budget.

TLS (docs/ingest.md, "TLS"): a second server on `mllp_tls_port` when a certificate is set, and
the plaintext one only while `mllp_plaintext` holds. asyncio completes the handshake before a
connection reaches `_serve`, which then hands its verified client certificate to ingest with
the peer address. A failed handshake is counted and logged by `streams.tls`'s hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import ip_address
from ssl import SSLContext
from typing import Any, TypeVar

from mode import Service

from agents.ingest.accept import CLIENT_CERT_ERRORS, Ingest, IngestResult, Peer
from agents.state.registry import TenantRegistry
from streams.app import LanewayApp
from streams.hl7.ack import message_too_large
from streams.hl7.header import read_header_lenient
from streams.mllp import (
    FS,
    VT,
    Frame,
    FrameEvent,
    FramingError,
    FramingErrorKind,
    MllpDecoder,
    frame,
)
from streams.mllp_limits import BufferBudget, ConnectionGate, FrameClock, Hold, Limit
from streams.settings import Settings
from streams.tenants import Peer as PeerAddress
from streams.tls import mllp_tls_context, peer_certificate, report_handshake_failures

log = logging.getLogger(__name__)
T = TypeVar("T")

READ_BYTES = 64 * 1024
# Connections arriving together (a fleet reconnecting after a network blip) must not be
# refused by a full accept queue; the kernel caps this at net.core.somaxconn.
ACCEPT_BACKLOG = 1024
# After refusing an oversize frame, how long its sender may go on writing the rest of it.
# Closing a socket with unread input resets the connection, which can destroy the refusal
# before the sender reads it; bounded so that a sender cannot hold the connection this way.
OVERSIZE_LINGER_S = 10.0


@dataclass(slots=True)
class MllpCounters:
    """Running totals since start, for metrics, and the buffer budget (its `used` is a gauge)."""

    buffers: BufferBudget
    connections_open: int = 0
    connections_total: int = 0
    frames: int = 0
    acks: Counter[str] = field(default_factory=Counter)  # by MSA-1 code
    acks_withheld: int = 0  # messages MSH-15/16 asked no ACK for
    framing_errors: Counter[str] = field(default_factory=Counter)  # by FramingErrorKind
    stalled_closed: int = 0  # closed for no progress within the idle timeout
    connection_failures: int = 0  # closed by an unexpected error
    # By Limit: connections refused (total, per source), closed at the frame deadline, and
    # reads paused for lack of buffer room.
    limit_hits: Counter[Limit] = field(default_factory=Counter)
    tls_handshake_failures: Counter[str] = field(default_factory=Counter)  # by streams.tls kind
    client_cert_refusals: Counter[str] = field(default_factory=Counter)  # messages, by reason


def frame_limit(settings: Settings) -> int:
    """The largest MLLP frame read: a frame must be able to carry one message of the size
    contract (`max_message_bytes`), whatever `mllp_max_frame_bytes` says."""
    return max(settings.mllp_max_frame_bytes, settings.max_message_bytes)


def buffer_limit(settings: Settings) -> int:
    """Bytes all partial frames may hold together: at least one frame of `frame_limit`, so that
    a frame always fits once the others have let go."""
    return max(settings.mllp_max_buffered_bytes, frame_limit(settings))


class _Stalled(Exception):
    """No progress on a connection within the idle timeout."""


class _FrameTimeout(Exception):
    """A frame did not end within the frame deadline."""


class MllpListener(Service):
    """The MLLP servers on `mllp_host`: plaintext on `mllp_port`, TLS on `mllp_tls_port`; they
    open once the tenant registry is loaded.

    Raises `streams.tls.TlsConfigError` when the TLS settings cannot work: built with the app,
    so a worker fails at start, before it connects to anything."""

    def __init__(
        self, app: LanewayApp, registry: TenantRegistry, ingest: Ingest, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.registry = registry
        self.ingest = ingest
        settings = app.laneway
        self.counters = MllpCounters(BufferBudget(buffer_limit(settings)))
        self._gate = ConnectionGate(
            settings.mllp_max_connections, settings.mllp_max_connections_per_source
        )
        self._tls = mllp_tls_context(settings)
        if self._tls is not None:
            report_handshake_failures(self._tls, self._handshake_failed)
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()

    async def on_start(self) -> None:
        # Before the registry is loaded every sender would be refused as unknown.
        await self.registry.ready.wait()
        settings = self.app.laneway
        if settings.mllp_plaintext:
            await self._open(settings.mllp_port, None)
        if self._tls is not None:
            await self._open(settings.mllp_tls_port, self._tls)

    async def _open(self, port: int, tls: SSLContext | None) -> None:
        settings = self.app.laneway
        server = await asyncio.start_server(
            self._serve,
            settings.mllp_host,
            port,
            backlog=ACCEPT_BACKLOG,
            ssl=tls,
            ssl_handshake_timeout=settings.mllp_tls_handshake_timeout_s if tls else None,
        )
        self._servers.append(server)
        if tls is None:
            log.info("MLLP listener on %s:%d", settings.mllp_host, port)
            return
        clients = "verified" if settings.mllp_tls_client_ca_file else "not asked"
        log.info(
            "MLLP TLS listener on %s:%d (client certificates: %s)",
            settings.mllp_host,
            port,
            clients,
        )

    async def on_stop(self) -> None:
        for server in self._servers:
            server.close()  # stop accepting first, then end the open connections
        connections = list(self._connections)
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()

    def _handshake_failed(self, kind: str, detail: str) -> None:
        # asyncio does not say which address failed; the reason is OpenSSL's, never content.
        self.counters.tls_handshake_failures[kind] += 1
        log.warning("MLLP TLS handshake failed (%s): %s", kind, detail)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection from accept to close; asyncio runs it as a task of its own."""
        peer = _peer_address(writer)
        counters = self.counters
        refused = self._gate.admit(peer)
        if refused is not None:
            self._refuse(refused, peer, writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        counters.connections_open += 1
        counters.connections_total += 1
        try:
            certificate = peer_certificate(writer.get_extra_info("ssl_object"))
            await self._converse(reader, writer, Peer(peer, certificate))
        except asyncio.CancelledError:
            # Worker shutdown (on_stop). The task must end normally: Python 3.11's stream
            # callback calls task.exception(), which raises (and logs) for a cancelled task.
            pass
        except ConnectionError:
            pass  # the sender went away, possibly mid-frame: nothing left to answer
        except _Stalled as stall:
            counters.stalled_closed += 1
            log.info("closing MLLP connection from %s: %s", peer, stall)
            writer.transport.abort()  # whatever is still unsent will never be read
        except _FrameTimeout:
            counters.limit_hits[Limit.FRAME_TIMEOUT] += 1
            log.warning(
                "closing MLLP connection from %s: a frame did not end within "
                "LANEWAY_MLLP_FRAME_TIMEOUT_S (%s s)",
                peer,
                self.app.laneway.mllp_frame_timeout_s,
            )
            writer.transport.abort()
        except Exception as error:
            counters.connection_failures += 1
            log.error(
                "closing MLLP connection from %s after an unexpected %s at %s",
                peer,
                type(error).__name__,
                _where(error),  # the exception's text may quote message content
            )
        finally:
            counters.connections_open -= 1
            self._gate.leave(peer)
            self._connections.discard(task)
            writer.close()

    def _refuse(self, limit: Limit, peer: PeerAddress, writer: asyncio.StreamWriter) -> None:
        """Close a connection over a connection limit at once. MLLP has no refusal of its own:
        the sender sees the connection closed and, as after any lost connection, reconnects
        with back-off and resends what was not ACKed."""
        self.counters.limit_hits[limit] += 1
        if limit is Limit.CONNECTIONS_TOTAL:
            log.warning(
                "MLLP connection from %s refused: LANEWAY_MLLP_MAX_CONNECTIONS (%d) are open",
                peer,
                self._gate.max_total,
            )
        else:
            log.warning(
                "MLLP connection from %s refused: LANEWAY_MLLP_MAX_CONNECTIONS_PER_SOURCE (%d) "
                "are open from this address",
                peer,
                self._gate.max_per_source,
            )
        writer.close()

    async def _converse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer
    ) -> None:
        """Read, decode and answer until the sender closes or a framing error ends it.

        Each read is split after its last FS: the frames that end in it are answered first, with
        the room their partial start held; then the rest, the start of a frame that goes on, is
        buffered once the budget has room for it."""
        settings = self.app.laneway
        decoder = MllpDecoder(frame_limit(settings))
        clock = FrameClock(settings.mllp_frame_timeout_s)
        buffers, hold = self.counters.buffers, Hold()
        try:
            while data := await self._read(reader, clock if decoder.in_frame else None):
                ended = data.rfind(FS) + 1
                if ended:
                    if not await self._handle(decoder.feed(data[:ended]), reader, writer, peer):
                        return
                    buffers.try_resize(hold, decoder.buffered_bytes)  # a shrink: never waits
                rest = data[ended:]
                if not rest:
                    continue
                if VT in rest:
                    clock.restart()  # the deadline runs from the VT of the frame left partial
                await self._make_room(hold, decoder.buffered_after(rest), clock, peer)
                events = decoder.feed(rest)
                buffers.try_resize(hold, decoder.buffered_bytes)  # no frame ends in `rest`
                if not await self._handle(events, reader, writer, peer):
                    return
        finally:
            buffers.release(hold)

    async def _handle(
        self,
        events: list[FrameEvent],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: Peer,
    ) -> bool:
        """Answer the frames and framing errors of one feed; False when the connection ends."""
        for event in events:
            if isinstance(event, Frame):
                self.counters.frames += 1
                for result in await self.ingest.from_mllp(event.payload, peer):
                    await self._answer(result, writer)
            elif not await self._keep_going_after(event, reader, writer, peer):
                return False
        return True

    async def _make_room(self, hold: Hold, size: int, clock: FrameClock, peer: Peer) -> None:
        """Grow this connection's share of the buffer budget to `size`. While others' partial
        frames fill the budget, nothing is read: the sender's bytes wait in TCP buffers, and
        the wait counts against this frame's deadline."""
        buffers = self.counters.buffers
        if buffers.try_resize(hold, size):
            return
        self.counters.limit_hits[Limit.BUFFERED_BYTES] += 1
        log.warning(
            "MLLP partial frames fill LANEWAY_MLLP_MAX_BUFFERED_BYTES (%d bytes): "
            "reading paused on a connection from %s",
            buffers.capacity,
            peer,
        )
        await self._wait(buffers.resize(hold, size), clock, idle_timeout_s=None)

    async def _keep_going_after(
        self,
        error: FramingError,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: Peer,
    ) -> bool:
        """Handle a framing error; False when the connection must be closed."""
        self.counters.framing_errors[error.kind] += 1
        if error.kind is FramingErrorKind.GARBAGE:
            log.warning("MLLP sender %s: skipped bytes outside a frame", peer)
            return True
        if error.kind is FramingErrorKind.OVERSIZE:
            log.warning("MLLP sender %s: frame over the size limit, refused", peer)
            header = read_header_lenient(error.head)
            too_large = message_too_large(frame_limit(self.app.laneway), "Frame")
            refusal = IngestResult(header, None, error=too_large, reason="message_too_large")
            self.ingest.count_refusals("mllp", [refusal])
            await self._answer(refusal, writer)
            await self._linger(reader, writer)
            return False
        log.warning("MLLP sender %s: broken framing (start block inside a frame)", peer)
        return False

    async def _answer(self, result: IngestResult, writer: asyncio.StreamWriter) -> None:
        if result.reason in CLIENT_CERT_ERRORS:
            self.counters.client_cert_refusals[result.reason] += 1
        acks = self.ingest.acks(result, datetime.now(UTC))
        if not acks:
            self.counters.acks_withheld += 1
            return
        for ack in acks:
            self.counters.acks[ack.code] += 1
            writer.write(frame(ack.payload))
        try:
            async with asyncio.timeout(self.app.laneway.mllp_idle_timeout_s):
                await writer.drain()  # a sender that never reads its ACKs must not pile them up
        except TimeoutError:
            raise _Stalled("the sender does not read its ACKs") from None

    async def _read(self, reader: asyncio.StreamReader, clock: FrameClock | None) -> bytes:
        """The next bytes from the sender, b"" once it has closed its side; `clock`: the frame
        being received, if any."""
        idle_timeout_s = self.app.laneway.mllp_idle_timeout_s
        return await self._wait(reader.read(READ_BYTES), clock, idle_timeout_s=idle_timeout_s)

    async def _wait(
        self, waiting: Awaitable[T], clock: FrameClock | None, *, idle_timeout_s: float | None
    ) -> T:
        """`waiting`, within the idle timeout and the frame's deadline, whichever comes first;
        the time it took is charged to the frame's clock."""
        frame_s = None if clock is None else clock.remaining()
        timeouts = [s for s in (idle_timeout_s, frame_s) if s is not None]
        started = time.monotonic()
        try:
            async with asyncio.timeout(min(timeouts) if timeouts else None):
                return await waiting
        except TimeoutError:
            if frame_s is not None and (idle_timeout_s is None or frame_s <= idle_timeout_s):
                raise _FrameTimeout from None
            raise _Stalled("no bytes from the sender within the idle timeout") from None
        finally:
            if clock is not None:
                clock.charge(time.monotonic() - started)

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Signal the end of our answers, then discard what the sender still writes."""
        if writer.can_write_eof():
            writer.write_eof()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(OVERSIZE_LINGER_S):
                while await reader.read(READ_BYTES):
                    pass


def _peer_address(writer: asyncio.StreamWriter) -> PeerAddress:
    """The sender's IP address (sender identities can be limited to networks), None if unknown."""
    peername = writer.get_extra_info("peername")
    try:
        return ip_address(peername[0])
    except (TypeError, IndexError, ValueError):
        return None


def _where(error: BaseException) -> str:
    """file:line of the innermost frame of `error`, for logs that must not quote its text."""
    frames = traceback.extract_tb(error.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "unknown"
