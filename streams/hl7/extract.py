"""Validate one ER7 message and extract the fields Laneway routes and normalizes on.

Positions follow HL7 numbering. A scalar "X-n.c" is: first repetition of field n, component c,
first subcomponent, fully unescaped (see `er7.unescape`: formatting escapes such as \\.br\\ or
\\H\\ stay literal text). Absent scalars are "", absent lists are () ([] for OBX-5 values).

The patient, visit, order and observation parts are the event contract's records
(`streams.records`), so their timestamps are already ISO 8601 (`hl7_ts_to_iso`: None when
empty or invalid); the header's stay raw HL7 TS.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass

from streams.hl7.er7 import Delimiters, Hl7Error, split_segments

# SUPPORTED_VERSIONS moved to header.py; the redundant alias keeps it importable from here.
from streams.hl7.header import SUPPORTED_VERSIONS as SUPPORTED_VERSIONS
from streams.hl7.header import FieldReader, read_msh, required_fields
from streams.records import (
    Address,
    Location,
    Observation,
    Order,
    PatientIdentifier,
    PersonName,
    Visit,
)

_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
# A second header inside one message means the caller skipped `split_batch`: reject it rather
# than silently dropping the messages after the first.
_HEADER_SEGMENT_IDS = frozenset(("MSH", "FHS", "BHS", "BTS", "FTS"))


@dataclass(slots=True, frozen=True)
class ExtractedMessage:
    delimiters: Delimiters
    message_code: str  # MSH-9.1
    trigger_event: str  # MSH-9.2
    message_structure: str  # MSH-9.3
    control_id: str  # MSH-10
    processing_id: str  # MSH-11.1
    version: str  # MSH-12.1
    sending_application: str  # MSH-3.1
    sending_facility: str  # MSH-4.1
    receiving_application: str  # MSH-5.1
    receiving_facility: str  # MSH-6.1
    message_datetime: str  # MSH-7.1, raw HL7 TS
    event_datetime: str  # EVN-2.1, raw HL7 TS
    accept_ack_type: str  # MSH-15
    application_ack_type: str  # MSH-16
    character_set: str  # MSH-18, first repetition
    segment_ids: tuple[str, ...]
    patient_identifiers: tuple[PatientIdentifier, ...]  # every non-empty PID-3 repetition
    patient_name: PersonName  # PID-5, first repetition
    birth_date: str  # PID-7.1
    sex: str  # PID-8
    patient_address: Address  # PID-11, first repetition
    phone: str  # PID-13.1
    ssn: str  # PID-19
    visit: Visit | None  # first PV1, None without one
    orders: tuple[Order, ...]  # one per OBR
    observations: tuple[Observation, ...]  # one per OBX


def extract(raw: bytes) -> ExtractedMessage:
    """Parse and validate one message (as `split_batch` returns it; CR/LF/CRLF/BOM tolerated).

    Checks run in this order and raise `Hl7Error` with the first failing code: empty, no_msh,
    bad_encoding_characters, decode_error, missing_msh_9, missing_msh_10, missing_msh_12,
    unsupported_version, bad_segment.
    """
    msh = read_msh(raw)
    message_code, trigger_event, message_structure, control_id, version = required_fields(msh)
    text, msh_fields, reader, character_set = msh
    delimiters = reader.delimiters
    field_separator = delimiters.field
    segments = split_segments(text)
    segment_ids = _segment_ids(segments, field_separator)

    event_datetime = ""
    pid: list[str] = []
    visit: Visit | None = None
    orders: list[Order] = []
    observations: list[Observation] = []
    placer_from_orc = ""
    for segment_id, segment in zip(segment_ids, segments, strict=True):
        if segment_id == "OBX":
            observations.append(_observation(reader, segment.split(field_separator)))
        elif segment_id == "OBR":
            orders.append(_order(reader, segment.split(field_separator), placer_from_orc))
        elif segment_id == "ORC":
            placer_from_orc = reader.scalar(segment.split(field_separator), 2)
        elif segment_id == "PID" and not pid:
            pid = segment.split(field_separator)
        elif segment_id == "PV1" and visit is None:
            visit = _visit(reader, segment.split(field_separator))
        elif segment_id == "EVN" and not event_datetime:
            event_datetime = reader.scalar(segment.split(field_separator), 2)

    family, given, middle = reader.first_components(pid, 5, 3)
    street, _, city, state, postal_code = reader.first_components(pid, 11, 5)
    scalar = reader.scalar
    return ExtractedMessage(
        delimiters=delimiters,
        message_code=message_code,
        trigger_event=trigger_event,
        message_structure=message_structure,
        control_id=control_id,
        processing_id=scalar(msh_fields, 11),
        version=version,
        sending_application=scalar(msh_fields, 3),
        sending_facility=scalar(msh_fields, 4),
        receiving_application=scalar(msh_fields, 5),
        receiving_facility=scalar(msh_fields, 6),
        message_datetime=scalar(msh_fields, 7),
        event_datetime=event_datetime,
        accept_ack_type=scalar(msh_fields, 15),
        application_ack_type=scalar(msh_fields, 16),
        character_set=character_set,
        segment_ids=segment_ids,
        patient_identifiers=_patient_identifiers(reader, pid),
        patient_name=PersonName(family, given, middle),
        birth_date=scalar(pid, 7),
        sex=scalar(pid, 8),
        patient_address=Address(street, city, state, postal_code),
        phone=scalar(pid, 13),
        ssn=scalar(pid, 19),
        visit=visit,
        orders=tuple(orders),
        observations=tuple(observations),
    )


# Body segment ids already found valid: a set lookup instead of the regex per segment. At most
# 26 * 36 * 36 ids can match, so the cache is bounded.
_VALID_BODY_SEGMENT_IDS: set[str] = set()


def _segment_ids(segments: list[str], field_separator: str) -> tuple[str, ...]:
    segment_ids = tuple([segment[:3] for segment in segments])
    # The usual case in two quick passes: known ids, each followed by the field separator.
    # segments[0] is the MSH that read_msh took the separator from: valid by construction.
    if _VALID_BODY_SEGMENT_IDS.issuperset(segment_ids[1:]):
        for segment in segments:
            if segment[3:4] != field_separator and len(segment) > 3:
                break
        else:
            return segment_ids
    _check_segments(segments, field_separator)
    return segment_ids


def _check_segments(segments: list[str], field_separator: str) -> None:
    """Raise bad_segment for the first invalid segment, else remember the new valid ids."""
    for position, segment in enumerate(segments[1:], start=2):
        if not _SEGMENT_ID.match(segment) or (len(segment) > 3 and segment[3] != field_separator):
            raise Hl7Error("bad_segment", f"segment {position} does not start with a valid id")
        if segment[:3] in _HEADER_SEGMENT_IDS:
            raise Hl7Error("bad_segment", f"segment {position} is a header inside a message")
    _VALID_BODY_SEGMENT_IDS.update(segment[:3] for segment in segments[1:])


def _patient_identifiers(reader: FieldReader, pid: list[str]) -> tuple[PatientIdentifier, ...]:
    identifiers = []
    for repetition in reader.repetitions(pid, 3):
        id_number, _, _, assigning_authority, identifier_type = reader.components(repetition, 5)
        if id_number or assigning_authority or identifier_type:
            identifiers.append(PatientIdentifier(id_number, assigning_authority, identifier_type))
    return tuple(identifiers)


def _visit(reader: FieldReader, pv1: list[str]) -> Visit:
    point_of_care, room, bed, facility = reader.first_components(pv1, 3, 4)
    scalar = reader.scalar
    return Visit(
        patient_class=scalar(pv1, 2),
        location=Location(point_of_care, room, bed, facility),
        visit_number=scalar(pv1, 19),
        admit_datetime=hl7_ts_to_iso(scalar(pv1, 44)),
    )


def _order(reader: FieldReader, obr: list[str], placer_from_orc: str) -> Order:
    service_code, service_text = reader.first_components(obr, 4, 2)
    scalar = reader.scalar
    return Order(
        placer_order_number=scalar(obr, 2) or placer_from_orc,
        filler_order_number=scalar(obr, 3),
        service_code=service_code,
        service_text=service_text,
        observation_datetime=hl7_ts_to_iso(scalar(obr, 7)),
        result_status=scalar(obr, 25),
    )


def _observation(reader: FieldReader, obx: list[str]) -> Observation:
    code, text, coding_system = reader.first_components(obx, 3, 3)
    scalar = reader.scalar
    return Observation(
        set_id=scalar(obx, 1),
        value_type=scalar(obx, 2),
        code=code,
        text=text,
        coding_system=coding_system,
        sub_id=scalar(obx, 4),
        values=[reader.joined_value(value) for value in reader.repetitions(obx, 5)],
        units=scalar(obx, 6),
        reference_range=scalar(obx, 7),
        abnormal_flags=scalar(obx, 8),
        status=scalar(obx, 11),
        observed_at=hl7_ts_to_iso(scalar(obx, 14)),
    )


# Days per month in a common year; February gains one in leap years.
_DAYS_IN_MONTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
# Lengths of the digits before any fraction: YYYY[MM[DD[HH[MM[SS]]]]].
_TIMESTAMP_LENGTHS = frozenset((4, 6, 8, 10, 12, 14))


def hl7_ts_to_iso(ts: str) -> str | None:
    """HL7 TS/DTM -> ISO 8601 keeping the precision given, None when empty or invalid.

    "2024" -> "2024", "20240115" -> "2024-01-15", "2024011512+0100" -> "2024-01-15T12:00+01:00"
    (an hour-only time gets ":00" minutes, as ISO 8601 profiles such as RFC 3339 require a
    minute), "20240115123045.12" -> "2024-01-15T12:30:45.12". An offset after a date with no time
    is dropped: ISO 8601 has no zoned calendar date.
    """
    # Slicing rather than a regex and datetime: this runs several times per message. isdecimal()
    # accepts exactly the digits int() does, so no int() below can fail.
    ts = ts.strip()
    offset = ""
    if "+" in ts or "-" in ts:
        ts, offset = ts[:-5], ts[-5:]
        if len(offset) < 5 or offset[0] not in "+-" or not offset[1:].isdecimal():
            return None
        if int(offset[1:3]) > 14 or int(offset[3:]) > 59:
            return None
    fraction = ""
    if "." in ts:
        ts, _, fraction = ts.partition(".")
        if len(ts) != 14 or not fraction.isdecimal():
            return None
    length = len(ts)
    if length not in _TIMESTAMP_LENGTHS or not ts.isdecimal():
        return None
    year = ts[:4]
    if length == 4:
        return year
    month = ts[4:6]
    month_number = int(month)
    if not 1 <= month_number <= 12:
        return None
    if length == 6:
        return f"{year}-{month}"
    day = ts[6:8]
    days_in_month = _DAYS_IN_MONTH[month_number]
    if month_number == 2 and calendar.isleap(int(year)):
        days_in_month = 29
    if not 1 <= int(day) <= days_in_month:
        return None
    if length == 8:
        return f"{year}-{month}-{day}"
    hour, minute, second = ts[8:10], ts[10:12] or "00", ts[12:]
    if int(hour) > 23 or int(minute) > 59 or (second and int(second) > 59):
        return None
    iso = f"{year}-{month}-{day}T{hour}:{minute}"
    if second:
        iso = f"{iso}:{second}"
    if fraction:
        iso = f"{iso}.{fraction}"
    if offset:
        iso = f"{iso}{offset[:3]}:{offset[3:]}"
    return iso
