"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol): <VT> payload <FS><CR>, without sockets.

`MllpDecoder` turns a byte stream, in whatever chunks the network delivers it, into frames and
reports protocol problems as values, so the connection handler decides what to answer (an ACK
with an error, closing the connection) and nothing here raises on bad input. Leniency choices:

- FS ends a frame on its own and a CR right after it is consumed: many senders omit the CR,
  and waiting for it would stall a sender that waits for our ACK.
- Whitespace between frames (a stray CR, LF or CRLF after FS) is ignored silently; any other
  byte outside a frame is garbage: skipped up to the next VT and reported once per run.
- A VT inside a frame means the sender restarted: the partial frame is dropped, reported as
  broken framing, and a new frame starts at that VT.
- A frame growing past `max_frame_bytes` is reported as oversize as soon as the limit is passed,
  then skipped without buffering up to its FS (or a VT starting the next frame).

Every byte is looked at a bounded number of times (`bytes.find` bounded by the frame's extent,
buffering only for frames split across chunks), so decoding is O(n) in the stream length.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum

VT = 0x0B  # start block
FS = 0x1C  # end block
CR = 0x0D
_START_BLOCK = bytes((VT,))
_END_BLOCK = bytes((FS,))
_FRAME_END = bytes((FS, CR))
_WHITESPACE = b" \t\r\n"
# Enough to hold the MSH of an oversize frame, so that its rejection can still echo MSH-10.
OVERSIZE_HEAD_BYTES = 4096


def frame(payload: bytes) -> bytes:
    """`payload` (a message, segments ended by CR) wrapped for sending."""
    return _START_BLOCK + payload + _FRAME_END


@dataclass(slots=True, frozen=True)
class Frame:
    payload: bytes  # without VT, FS and CR


class FramingErrorKind(StrEnum):
    GARBAGE = "garbage"  # bytes outside a frame
    OVERSIZE = "oversize"  # a frame longer than max_frame_bytes
    BROKEN_FRAMING = "broken_framing"  # a VT inside a frame


@dataclass(slots=True, frozen=True)
class FramingError:
    kind: FramingErrorKind
    # Oversize only: the first OVERSIZE_HEAD_BYTES of the frame, to read its MSH for the ACK.
    # Message content (PHI): parse it, never log it.
    head: bytes = b""


FrameEvent = Frame | FramingError


class _State(Enum):
    OUTSIDE = "outside"  # between frames, looking for VT
    IN_FRAME = "in_frame"  # after VT, looking for FS
    AFTER_END = "after_end"  # right after FS: a CR here is the end block's
    SKIPPING = "skipping"  # inside an oversize frame, looking for its end


class MllpDecoder:
    """Incremental MLLP decoder for one connection: `feed` whatever arrived, get the events."""

    def __init__(self, max_frame_bytes: int) -> None:
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be positive")
        self._max_frame_bytes = max_frame_bytes
        self._state = _State.OUTSIDE
        self._partial = bytearray()  # the start of a frame split across chunks
        self._garbage_reported = False

    @property
    def buffered_bytes(self) -> int:
        """Bytes of the partial frame held now."""
        return len(self._partial)

    @property
    def in_frame(self) -> bool:
        """Between a frame's VT and its end (FS, or the VT of the next frame)."""
        return self._state in (_State.IN_FRAME, _State.SKIPPING)

    def buffered_after(self, data: bytes) -> int:
        """At least `buffered_bytes` once `data` is fed, at most the frame limit: the room a
        connection needs before it feeds `data`. Exact unless `data` makes a frame oversize."""
        start, end = data.rfind(_START_BLOCK), data.rfind(_END_BLOCK)
        if start > end:  # a frame starts in `data` and does not end there
            held = len(data) - start - 1
        elif end != -1:  # the last frame in `data` ends in it
            held = 0
        else:
            held = len(self._partial) + len(data) if self._state is _State.IN_FRAME else 0
        return min(held, self._max_frame_bytes)

    def feed(self, data: bytes) -> list[FrameEvent]:
        events: list[FrameEvent] = []
        position, length = 0, len(data)
        while position < length:
            state = self._state
            if state is _State.IN_FRAME:
                position = self._read_frame(data, position, events)
            elif state is _State.OUTSIDE:
                position = self._skip_to_frame(data, position, events)
            elif state is _State.AFTER_END:
                if data[position] == CR:
                    position += 1
                self._state = _State.OUTSIDE
            else:
                position = self._skip_oversize(data, position)
        return events

    def _read_frame(self, data: bytes, position: int, events: list[FrameEvent]) -> int:
        partial = self._partial
        # Look no further than one byte past the limit: enough to tell an FS at the limit from
        # an oversize frame, and never a scan (or buffer) of a whole 10 MB frame.
        limit = min(len(data), position + self._max_frame_bytes - len(partial) + 1)
        end = data.find(_END_BLOCK, position, limit)
        restart = data.find(_START_BLOCK, position, limit if end == -1 else end)
        if restart != -1:
            events.append(FramingError(FramingErrorKind.BROKEN_FRAMING))
            partial.clear()
            return restart + 1
        if end != -1:
            payload = data[position:end]
            if partial:
                payload = bytes(partial + payload)
                partial.clear()
            events.append(Frame(payload))
            self._state = _State.AFTER_END
            return end + 1
        if len(partial) + limit - position > self._max_frame_bytes:
            # What was read of the frame (max_frame_bytes + 1 bytes), cut to the head's size.
            head = bytes(partial[:OVERSIZE_HEAD_BYTES])
            head += data[position : min(limit, position + OVERSIZE_HEAD_BYTES - len(head))]
            events.append(FramingError(FramingErrorKind.OVERSIZE, head))
            partial.clear()
            self._state = _State.SKIPPING
            return limit
        partial += data[position:limit]
        return limit

    def _skip_to_frame(self, data: bytes, position: int, events: list[FrameEvent]) -> int:
        start = data.find(_START_BLOCK, position)
        between = data[position : len(data) if start == -1 else start]
        if between.strip(_WHITESPACE) and not self._garbage_reported:
            events.append(FramingError(FramingErrorKind.GARBAGE))
            self._garbage_reported = True
        if start == -1:
            return len(data)
        self._garbage_reported = False
        self._state = _State.IN_FRAME
        return start + 1

    def _skip_oversize(self, data: bytes, position: int) -> int:
        end = data.find(_END_BLOCK, position)
        restart = data.find(_START_BLOCK, position, len(data) if end == -1 else end)
        if restart != -1:
            self._state = _State.IN_FRAME
            return restart + 1
        if end != -1:
            self._state = _State.AFTER_END
            return end + 1
        return len(data)
