"""MLLP framing and the incremental decoder, on synthetic payloads (no sockets, no PHI)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.mllp import (
    OVERSIZE_HEAD_BYTES,
    Frame,
    FrameEvent,
    FramingError,
    FramingErrorKind,
    MllpDecoder,
    frame,
)

MESSAGE = b"MSH|^~\\&|SIM|FAC|||20240101||ADT^A01|CTRL1|P|2.5\rPID|1||MRN1\r"
GARBAGE = FramingError(FramingErrorKind.GARBAGE)
BROKEN = FramingError(FramingErrorKind.BROKEN_FRAMING)

# Payload bytes: anything but the two block characters, which cannot occur inside a frame.
_payloads = st.binary(max_size=300).map(lambda raw: raw.replace(b"\x0b", b"").replace(b"\x1c", b""))


def _feed_in_chunks(decoder: MllpDecoder, stream: bytes, cuts: list[int]) -> list[FrameEvent]:
    events: list[FrameEvent] = []
    start = 0
    for cut in [*sorted(cuts), len(stream)]:
        events += decoder.feed(stream[start:cut])
        start = cut
    return events


def test_frame_wraps_the_payload_in_vt_and_fs_cr() -> None:
    assert frame(MESSAGE) == b"\x0b" + MESSAGE + b"\x1c\r"


def test_decoder_returns_a_complete_frame() -> None:
    assert MllpDecoder(1024).feed(frame(MESSAGE)) == [Frame(MESSAGE)]


def test_decoder_returns_back_to_back_frames_in_order() -> None:
    payloads = [MESSAGE, b"MSH|second\r", b"MSH|third\r"]

    events = MllpDecoder(1024).feed(b"".join(frame(payload) for payload in payloads))

    assert events == [Frame(payload) for payload in payloads]


def test_decoder_returns_an_empty_frame() -> None:
    assert MllpDecoder(1024).feed(b"\x0b\x1c\r" + frame(MESSAGE)) == [Frame(b""), Frame(MESSAGE)]


def test_decoder_waits_for_the_end_block() -> None:
    decoder = MllpDecoder(1024)

    assert decoder.feed(b"\x0b" + MESSAGE) == []
    assert decoder.feed(b"\x1c") == [Frame(MESSAGE)]


def test_decoder_accepts_a_missing_trailing_cr() -> None:
    decoder = MllpDecoder(1024)

    assert decoder.feed(b"\x0bONE\x1c") == [Frame(b"ONE")]
    assert decoder.feed(b"\x0bTWO\x1c\x0bTHREE\x1c\r") == [Frame(b"TWO"), Frame(b"THREE")]


def test_decoder_consumes_the_cr_of_the_end_block_split_from_its_fs() -> None:
    decoder = MllpDecoder(1024)

    assert decoder.feed(b"\x0bONE\x1c") == [Frame(b"ONE")]
    # The CR belongs to the end block: neither garbage nor part of the next frame.
    assert decoder.feed(b"\r\x0bTWO\x1c\r") == [Frame(b"TWO")]


def test_decoder_ignores_whitespace_between_frames() -> None:
    stream = b"\r\n" + frame(b"ONE") + b"\n\r\n  \t" + frame(b"TWO") + b"\r\n"

    assert MllpDecoder(1024).feed(stream) == [Frame(b"ONE"), Frame(b"TWO")]


def test_decoder_reports_garbage_once_and_resyncs_at_the_next_vt() -> None:
    decoder = MllpDecoder(1024)

    assert decoder.feed(b"HELLO") == [GARBAGE]
    assert decoder.feed(b" MORE NOISE \x1c\r") == []  # the same run: reported once
    assert decoder.feed(frame(b"ONE") + b"JUNK" + frame(b"TWO")) == [
        Frame(b"ONE"),
        GARBAGE,
        Frame(b"TWO"),
    ]


def test_decoder_reports_a_vt_inside_a_frame_and_keeps_the_new_frame() -> None:
    decoder = MllpDecoder(1024)

    assert decoder.feed(b"\x0bPARTIAL") == []
    assert decoder.feed(b"\x0bWHOLE\x1c\r") == [BROKEN, Frame(b"WHOLE")]


def test_decoder_accepts_a_frame_of_exactly_the_limit() -> None:
    decoder = MllpDecoder(10)

    assert decoder.feed(frame(b"0123456789")) == [Frame(b"0123456789")]


def test_decoder_reports_oversize_as_soon_as_the_limit_is_passed() -> None:
    decoder = MllpDecoder(10)

    assert decoder.feed(b"\x0b0123456789") == []
    assert decoder.feed(b"X") == [
        FramingError(FramingErrorKind.OVERSIZE, head=b"0123456789X"[:OVERSIZE_HEAD_BYTES])
    ]
    # The rest of the oversize frame is skipped; the next frame decodes normally.
    assert decoder.feed(b"more of the same\x1c\r" + frame(b"NEXT")) == [Frame(b"NEXT")]


def test_decoder_oversize_head_holds_the_start_of_the_frame() -> None:
    payload = MESSAGE + b"OBX|" + b"9" * (3 * OVERSIZE_HEAD_BYTES)
    decoder = MllpDecoder(2 * OVERSIZE_HEAD_BYTES)

    events = decoder.feed(b"\x0b" + payload[:100]) + decoder.feed(payload[100:])

    assert events == [FramingError(FramingErrorKind.OVERSIZE, payload[:OVERSIZE_HEAD_BYTES])]


def test_decoder_restarts_at_a_vt_inside_an_oversize_frame() -> None:
    decoder = MllpDecoder(4)

    events = decoder.feed(b"\x0bTOO LONG" + frame(b"OK"))

    assert events == [FramingError(FramingErrorKind.OVERSIZE, b"TOO L"), Frame(b"OK")]


def test_decoder_reports_a_10_mb_frame_without_reading_it_whole() -> None:
    chunk = 64 * 1024
    decoder = MllpDecoder(1024 * 1024)
    stream = b"\x0b" + MESSAGE + b"X" * (10 * 1024 * 1024) + b"\x1c\r" + frame(b"NEXT")

    events_per_chunk = [decoder.feed(stream[i : i + chunk]) for i in range(0, len(stream), chunk)]

    oversize_chunks = [index for index, events in enumerate(events_per_chunk) if events]
    # Reported in the chunk where byte 1 MiB + 1 of the payload arrives, not at the FS.
    assert oversize_chunks[0] == (1 + 1024 * 1024) // chunk
    assert events_per_chunk[oversize_chunks[0]][0] == FramingError(
        FramingErrorKind.OVERSIZE, MESSAGE + b"X" * (OVERSIZE_HEAD_BYTES - len(MESSAGE))
    )
    assert events_per_chunk[-1] == [Frame(b"NEXT")]
    assert len(oversize_chunks) == 2


def test_decoder_handles_100k_frames_in_one_feed_in_linear_time() -> None:
    payloads = [b"MSH|^~\\&|SIM|FAC|||20240101||ADT^A01|C%06d|P|2.5\r" % n for n in range(100_000)]
    stream = b"".join(frame(payload) for payload in payloads)

    started = time.perf_counter()
    events = MllpDecoder(1024).feed(stream)
    elapsed = time.perf_counter() - started

    assert events == [Frame(payload) for payload in payloads]
    # Linear decoding takes a fraction of a second; rescanning the stream per frame would take
    # hours. The bound is loose so that a slow CI machine cannot fail it.
    assert elapsed < 5


@given(
    payloads=st.lists(_payloads, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
    trailing_cr=st.booleans(),
)
def test_any_chunking_yields_the_same_frames(
    payloads: list[bytes], cuts: list[int], trailing_cr: bool
) -> None:
    stream = b"".join(
        frame(payload) if trailing_cr else frame(payload)[:-1] for payload in payloads
    )
    cuts = [cut % (len(stream) + 1) for cut in cuts]

    events = _feed_in_chunks(MllpDecoder(300), stream, cuts)

    assert events == [Frame(payload) for payload in payloads]


@given(
    payloads=st.lists(_payloads, min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
    limit=st.integers(min_value=1, max_value=400),
)
def test_any_chunking_yields_the_same_events_with_oversize_frames(
    payloads: list[bytes], cuts: list[int], limit: int
) -> None:
    stream = b"".join(frame(payload) for payload in payloads)
    cuts = [cut % (len(stream) + 1) for cut in cuts]

    events = _feed_in_chunks(MllpDecoder(limit), stream, cuts)

    assert events == [
        Frame(payload)
        if len(payload) <= limit
        else FramingError(FramingErrorKind.OVERSIZE, payload[: min(limit + 1, OVERSIZE_HEAD_BYTES)])
        for payload in payloads
    ]


def test_decoder_rejects_a_non_positive_limit() -> None:
    with pytest.raises(ValueError, match="max_frame_bytes"):
        MllpDecoder(0)


@given(
    pieces=st.lists(
        st.tuples(st.binary(max_size=20).map(lambda raw: raw.replace(b"\x0b", b"")), _payloads),
        max_size=6,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
)
def test_any_chunking_yields_the_same_events_with_bytes_between_frames(
    pieces: list[tuple[bytes, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(gap + frame(payload) for gap, payload in pieces)
    cuts = [cut % (len(stream) + 1) for cut in cuts]

    events = _feed_in_chunks(MllpDecoder(300), stream, cuts)

    expected: list[FrameEvent] = []
    for gap, payload in pieces:
        if gap.strip(b" \t\r\n"):
            expected.append(GARBAGE)
        expected.append(Frame(payload))
    assert events == expected
