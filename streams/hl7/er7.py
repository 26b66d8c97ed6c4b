"""ER7 (pipe-and-hat) primitives: framing, batch splitting, delimiters, escapes, charsets.

Everything here is plain `str`/`bytes` work on purpose: a full object-model parser (hl7apy) is
two orders of magnitude too slow for the per-message hot path.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

UTF8_BOM = b"\xef\xbb\xbf"
# MLLP wraps each message in <VT> ... <FS><CR>; senders sometimes leave that framing in place.
_MLLP_START_BLOCK = b"\x0b"
_MLLP_END_BLOCK = b"\x1c"
_BATCH_HEADERS = frozenset((b"FHS", b"BHS"))
_BATCH_TRAILERS = frozenset((b"BTS", b"FTS"))
# Delimiters must be printable ASCII punctuation: letters, digits and whitespace would be
# indistinguishable from data, and non-ASCII would not survive a charset switch.
_VALID_DELIMITER_CHARS = frozenset(string.punctuation)


class Hl7Error(ValueError):
    """A message (or payload) that cannot be accepted.

    `code` is a stable, machine-readable reason. `detail` names positions and fields only, never
    values: it ends up in logs and DLQ records, and message content is PHI.
    """

    code: str
    detail: str

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail


@dataclass(slots=True, frozen=True)
class Delimiters:
    """MSH-1 and MSH-2 of one message. `truncation` is "" unless MSH-2 has a fifth character."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""

    @classmethod
    def from_msh(cls, msh_segment: str) -> Delimiters:
        """Read and validate MSH-1/MSH-2 from the text of an MSH segment."""
        if len(msh_segment) < 4:
            raise Hl7Error("bad_encoding_characters", "MSH-1 (field separator) is missing")
        field = msh_segment[3]
        if field not in _VALID_DELIMITER_CHARS:
            raise Hl7Error("bad_encoding_characters", "MSH-1 is not a punctuation character")
        encoding = msh_segment[4:].partition(field)[0]
        # A fifth character is the 2.7+ truncation character; it is accepted for every version
        # because senders add it regardless, and it never changes how fields are split.
        if len(encoding) not in (4, 5):
            raise Hl7Error(
                "bad_encoding_characters",
                f"MSH-2 must have 4 or 5 characters, found {len(encoding)}",
            )
        if not _VALID_DELIMITER_CHARS.issuperset(encoding):
            raise Hl7Error("bad_encoding_characters", "MSH-2 has a non-punctuation character")
        if len(set(encoding + field)) != len(encoding) + 1:
            raise Hl7Error("bad_encoding_characters", "MSH-1/MSH-2 repeat a character")
        return cls(field, encoding[0], encoding[1], encoding[2], encoding[3], encoding[4:])


DEFAULT_DELIMITERS = Delimiters()


def split_batch(payload: bytes) -> list[bytes]:
    """Split one received payload into its messages, each with `\\r`-terminated segments.

    Accepts CR, LF, CRLF (mixed too), a leading UTF-8 BOM, blank lines, leftover MLLP framing,
    several MSH messages back to back and FHS/BHS/BTS/FTS batch envelopes (which are dropped).
    Batch trailer counts (BTS-1/FTS-1) are not checked: the messages themselves are what counts.
    """
    if _MLLP_START_BLOCK in payload or _MLLP_END_BLOCK in payload:
        # Block boundaries are message boundaries, and a new MSH starts a message anyway.
        payload = payload.replace(_MLLP_START_BLOCK, b"\r").replace(_MLLP_END_BLOCK, b"\r")
    messages: list[list[bytes]] = []
    current: list[bytes] | None = None
    in_envelope = False
    for line in _lines(payload):
        segment_id = line[:3]
        if segment_id == b"MSH":
            current = [line]
            messages.append(current)
        elif segment_id in _BATCH_HEADERS:
            in_envelope, current = True, None
        elif segment_id in _BATCH_TRAILERS:
            if not in_envelope:
                raise Hl7Error("batch_malformed", "batch trailer without FHS/BHS header")
            current = None
        elif current is not None:
            current.append(line)
        elif in_envelope:
            raise Hl7Error("batch_malformed", "segment outside a message inside a batch")
        else:
            raise Hl7Error("no_msh", "content does not start with an MSH segment")
    if not messages:
        if in_envelope:
            raise Hl7Error("batch_malformed", "batch envelope contains no MSH message")
        raise Hl7Error("empty", "payload has no content")
    return [b"\r".join(segments) + b"\r" for segments in messages]


def _lines(payload: bytes) -> list[bytes]:
    """Non-blank lines, whatever mix of CR, LF and CRLF ends them.

    A BOM is dropped at the start of every line, not just the payload: concatenated files each
    bring their own.
    """
    lines = []
    # LF -> CR turns CRLF into CR CR: the empty line between is skipped like any blank line.
    for line in payload.replace(b"\n", b"\r").split(b"\r"):
        if line.startswith(UTF8_BOM):
            line = line[len(UTF8_BOM) :]
        if line and not line.isspace():
            lines.append(line)
    return lines


def split_segments(text: str) -> list[str]:
    """Non-blank segments of one decoded message, whatever mix of CR, LF and CRLF ends them."""
    segments = text.replace("\n", "\r").split("\r")  # CRLF leaves blanks, dropped below
    return [segment for segment in segments if segment and not segment.isspace()]


# MSH-18 names (HL7 table 0211) -> Python codec. Absent, ASCII and UTF-8 map to None: decode as
# UTF-8 and fall back to latin-1, because senders label latin-1 data "ASCII" all the time.
_CHARSET_CODECS: dict[str, str | None] = {
    "": None,
    "ASCII": None,
    "UNICODE UTF-8": None,
    **{f"8859/{part}": f"iso8859-{part}" for part in (1, 2, 3, 4, 5, 6, 7, 8, 9, 15)},
    "BIG-5": "big5",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
}
# UTF-16/32 put NUL bytes between the ASCII delimiters, so such a payload cannot be ER7-framed.
_UNFRAMEABLE_CHARSETS = frozenset(("UNICODE", "UNICODE UTF-16", "UNICODE UTF-32"))


def declared_codec(charset: str) -> str | None:
    """Codec to decode with when MSH-18 demands one; None for the UTF-8/latin-1 default.

    Unknown names fall back to the default rather than rejecting the message.
    """
    name = charset.strip().upper()
    if name in _UNFRAMEABLE_CHARSETS:
        raise Hl7Error("decode_error", "MSH-18 names a charset that cannot be carried as ER7 bytes")
    return _CHARSET_CODECS.get(name)


def decode_default(raw: bytes) -> tuple[str, str]:
    """Strict UTF-8, else latin-1 (which cannot fail). Returns (text, codec used)."""
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "latin-1"


def decode_declared(raw: bytes, codec: str) -> str:
    """Decode with the charset the message itself declares; mismatching bytes are an error."""
    try:
        return raw.decode(codec)
    except UnicodeDecodeError:
        raise Hl7Error("decode_error", "bytes do not match the MSH-18 character set") from None


def unescape(value: str, delimiters: Delimiters, codec: str = "utf-8") -> str:
    r"""Decode \F\ \S\ \T\ \R\ \E\ (\P\ with a truncation character) and \Xhh..\.

    Hex bytes are decoded with the message codec (adjacent \X..\ runs together, so a UTF-8
    character split over two sequences survives), falling back to latin-1 for invalid bytes.
    Formatting and charset sequences (\H\ \N\ \.br\ \Cxxyy\ \Mxxyyzz\ \Zxx\) have
    no plain-text meaning, so they are kept literally; so is an unterminated escape.
    """
    escape = delimiters.escape
    if escape not in value:
        return value
    replacements = {
        "F": delimiters.field,
        "S": delimiters.component,
        "T": delimiters.subcomponent,
        "R": delimiters.repetition,
        "E": escape,
    }
    if delimiters.truncation:
        replacements["P"] = delimiters.truncation
    # Splitting on the escape character puts literal text at even and sequences at odd indexes;
    # an odd part with nothing after it is an unterminated sequence, i.e. literal text.
    parts = value.split(escape)
    last_index = len(parts) - 1
    decoded: list[str] = []
    pending_hex = bytearray()
    for index, part in enumerate(parts):
        if index % 2 == 0:
            piece = part
        elif index == last_index:
            piece = escape + part
        else:
            hex_bytes = _hex_bytes(part)
            if hex_bytes is not None:
                pending_hex += hex_bytes
                continue
            piece = replacements.get(part) or f"{escape}{part}{escape}"
        if piece:
            if pending_hex:
                decoded.append(_decode_hex(pending_hex, codec))
                pending_hex.clear()
            decoded.append(piece)
    if pending_hex:
        decoded.append(_decode_hex(pending_hex, codec))
    return "".join(decoded)


def _hex_bytes(sequence: str) -> bytes | None:
    if len(sequence) < 3 or sequence[0] != "X" or len(sequence) % 2 == 0:
        return None
    try:
        return bytes.fromhex(sequence[1:])
    except ValueError:
        return None


def _decode_hex(data: bytearray, codec: str) -> str:
    try:
        return data.decode(codec)
    except UnicodeDecodeError:
        return data.decode("latin-1")


def escape(value: str, delimiters: Delimiters) -> str:
    r"""Inverse of `unescape`: delimiters become \F\ \S\ \T\ \R\ \E\ (\P\), and CR/LF
    become \X0D\ and \X0A\ because a raw line end would end the segment.
    """
    escape_char = delimiters.escape
    escaped = value.replace(escape_char, f"{escape_char}E{escape_char}")
    for char, code in (
        (delimiters.field, "F"),
        (delimiters.component, "S"),
        (delimiters.subcomponent, "T"),
        (delimiters.repetition, "R"),
        (delimiters.truncation, "P"),
        ("\r", "X0D"),
        ("\n", "X0A"),
    ):
        if char:
            escaped = escaped.replace(char, f"{escape_char}{code}{escape_char}")
    return escaped
