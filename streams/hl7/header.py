"""Read and validate the MSH segment alone: what ingest needs to route and acknowledge a message.

Ingest answers every message before anything else looks at it, so this reads the header only
(no body segments, no hl7apy). `extract()` is built on the same reading, so the two always agree
on the header and on the order of the checks.

Positions follow HL7 numbering; a scalar "MSH-n.c" is the first repetition of field n, component
c, first subcomponent, unescaped (see `er7.unescape`).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import NamedTuple

from streams.hl7.er7 import (
    DEFAULT_DELIMITERS,
    UTF8_BOM,
    Delimiters,
    Hl7Error,
    declared_codec,
    decode_declared,
    decode_default,
    split_segments,
    unescape,
)

SUPPORTED_VERSIONS = frozenset(
    {
        "2.1", "2.2",
        "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6",
        "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2",
    }
)  # fmt: skip
# A field separator that is also one of the default encoding characters cannot be combined with
# them into a valid delimiter set; any other punctuation can.
_FALLBACK_FIELD_SEPARATORS = frozenset(string.punctuation) - set("^~\\&")
# See `_reader`. Real feeds use a handful of delimiter sets; the bound only keeps hostile traffic
# from growing the cache.
_READERS: dict[tuple[str, str], FieldReader] = {}
_MAX_CACHED_READERS = 256


class FieldReader:
    """Read positions out of segments split on the field separator, unescaping as it goes.

    Every method runs several times per message: a value is only partitioned or unescaped when it
    contains the character concerned, which most values do not. Instances are shared by all the
    messages with the same delimiters and codec (see `_reader`).
    """

    __slots__ = (
        "codec",
        "component",
        "delimiters",
        "escape",
        "rejoin_table",
        "repetition",
        "subcomponent",
    )

    def __init__(self, delimiters: Delimiters, codec: str) -> None:
        self.delimiters = delimiters
        self.codec = codec
        self.component = delimiters.component
        self.repetition = delimiters.repetition
        self.subcomponent = delimiters.subcomponent
        self.escape = delimiters.escape
        # `joined_value` re-joins with ^ and &: with those as separators there is nothing to map.
        standard = (self.component, self.subcomponent) == ("^", "&")
        self.rejoin_table = (
            None if standard else str.maketrans({self.component: "^", self.subcomponent: "&"})
        )

    def repetitions(self, fields: list[str], number: int) -> list[str]:
        if number >= len(fields) or not fields[number]:
            return []
        return fields[number].split(self.repetition)

    def first_components(self, fields: list[str], number: int, count: int) -> list[str]:
        """`components` of the first repetition of field `number`."""
        if number >= len(fields):
            return [""] * count
        value = fields[number]
        if self.repetition in value:
            value = value.partition(self.repetition)[0]
        return self.components(value, count)

    def components(self, repetition: str, count: int) -> list[str]:
        """Components 1 to `count` of one repetition, each its first subcomponent unescaped, ""
        when absent.
        """
        components = repetition.split(self.component, count)
        if len(components) != count:  # pad, or drop the unsplit rest after component `count`
            components = (components + [""] * count)[:count]
        if self.subcomponent in repetition:
            subcomponent = self.subcomponent
            components = [component.partition(subcomponent)[0] for component in components]
        if self.escape in repetition:
            delimiters, codec = self.delimiters, self.codec
            components = [unescape(component, delimiters, codec) for component in components]
        return components

    def scalar(self, fields: list[str], number: int) -> str:
        """Field `number`, first repetition, component and subcomponent, unescaped."""
        if number >= len(fields):
            return ""
        value = fields[number]
        if self.repetition in value:
            value = value.partition(self.repetition)[0]
        if self.component in value:
            value = value.partition(self.component)[0]
        if self.subcomponent in value:
            value = value.partition(self.subcomponent)[0]
        if self.escape in value:
            value = unescape(value, self.delimiters, self.codec)
        return value

    def joined_value(self, repetition: str) -> str:
        """A whole repetition unescaped part by part and re-joined with ^ and &."""
        if self.escape not in repetition:  # then only the separators can change
            return repetition.translate(self.rejoin_table) if self.rejoin_table else repetition
        return "^".join(
            "&".join(
                unescape(sub, self.delimiters, self.codec)
                for sub in component.split(self.subcomponent)
            )
            for component in repetition.split(self.component)
        )


@dataclass(slots=True, frozen=True)
class MessageHeader:
    """The MSH of a message that passed every header check."""

    delimiters: Delimiters
    sending_application: str  # MSH-3.1
    sending_facility: str  # MSH-4.1
    receiving_application: str  # MSH-5.1
    receiving_facility: str  # MSH-6.1
    message_code: str  # MSH-9.1
    trigger_event: str  # MSH-9.2
    message_structure: str  # MSH-9.3
    control_id: str  # MSH-10
    processing_id: str  # MSH-11.1
    version: str  # MSH-12.1, one of SUPPORTED_VERSIONS
    accept_ack_type: str  # MSH-15
    application_ack_type: str  # MSH-16
    character_set: str  # MSH-18, first repetition


@dataclass(slots=True, frozen=True)
class PartialHeader:
    """Whatever MSH fields could be read from a message that failed validation; "" = unknown.

    Enough to acknowledge it: `delimiters` is always a valid set to answer with, and
    `character_set` is only set when the text was decoded with it.
    """

    delimiters: Delimiters = DEFAULT_DELIMITERS
    sending_application: str = ""  # MSH-3.1
    sending_facility: str = ""  # MSH-4.1
    receiving_application: str = ""  # MSH-5.1
    receiving_facility: str = ""  # MSH-6.1
    trigger_event: str = ""  # MSH-9.2
    control_id: str = ""  # MSH-10
    processing_id: str = ""  # MSH-11.1
    version: str = ""  # MSH-12.1, possibly unsupported
    accept_ack_type: str = ""  # MSH-15
    application_ack_type: str = ""  # MSH-16
    character_set: str = ""  # MSH-18, first repetition


class MshReading(NamedTuple):
    """One message decoded with the charset that applies, and its MSH split into fields."""

    text: str  # the whole message
    fields: list[str]  # MSH-n at index n
    reader: FieldReader
    character_set: str  # MSH-18, first repetition


def read_header(raw: bytes) -> MessageHeader:
    """Validate the header of one message (as `split_batch` returns it) and return it.

    Raises `Hl7Error` with the first failing code, in the same order as `extract()`: empty,
    no_msh, bad_encoding_characters, decode_error, missing_msh_9, missing_msh_10,
    missing_msh_12, unsupported_version. The body is not looked at.
    """
    msh = read_msh(raw)
    message_code, trigger_event, message_structure, control_id, version = required_fields(msh)
    reader, fields = msh.reader, msh.fields
    return MessageHeader(
        delimiters=reader.delimiters,
        sending_application=reader.scalar(fields, 3),
        sending_facility=reader.scalar(fields, 4),
        receiving_application=reader.scalar(fields, 5),
        receiving_facility=reader.scalar(fields, 6),
        message_code=message_code,
        trigger_event=trigger_event,
        message_structure=message_structure,
        control_id=control_id,
        processing_id=reader.scalar(fields, 11),
        version=version,
        accept_ack_type=reader.scalar(fields, 15),
        application_ack_type=reader.scalar(fields, 16),
        character_set=msh.character_set,
    )


def read_msh(raw: bytes) -> MshReading:
    """Decode a message and split its MSH: the checks empty, no_msh, bad_encoding_characters
    and decode_error, in that order.
    """
    if raw.startswith(UTF8_BOM):
        raw = raw[len(UTF8_BOM) :]
    text, codec = decode_default(raw)
    msh_segment = _first_segment(text)
    if msh_segment is None:
        raise Hl7Error("empty", "message has no content")
    if not msh_segment.startswith("MSH"):
        raise Hl7Error("no_msh", "first segment is not MSH")
    reader = _reader(msh_segment, codec)
    fields = _msh_fields(msh_segment, reader.delimiters)
    character_set = reader.scalar(fields, 18)
    # Delimiters and MSH-18 are ASCII in every supported charset, so they can be read before
    # decoding with the charset they declare.
    declared = declared_codec(character_set) if character_set else None
    if declared is not None and not raw.isascii():
        text = decode_declared(raw, declared)
        msh_segment = _first_segment(text)
        if msh_segment is None or not msh_segment.startswith("MSH"):
            raise Hl7Error("decode_error", "MSH does not survive decoding with MSH-18")
        reader = FieldReader(reader.delimiters, declared)
        fields = _msh_fields(msh_segment, reader.delimiters)
    return MshReading(text, fields, reader, character_set)


def required_fields(msh: MshReading) -> tuple[str, str, str, str, str]:
    """MSH-9.1, MSH-9.2, MSH-9.3, MSH-10 and MSH-12.1 after the required-field checks:
    missing_msh_9, missing_msh_10, missing_msh_12 and unsupported_version, in that order.
    """
    reader, fields = msh.reader, msh.fields
    message_code, trigger_event, message_structure = reader.first_components(fields, 9, 3)
    if not message_code or not trigger_event:
        raise Hl7Error("missing_msh_9", "MSH-9 needs a message code and a trigger event")
    control_id = reader.scalar(fields, 10)
    if not control_id:
        raise Hl7Error("missing_msh_10", "MSH-10 (message control id) is empty")
    version = reader.scalar(fields, 12)
    if not version:
        raise Hl7Error("missing_msh_12", "MSH-12 (version id) is empty")
    if version not in SUPPORTED_VERSIONS:
        raise Hl7Error("unsupported_version", "MSH-12 is not a version from 2.1 to 2.8.2")
    return message_code, trigger_event, message_structure, control_id, version


def read_header_lenient(raw: bytes) -> PartialHeader:
    """Best effort, never raises: the MSH fields of a message that `read_header` rejects.

    When MSH-2 is invalid but MSH-1 is usable punctuation, fields are still split on MSH-1 (with
    the default encoding characters); when MSH-18 does not decode the bytes, the default
    UTF-8/latin-1 decoding is used. Without a readable MSH, every field is unknown.
    """
    try:
        msh = read_msh(raw)
    except Hl7Error:
        degraded = _read_msh_degraded(raw)
        if degraded is None:
            return PartialHeader()
        msh = degraded
    reader, fields = msh.reader, msh.fields
    return PartialHeader(
        delimiters=reader.delimiters,
        sending_application=reader.scalar(fields, 3),
        sending_facility=reader.scalar(fields, 4),
        receiving_application=reader.scalar(fields, 5),
        receiving_facility=reader.scalar(fields, 6),
        trigger_event=reader.first_components(fields, 9, 2)[1],
        control_id=reader.scalar(fields, 10),
        processing_id=reader.scalar(fields, 11),
        version=reader.scalar(fields, 12),
        accept_ack_type=reader.scalar(fields, 15),
        application_ack_type=reader.scalar(fields, 16),
        character_set=msh.character_set,
    )


def _read_msh_degraded(raw: bytes) -> MshReading | None:
    """`read_msh` without MSH-18 and with a fallback for invalid MSH-2; None without an MSH."""
    if raw.startswith(UTF8_BOM):
        raw = raw[len(UTF8_BOM) :]
    text, codec = decode_default(raw)
    msh_segment = _first_segment(text)
    if msh_segment is None or not msh_segment.startswith("MSH"):
        return None
    try:
        delimiters = Delimiters.from_msh(msh_segment)
    except Hl7Error:
        if msh_segment[3:4] not in _FALLBACK_FIELD_SEPARATORS:
            return None
        delimiters = Delimiters(field=msh_segment[3])
    fields = _msh_fields(msh_segment, delimiters)
    return MshReading(text, fields, FieldReader(delimiters, codec), "")


def _reader(msh_segment: str, codec: str) -> FieldReader:
    """The reader for the MSH-1/MSH-2 of `msh_segment` (validated: bad_encoding_characters).

    Senders keep their delimiters, so each set is validated and given a reader once, not per
    message. Valid MSH-1/MSH-2 and the separator after them lie within msh_segment[3:10]: a key
    equal to one that passed validation means the same delimiters.
    """
    key = (msh_segment[3:10], codec)
    reader = _READERS.get(key)
    if reader is None:
        reader = FieldReader(Delimiters.from_msh(msh_segment), codec)
        if len(_READERS) < _MAX_CACHED_READERS:
            _READERS[key] = reader
    return reader


def _first_segment(text: str) -> str | None:
    """`split_segments(text)[0]` (None when there is none), without splitting a whole message
    in the usual case of a message that starts with its MSH.
    """
    if text.startswith("MSH"):
        return text.partition("\r")[0].partition("\n")[0]
    segments = split_segments(text)
    return segments[0] if segments else None


def _msh_fields(msh_segment: str, delimiters: Delimiters) -> list[str]:
    fields = msh_segment.split(delimiters.field)
    fields.insert(1, delimiters.field)  # so that MSH-n sits at index n like every other segment
    return fields
