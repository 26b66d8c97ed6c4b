"""Validate one ER7 message and extract the fields Laneway routes and normalizes on.

Positions follow HL7 numbering. A scalar "X-n.c" is: first repetition of field n, component c,
first subcomponent, fully unescaped (see `er7.unescape`: formatting escapes such as \\.br\\ or
\\H\\ stay literal text). Absent scalars are "", absent lists are ().
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass

from streams.hl7.er7 import Delimiters, Hl7Error, split_segments

# SUPPORTED_VERSIONS moved to header.py; the redundant alias keeps it importable from here.
from streams.hl7.header import SUPPORTED_VERSIONS as SUPPORTED_VERSIONS
from streams.hl7.header import FieldReader, read_msh, validate_header

_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
# A second header inside one message means the caller skipped `split_batch`: reject it rather
# than silently dropping the messages after the first.
_HEADER_SEGMENT_IDS = frozenset(("MSH", "FHS", "BHS", "BTS", "FTS"))


@dataclass(slots=True, frozen=True)
class PatientIdentifier:
    id_number: str  # CX.1
    assigning_authority: str  # CX.4.1
    identifier_type: str  # CX.5


@dataclass(slots=True, frozen=True)
class PersonName:
    family: str = ""  # XPN.1.1
    given: str = ""  # XPN.2
    middle: str = ""  # XPN.3


@dataclass(slots=True, frozen=True)
class Address:
    street: str = ""  # XAD.1.1
    city: str = ""  # XAD.3
    state: str = ""  # XAD.4
    postal_code: str = ""  # XAD.5


@dataclass(slots=True, frozen=True)
class Location:
    point_of_care: str = ""  # PL.1
    room: str = ""  # PL.2
    bed: str = ""  # PL.3
    facility: str = ""  # PL.4.1


@dataclass(slots=True, frozen=True)
class Visit:
    patient_class: str  # PV1-2
    location: Location  # PV1-3
    visit_number: str  # PV1-19.1
    admit_datetime: str  # PV1-44.1, raw HL7 TS


@dataclass(slots=True, frozen=True)
class Order:
    placer_order_number: str  # OBR-2.1, else ORC-2.1 of the nearest preceding ORC
    filler_order_number: str  # OBR-3.1
    service_code: str  # OBR-4.1
    service_text: str  # OBR-4.2
    observation_datetime: str  # OBR-7.1, raw HL7 TS
    result_status: str  # OBR-25


@dataclass(slots=True, frozen=True)
class Observation:
    set_id: str  # OBX-1
    value_type: str  # OBX-2
    code: str  # OBX-3.1
    text: str  # OBX-3.2
    coding_system: str  # OBX-3.3
    sub_id: str  # OBX-4
    # One entry per OBX-5 repetition. Each component and subcomponent is unescaped, then they are
    # re-joined with "^" and "&" whatever the message delimiters were, so a CE/CWE value reads
    # "CODE^TEXT^SYSTEM". A literal "^" or "&" in the data is then indistinguishable from a
    # separator; consumers that need the structure of coded values must not re-split blindly.
    values: tuple[str, ...]
    units: str  # OBX-6.1
    reference_range: str  # OBX-7
    abnormal_flags: str  # OBX-8, first repetition
    status: str  # OBX-11
    observed_at: str  # OBX-14.1, raw HL7 TS


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
    header = validate_header(msh)
    reader = msh.reader
    delimiters = reader.delimiters
    segments = split_segments(msh.text)
    segment_ids = _segment_ids(segments, delimiters.field)

    event_datetime = ""
    pid: list[str] = []
    visit: Visit | None = None
    orders: list[Order] = []
    observations: list[Observation] = []
    placer_from_orc = ""
    for segment_id, segment in zip(segment_ids, segments, strict=True):
        if segment_id == "OBX":
            observations.append(_observation(reader, segment.split(delimiters.field)))
        elif segment_id == "OBR":
            orders.append(_order(reader, segment.split(delimiters.field), placer_from_orc))
        elif segment_id == "ORC":
            placer_from_orc = reader.scalar(segment.split(delimiters.field), 2)
        elif segment_id == "PID" and not pid:
            pid = segment.split(delimiters.field)
        elif segment_id == "PV1" and visit is None:
            visit = _visit(reader, segment.split(delimiters.field))
        elif segment_id == "EVN" and not event_datetime:
            event_datetime = reader.scalar(segment.split(delimiters.field), 2)

    name = reader.first_repetition_components(pid, 5)
    address = reader.first_repetition_components(pid, 11)
    return ExtractedMessage(
        delimiters=delimiters,
        message_code=header.message_code,
        trigger_event=header.trigger_event,
        message_structure=header.message_structure,
        control_id=header.control_id,
        processing_id=header.processing_id,
        version=header.version,
        sending_application=header.sending_application,
        sending_facility=header.sending_facility,
        receiving_application=header.receiving_application,
        receiving_facility=header.receiving_facility,
        message_datetime=reader.scalar(msh.fields, 7),
        event_datetime=event_datetime,
        accept_ack_type=header.accept_ack_type,
        application_ack_type=header.application_ack_type,
        character_set=header.character_set,
        segment_ids=segment_ids,
        patient_identifiers=_patient_identifiers(reader, pid),
        patient_name=PersonName(
            family=reader.component_of(name, 1),
            given=reader.component_of(name, 2),
            middle=reader.component_of(name, 3),
        ),
        birth_date=reader.scalar(pid, 7),
        sex=reader.scalar(pid, 8),
        patient_address=Address(
            street=reader.component_of(address, 1),
            city=reader.component_of(address, 3),
            state=reader.component_of(address, 4),
            postal_code=reader.component_of(address, 5),
        ),
        phone=reader.scalar(pid, 13),
        ssn=reader.scalar(pid, 19),
        visit=visit,
        orders=tuple(orders),
        observations=tuple(observations),
    )


def _segment_ids(segments: list[str], field_separator: str) -> tuple[str, ...]:
    for position, segment in enumerate(segments, start=1):
        if not _SEGMENT_ID.match(segment) or (len(segment) > 3 and segment[3] != field_separator):
            raise Hl7Error("bad_segment", f"segment {position} does not start with a valid id")
        if position > 1 and segment[:3] in _HEADER_SEGMENT_IDS:
            raise Hl7Error("bad_segment", f"segment {position} is a header inside a message")
    return tuple(segment[:3] for segment in segments)


def _patient_identifiers(reader: FieldReader, pid: list[str]) -> tuple[PatientIdentifier, ...]:
    identifiers = []
    for repetition in reader.repetitions(pid, 3):
        components = repetition.split(reader.component)
        identifier = PatientIdentifier(
            id_number=reader.component_of(components, 1),
            assigning_authority=reader.component_of(components, 4),
            identifier_type=reader.component_of(components, 5),
        )
        if identifier.id_number or identifier.assigning_authority or identifier.identifier_type:
            identifiers.append(identifier)
    return tuple(identifiers)


def _visit(reader: FieldReader, pv1: list[str]) -> Visit:
    location = reader.first_repetition_components(pv1, 3)
    return Visit(
        patient_class=reader.scalar(pv1, 2),
        location=Location(
            point_of_care=reader.component_of(location, 1),
            room=reader.component_of(location, 2),
            bed=reader.component_of(location, 3),
            facility=reader.component_of(location, 4),
        ),
        visit_number=reader.scalar(pv1, 19),
        admit_datetime=reader.scalar(pv1, 44),
    )


def _order(reader: FieldReader, obr: list[str], placer_from_orc: str) -> Order:
    service = reader.first_repetition_components(obr, 4)
    return Order(
        placer_order_number=reader.scalar(obr, 2) or placer_from_orc,
        filler_order_number=reader.scalar(obr, 3),
        service_code=reader.component_of(service, 1),
        service_text=reader.component_of(service, 2),
        observation_datetime=reader.scalar(obr, 7),
        result_status=reader.scalar(obr, 25),
    )


def _observation(reader: FieldReader, obx: list[str]) -> Observation:
    identifier = reader.first_repetition_components(obx, 3)
    return Observation(
        set_id=reader.scalar(obx, 1),
        value_type=reader.scalar(obx, 2),
        code=reader.component_of(identifier, 1),
        text=reader.component_of(identifier, 2),
        coding_system=reader.component_of(identifier, 3),
        sub_id=reader.scalar(obx, 4),
        values=tuple(reader.joined_value(value) for value in reader.repetitions(obx, 5)),
        units=reader.scalar(obx, 6),
        reference_range=reader.scalar(obx, 7),
        abnormal_flags=reader.scalar(obx, 8),
        status=reader.scalar(obx, 11),
        observed_at=reader.scalar(obx, 14),
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
    # Slices and isdecimal() (which accepts exactly the digits the former regex's \d did) instead
    # of a regex and datetime: this runs several times per message.
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
