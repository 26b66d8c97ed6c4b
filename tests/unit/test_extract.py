"""Validation and field extraction on hand-written and synthetic messages (no real PHI)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from streams.hl7 import (
    SUPPORTED_VERSIONS,
    Delimiters,
    ExtractedMessage,
    Hl7Error,
    extract,
    hl7_ts_to_iso,
    split_batch,
)
from streams.hl7.synthetic import (
    ALTERNATIVE_DELIMITERS,
    MALFORMED_KINDS,
    SyntheticFeed,
    adt,
    batch,
    malformed,
    mixed_corpus,
    oru,
)
from streams.records import (
    Address,
    Location,
    Observation,
    Order,
    PatientIdentifier,
    PersonName,
    Visit,
)


def _segment(segment_id: str, fields: dict[int, str]) -> str:
    """A segment from {field number: value}, so positions need no pipe counting."""
    values = [""] * (max(fields) + 1)
    for number, value in fields.items():
        values[number] = value
    return segment_id + "|".join(values)


ADT_SEGMENTS = (
    "MSH|^~\\&|SIM_ADT|SIM_HOSP|LANEWAY|HUB|20240115083000+0100||ADT^A01^ADT_A01|CTRL0001|P|2.5"
    "|||AL|NE||UNICODE UTF-8~8859/1",
    "EVN|A01|20240115082500",
    "PID|1||MRN001^^^SIMHOSP&1.2.3&ISO^MR~~V001^^^SIM^VN~^^^||TESTPATIENT^ALPHA^Q~ALIAS^NAME"
    "||19800101|F|||1 TEST ST^APT 2^TESTVILLE^ZZ^00001~2 OTHER ST||555-0100^PRN~555-0199"
    "||||||000-00-0001",
    "ZPI|1|SIMFLAG",
    _segment(
        "PV1",
        {1: "1", 2: "I", 3: "ICU^101^A^SIMHOSP&1.2&ISO", 19: "VN0001^^^SIM", 44: "20240115080000"},
    ),
)
ORU_SEGMENTS = (
    "MSH|^~\\&|SIM_LAB|SIM_HOSP|||20240115090000||ORU^R01^ORU_R01|CTRL0002|P|2.5.1",
    "PID|1||MRN002",
    "ORC|RE|PLC-ORC-1",
    _segment("OBR", {1: "1", 3: "FIL-1", 4: "BMP^BASIC PANEL^L", 7: "20240115084500", 25: "F"}),
    "OBX|1|NM|GLU^GLUCOSE^LN||98.5|mg/dL|70-110|N~H|||F|||20240115085000",
    "OBX|2|CE|CULT^CULTURE^LN|1|POS^POSITIVE^L~NEG&X^^L||||||P",
    "OBX|3|TX|NOTE^COMMENT^LN||LINE\\F\\ONE~LINE\\.br\\TWO~",
    "OBR|2|PLC-OBR-2|FIL-2|CBC^BLOOD COUNT^L",
)


def _message(segments: tuple[str, ...] | list[str], line_end: str = "\r") -> bytes:
    return (line_end.join(segments) + line_end).encode("utf-8")


def _replace_field(
    segments: tuple[str, ...], segment_index: int, field_index: int, value: str
) -> tuple[str, ...]:
    """A copy of `segments` with one field (as split on "|") replaced, padding as needed."""
    fields = segments[segment_index].split("|")
    fields += [""] * (field_index + 1 - len(fields))
    fields[field_index] = value
    return (*segments[:segment_index], "|".join(fields), *segments[segment_index + 1 :])


def _error_code(raw: bytes) -> str:
    with pytest.raises(Hl7Error) as raised:
        extract(raw)
    return raised.value.code


# --- field extraction --------------------------------------------------------------------------


def test_extract_reads_every_adt_field() -> None:
    message = extract(_message(ADT_SEGMENTS))

    assert message == ExtractedMessage(
        delimiters=Delimiters(),
        message_code="ADT",
        trigger_event="A01",
        message_structure="ADT_A01",
        control_id="CTRL0001",
        processing_id="P",
        version="2.5",
        sending_application="SIM_ADT",
        sending_facility="SIM_HOSP",
        receiving_application="LANEWAY",
        receiving_facility="HUB",
        message_datetime="20240115083000+0100",
        event_datetime="20240115082500",
        accept_ack_type="AL",
        application_ack_type="NE",
        character_set="UNICODE UTF-8",
        segment_ids=("MSH", "EVN", "PID", "ZPI", "PV1"),
        patient_identifiers=(
            PatientIdentifier(
                id_number="MRN001", assigning_authority="SIMHOSP", identifier_type="MR"
            ),
            PatientIdentifier(id_number="V001", assigning_authority="SIM", identifier_type="VN"),
        ),
        patient_name=PersonName(family="TESTPATIENT", given="ALPHA", middle="Q"),
        birth_date="19800101",
        sex="F",
        patient_address=Address(
            street="1 TEST ST", city="TESTVILLE", state="ZZ", postal_code="00001"
        ),
        phone="555-0100",
        ssn="000-00-0001",
        visit=Visit(
            patient_class="I",
            location=Location(point_of_care="ICU", room="101", bed="A", facility="SIMHOSP"),
            visit_number="VN0001",
            admit_datetime="2024-01-15T08:00:00",
        ),
        orders=(),
        observations=(),
    )


def test_extract_reads_orders_and_observations() -> None:
    message = extract(_message(ORU_SEGMENTS))

    assert message.orders == (
        Order(
            placer_order_number="PLC-ORC-1",
            filler_order_number="FIL-1",
            service_code="BMP",
            service_text="BASIC PANEL",
            observation_datetime="2024-01-15T08:45:00",
            result_status="F",
        ),
        Order(
            placer_order_number="PLC-OBR-2",
            filler_order_number="FIL-2",
            service_code="CBC",
            service_text="BLOOD COUNT",
            observation_datetime=None,
            result_status="",
        ),
    )
    assert message.observations[0] == Observation(
        set_id="1",
        value_type="NM",
        code="GLU",
        text="GLUCOSE",
        coding_system="LN",
        sub_id="",
        values=["98.5"],
        units="mg/dL",
        reference_range="70-110",
        abnormal_flags="N",
        status="F",
        observed_at="2024-01-15T08:50:00",
    )
    assert message.observations[1].sub_id == "1"
    assert message.observations[1].values == ["POS^POSITIVE^L", "NEG&X^^L"]
    assert message.observations[1].status == "P"
    # Formatting escapes stay literal; delimiter escapes are decoded; empty repetitions stay.
    assert message.observations[2].values == ["LINE|ONE", "LINE\\.br\\TWO", ""]
    assert message.visit is None
    assert message.event_datetime == ""


def test_extract_defaults_when_segments_are_absent() -> None:
    message = extract(_message(ORU_SEGMENTS[:1]))

    assert message.segment_ids == ("MSH",)
    assert message.patient_identifiers == ()
    assert message.patient_name == PersonName()
    assert message.patient_address == Address()
    assert (message.birth_date, message.sex, message.phone, message.ssn) == ("", "", "", "")
    assert message.visit is None
    assert message.orders == message.observations == ()


def test_extract_tolerates_empty_trailing_fields_and_separators() -> None:
    segments = (
        "MSH|^~\\&|SIM||||20240101||ADT^A04|CTRL3|P|2.4||||||||",
        "PID|1||MRN3^^^^||TESTPATIENT^^^^^|||||||||||||||",
        "PV1||O|^^^|||||||||||||||||||",
    )

    message = extract(_message(segments))

    assert message.patient_identifiers == (PatientIdentifier("MRN3", "", ""),)
    assert message.patient_name == PersonName(family="TESTPATIENT")
    assert message.visit == Visit(
        patient_class="O", location=Location(), visit_number="", admit_datetime=None
    )
    assert message.character_set == message.accept_ack_type == ""


def test_extract_decodes_escapes_in_every_position() -> None:
    segments = _replace_field(ADT_SEGMENTS, 2, 5, "TEST\\S\\PATIENT^AL\\T\\PHA^\\Xc3a9\\")
    segments = _replace_field(segments, 2, 3, "MRN\\F\\1^^^SIM\\R\\HOSP^M\\E\\R")

    message = extract(_message(segments))

    assert message.patient_name == PersonName(family="TEST^PATIENT", given="AL&PHA", middle="é")
    assert message.patient_identifiers == (PatientIdentifier("MRN|1", "SIM~HOSP", "M\\R"),)


def test_extract_takes_the_first_subcomponent_of_a_component() -> None:
    segments = _replace_field(ADT_SEGMENTS, 2, 5, "TESTPATIENT&VON^ALPHA")

    assert extract(_message(segments)).patient_name.family == "TESTPATIENT"


def test_extract_takes_placer_number_from_obr_before_orc() -> None:
    message = extract(_message(ORU_SEGMENTS))

    assert [order.placer_order_number for order in message.orders] == ["PLC-ORC-1", "PLC-OBR-2"]


def test_extract_keeps_z_segments_in_order() -> None:
    segments = (*ADT_SEGMENTS[:2], "ZAB|1", ADT_SEGMENTS[2], "ZPI|2", "Z01|3")

    assert extract(_message(segments)).segment_ids == ("MSH", "EVN", "ZAB", "PID", "ZPI", "Z01")


# --- input shapes ------------------------------------------------------------------------------


@pytest.mark.parametrize("line_end", ["\r", "\n", "\r\n"], ids=["CR", "LF", "CRLF"])
def test_extract_gives_the_same_result_for_any_line_end(line_end: str) -> None:
    assert extract(_message(ADT_SEGMENTS, line_end)) == extract(_message(ADT_SEGMENTS))


def test_extract_tolerates_mixed_line_ends_bom_and_blank_lines() -> None:
    raw = b"\xef\xbb\xbf" + "\r\n".join(ADT_SEGMENTS[:2]).encode() + b"\n\n"
    raw += "\r".join(ADT_SEGMENTS[2:]).encode() + b"\r\n"

    assert extract(raw) == extract(_message(ADT_SEGMENTS))


def test_extract_without_trailing_segment_terminator() -> None:
    assert extract(_message(ADT_SEGMENTS).rstrip(b"\r")) == extract(_message(ADT_SEGMENTS))


@pytest.mark.parametrize("version", sorted(SUPPORTED_VERSIONS))
def test_extract_accepts_every_supported_version(version: str) -> None:
    segments = _replace_field(ORU_SEGMENTS, 0, 11, f"{version}^SIM")

    assert extract(_message(segments)).version == version


@pytest.mark.parametrize(
    "delimiters", [*ALTERNATIVE_DELIMITERS, Delimiters(truncation="#")], ids=str
)
def test_extract_with_alternative_encoding_characters(delimiters: Delimiters) -> None:
    default = Delimiters()
    translation = str.maketrans(
        {
            default.field: delimiters.field,
            default.component: delimiters.component,
            default.repetition: delimiters.repetition,
            default.escape: delimiters.escape,
            default.subcomponent: delimiters.subcomponent,
        }
    )
    msh, *rest = (segment.translate(translation) for segment in ORU_SEGMENTS)
    encoding = (
        delimiters.component + delimiters.repetition + delimiters.escape + delimiters.subcomponent
    )
    msh = msh.replace(encoding, encoding + delimiters.truncation, 1)

    translated = extract(_message([msh, *rest]))
    original = extract(_message(ORU_SEGMENTS))

    assert translated.delimiters == delimiters
    # Unescaped values hold plain text, so only OBX-3's "|" escape maps to another character.
    assert translated.observations[2].values[0] == f"LINE{delimiters.field}ONE"
    assert (
        translated.observations[2].values[1] == f"LINE{delimiters.escape}.br{delimiters.escape}TWO"
    )
    assert translated.orders == original.orders
    assert translated.observations[:2] == original.observations[:2]
    assert translated.control_id == original.control_id


def test_extract_of_split_batch_output_round_trips_a_batch() -> None:
    messages = [_message(ADT_SEGMENTS), _message(ORU_SEGMENTS)]

    extracted = [extract(raw) for raw in split_batch(batch(messages, line_end=b"\r\n"))]

    assert [message.control_id for message in extracted] == ["CTRL0001", "CTRL0002"]


# --- charsets ----------------------------------------------------------------------------------


def test_extract_falls_back_to_latin1_for_invalid_utf8() -> None:
    raw = _message(ORU_SEGMENTS[:1]) + "PID|1||MRN9||CAFÉ".encode("latin-1") + b"\r"

    assert extract(raw).patient_name.family == "CAFÉ"


def test_extract_decodes_utf8_by_default() -> None:
    raw = _message([*ORU_SEGMENTS[:1], "PID|1||MRN9||ÇAFÉ^ŁUKASZ"])

    assert extract(raw).patient_name == PersonName(family="ÇAFÉ", given="ŁUKASZ")


def test_extract_honours_a_declared_single_byte_charset() -> None:
    msh = _replace_field(ORU_SEGMENTS[:1], 0, 17, "8859/7")[0]
    raw = f"{msh}\rPID|1||MRN9||ΑΒΓ\r".encode("iso8859-7")

    message = extract(raw)

    assert message.patient_name.family == "ΑΒΓ"
    assert message.character_set == "8859/7"


def test_extract_reads_msh_fields_with_the_declared_charset() -> None:
    msh = _replace_field(ORU_SEGMENTS[:1], 0, 17, "8859/7")[0].replace("SIM_HOSP", "ΣΙΜ")
    raw = f"{msh}\rPID|1||MRN9\r".encode("iso8859-7")

    assert extract(raw).sending_facility == "ΣΙΜ"


def test_extract_declared_charset_wins_over_valid_utf8() -> None:
    msh = _replace_field(ORU_SEGMENTS[:1], 0, 17, "8859/1")[0]
    raw = f"{msh}\rPID|1||MRN9||".encode() + "é".encode() + b"\r"

    assert extract(raw).patient_name.family == "Ã©"


def test_extract_decodes_hex_escapes_with_the_declared_charset() -> None:
    msh = _replace_field(ORU_SEGMENTS[:1], 0, 17, "8859/1")[0]
    raw = _message([msh, "PID|1||MRN9||CAF\\Xe9\\"])

    assert extract(raw).patient_name.family == "CAFé"


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"\r\n", b"\xef\xbb\xbf", b" \n \r"])
def test_extract_rejects_empty_input(raw: bytes) -> None:
    assert _error_code(raw) == "empty"


@pytest.mark.parametrize("raw", [_message(ADT_SEGMENTS[1:]), b"garbage\x00\xff", b"MS|1"])
def test_extract_rejects_input_not_starting_with_msh(raw: bytes) -> None:
    assert _error_code(raw) == "no_msh"


@pytest.mark.parametrize("msh_2", ["", "^~", "^~\\&#$", "^^\\&", "^~\\A", "^ \\&"])
def test_extract_rejects_bad_encoding_characters(msh_2: str) -> None:
    assert (
        _error_code(_message(_replace_field(ADT_SEGMENTS, 0, 1, msh_2)))
        == "bad_encoding_characters"
    )


def test_extract_rejects_a_missing_field_separator() -> None:
    assert _error_code(b"MSH\rPID|1\r") == "bad_encoding_characters"


@pytest.mark.parametrize(
    "segment",
    ["pid|1", "PI|1", "PIDX|1", "1AB|1", "P-D|1", "MSH|^~\\&|NESTED", "BHS|^~\\&", "TESTPATIENT"],
)
def test_extract_rejects_bad_segments(segment: str) -> None:
    raw = _message((*ADT_SEGMENTS[:2], segment, *ADT_SEGMENTS[2:]))

    with pytest.raises(Hl7Error) as raised:
        extract(raw)

    assert raised.value.code == "bad_segment"
    assert raised.value.detail == (
        "segment 3 is a header inside a message"
        if segment[:3] in ("MSH", "BHS")
        else "segment 3 does not start with a valid id"
    )


def test_extract_accepts_a_segment_made_of_its_id_only() -> None:
    assert extract(_message((*ADT_SEGMENTS, "ZZZ"))).segment_ids[-1] == "ZZZ"


@pytest.mark.parametrize("msh_9", ["", "ADT", "^A01", "ADT^", "~ADT^A01"])
def test_extract_requires_message_code_and_trigger_event(msh_9: str) -> None:
    assert _error_code(_message(_replace_field(ADT_SEGMENTS, 0, 8, msh_9))) == "missing_msh_9"


def test_extract_requires_control_id() -> None:
    assert _error_code(_message(_replace_field(ADT_SEGMENTS, 0, 9, ""))) == "missing_msh_10"


def test_extract_requires_version() -> None:
    assert _error_code(_message(_replace_field(ADT_SEGMENTS, 0, 11, ""))) == "missing_msh_12"


def test_extract_requires_version_when_msh_ends_early() -> None:
    assert _error_code(b"MSH|^~\\&|SIM||||20240101||ADT^A01|CTRL1|P\r") == "missing_msh_12"


@pytest.mark.parametrize("version", ["2.0", "2.9", "3.0", "2.5.2", "V2.5", " 2.5", "2.10"])
def test_extract_rejects_unsupported_versions(version: str) -> None:
    assert (
        _error_code(_message(_replace_field(ADT_SEGMENTS, 0, 11, version))) == "unsupported_version"
    )


def test_extract_rejects_bytes_that_do_not_match_the_declared_charset() -> None:
    msh = _replace_field(ORU_SEGMENTS[:1], 0, 17, "8859/7")[0]
    # 0xD2 is unassigned in ISO 8859-7.
    assert _error_code(msh.encode() + b"\rPID|1||MRN9||\xd2\r") == "decode_error"


def test_extract_rejects_a_declared_charset_that_er7_cannot_carry() -> None:
    assert (
        _error_code(_message(_replace_field(ADT_SEGMENTS, 0, 17, "UNICODE UTF-16")))
        == "decode_error"
    )


def test_extract_error_details_never_contain_message_content() -> None:
    secret = "SECRETVALUE123"
    bad_inputs = [
        _message((*ADT_SEGMENTS, f"{secret}|1")),
        _message(_replace_field(ADT_SEGMENTS, 0, 11, secret)),
        _message(_replace_field(ADT_SEGMENTS, 0, 8, secret)),
        f"{secret}|{secret}".encode(),
    ]
    for raw in bad_inputs:
        with pytest.raises(Hl7Error) as raised:
            extract(raw)
        assert secret not in str(raised.value)
        assert secret not in raised.value.detail


# --- timestamps --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hl7", "iso"),
    [
        ("2024", "2024"),
        ("202402", "2024-02"),
        ("20240229", "2024-02-29"),
        ("2024022913", "2024-02-29T13:00"),
        ("202402291305", "2024-02-29T13:05"),
        ("20240229130559", "2024-02-29T13:05:59"),
        ("20240229130559.1", "2024-02-29T13:05:59.1"),
        ("20240229130559.1234", "2024-02-29T13:05:59.1234"),
        ("20240229130559+0100", "2024-02-29T13:05:59+01:00"),
        ("202402291305-0530", "2024-02-29T13:05-05:30"),
        ("20240229130559.12-0000", "2024-02-29T13:05:59.12-00:00"),
        ("20240229+0100", "2024-02-29"),
        (" 20240229 ", "2024-02-29"),
        ("2024+0100", "2024"),
        ("202402-0000", "2024-02"),
        ("\t2024022913\n", "2024-02-29T13:00"),
        ("2024022913+1400", "2024-02-29T13:00+14:00"),
        ("20231231235959.000001-1459", "2023-12-31T23:59:59.000001-14:59"),
        ("20000229", "2000-02-29"),
        ("20240430000000", "2024-04-30T00:00:00"),
    ],
)
def test_hl7_ts_to_iso_keeps_the_given_precision(hl7: str, iso: str) -> None:
    assert hl7_ts_to_iso(hl7) == iso


@pytest.mark.parametrize(
    "hl7",
    [
        "",
        "24",
        "2024-02-29",
        "20230229",
        "20241301",
        "20240100",
        "2024022924",
        "202402291360",
        "20240229130560",
        "20240229130559.",
        "20240229130559+01",
        "20240229130559+1500",
        "20240229130559+0160",
        "20240229T1305",
        "2024022913055",
        "20240229^S",
        " ",
        "2024020",
        "202400",
        "202413",
        "19000229",
        "20240431",
        "20240229.5",
        "202402291305.5",
        "20240229130559.1.2",
        "2024022913055a",
        "20240229130559+",
        "20240229130559+01000",
        "20240229130559++0100",
        "20240229130559 +0100",
        "+0100",
        "2024-1500",
        "2024-12",
        "-12",
    ],
)
def test_hl7_ts_to_iso_rejects_invalid_values(hl7: str) -> None:
    assert hl7_ts_to_iso(hl7) is None


# --- synthetic generator -----------------------------------------------------------------------


def test_synthetic_corpus_is_deterministic_per_seed() -> None:
    assert mixed_corpus(11, 200) == mixed_corpus(11, 200)
    assert mixed_corpus(11, 200) != mixed_corpus(12, 200)


def test_synthetic_corpus_is_valid_varied_and_uniquely_identified() -> None:
    corpus = mixed_corpus(3, 3000)

    extracted = [extract(raw) for raw in corpus]

    control_ids = [message.control_id for message in extracted]
    assert len(set(control_ids)) == len(control_ids)
    kinds = Counter(f"{m.message_code}^{m.trigger_event}" for m in extracted)
    assert set(kinds) == {"ADT^A01", "ADT^A03", "ADT^A04", "ADT^A08", "ORU^R01", "ORM^O01"}
    assert {m.version for m in extracted} == set(SyntheticFeed().versions)
    assert len({m.delimiters for m in extracted}) == 4
    assert any("ZPI" in m.segment_ids for m in extracted)
    observation_counts = Counter(len(m.observations) for m in extracted if m.message_code == "ORU")
    assert set(observation_counts) == {1, 2, 3, 4, 5}
    assert any(len(obx.values) > 1 for m in extracted for obx in m.observations)
    assert all(m.patient_name.family for m in extracted)
    escaped = [raw for raw in corpus if b"\\F\\" in raw or b"\\S\\" in raw or b"\\X" in raw]
    assert escaped


def test_synthetic_free_text_escapes_decode_to_plain_text() -> None:
    rng = random.Random(5)
    texts = {
        obx.text for _ in range(300) for obx in extract(oru(rng, escape_rate=1.0)).observations
    }

    assert {"SEE NOTE | REVIEW", "A^B RATIO", "TOM & JERRY", "LEFT~RIGHT", "CAFé SAMPLE"} <= texts


def test_synthetic_builders_take_sender_and_control_id() -> None:
    raw = adt(
        random.Random(1),
        trigger="A08",
        sending_application="APP_X",
        sending_facility="FAC_Y",
        control_id="FIXED-1",
        version="2.8",
    )

    message = extract(raw)

    assert (message.sending_application, message.sending_facility) == ("APP_X", "FAC_Y")
    assert (message.control_id, message.trigger_event, message.version) == ("FIXED-1", "A08", "2.8")


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_synthetic_malformed_samples_fail_with_their_code(kind: str) -> None:
    rng = random.Random(kind)
    for _ in range(20):
        sample = malformed(rng, kind)
        try:
            messages = split_batch(sample.payload)
        except Hl7Error as error:
            assert error.code == sample.expected_code
            continue
        assert len(messages) == 1
        assert _error_code(messages[0]) == sample.expected_code
        assert _error_code(sample.payload) == sample.expected_code
