"""MSH-only reading for ingest: strict `read_header`, best-effort `read_header_lenient`.

`extract()` is the reference: it validates the same header checks in the same order, so on any
input `read_header` must fail with extract's code or agree with extract's header fields (the
body checks, bad_segment, are extract's alone). Synthetic data only.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.hl7 import (
    Delimiters,
    ExtractedMessage,
    Hl7Error,
    MessageHeader,
    PartialHeader,
    extract,
    read_header,
    read_header_lenient,
)
from streams.hl7.synthetic import MALFORMED_KINDS, malformed, mixed_corpus

MSH = (
    "MSH|^~\\&|SIM_ADT&1.2.3&ISO|SIM_HOSP|LANEWAY^X|HUB|20240115083000||ADT^A01^ADT_A01"
    "|CTRL0001|P^T|2.5.1^INT|||AL|NE||UNICODE UTF-8~8859/1"
)
BODY = "EVN|A01|20240115082500\rPID|1||MRN001||TESTPATIENT^ALPHA\r"
HEADER = MessageHeader(
    delimiters=Delimiters(),
    sending_application="SIM_ADT",
    sending_facility="SIM_HOSP",
    receiving_application="LANEWAY",
    receiving_facility="HUB",
    message_code="ADT",
    trigger_event="A01",
    message_structure="ADT_A01",
    control_id="CTRL0001",
    processing_id="P",
    version="2.5.1",
    accept_ack_type="AL",
    application_ack_type="NE",
    character_set="UNICODE UTF-8",
)
_HEADER_CODES = (
    "empty",
    "no_msh",
    "bad_encoding_characters",
    "decode_error",
    "missing_msh_9",
    "missing_msh_10",
    "missing_msh_12",
    "unsupported_version",
)


def _with_msh_field(msh: str, number: int, value: str) -> str:
    fields = msh.split("|")
    index = number - 1  # MSH-1 is the separator itself, so MSH-n sits at index n - 1
    fields += [""] * (index + 1 - len(fields))
    fields[index] = value
    return "|".join(fields)


def _header_of(message: ExtractedMessage) -> MessageHeader:
    return MessageHeader(
        delimiters=message.delimiters,
        sending_application=message.sending_application,
        sending_facility=message.sending_facility,
        receiving_application=message.receiving_application,
        receiving_facility=message.receiving_facility,
        message_code=message.message_code,
        trigger_event=message.trigger_event,
        message_structure=message.message_structure,
        control_id=message.control_id,
        processing_id=message.processing_id,
        version=message.version,
        accept_ack_type=message.accept_ack_type,
        application_ack_type=message.application_ack_type,
        character_set=message.character_set,
    )


def _assert_agrees_with_extract(raw: bytes) -> None:
    """read_header fails like extract on header problems and otherwise reads the same header."""
    try:
        expected: MessageHeader | str = _header_of(extract(raw))
    except Hl7Error as error:
        assert error.code in (*_HEADER_CODES, "bad_segment")
        expected = error.code
    try:
        actual: MessageHeader | str = read_header(raw)
    except Hl7Error as error:
        actual = error.code
    if expected == "bad_segment":
        assert isinstance(actual, MessageHeader)  # the body is not read_header's business
    else:
        assert actual == expected


# --- read_header -------------------------------------------------------------------------------


def test_read_header_reads_every_field() -> None:
    assert read_header(f"{MSH}\r{BODY}".encode()) == HEADER


def test_read_header_ignores_the_body() -> None:
    raw = f"{MSH}\rpid|not a segment\r\x00\xff garbage".encode("latin-1")

    assert read_header(raw).control_id == "CTRL0001"
    with pytest.raises(Hl7Error, match="bad_segment"):
        extract(raw)


@pytest.mark.parametrize(
    "prefix", [b"", b"\xef\xbb\xbf", b"\r\n", b"  \n\r"], ids=["none", "bom", "crlf", "blank"]
)
@pytest.mark.parametrize("line_end", [b"\r", b"\n", b"\r\n"], ids=["CR", "LF", "CRLF"])
def test_read_header_tolerates_bom_blank_lines_and_any_line_end(
    prefix: bytes, line_end: bytes
) -> None:
    raw = prefix + f"{MSH}\r{BODY}".encode().replace(b"\r", line_end)
    # Ending at MSH-12, so that the line end directly follows a field that is checked.
    short_msh = "MSH|^~\\&|SIM|FAC|||20240101||ADT^A01|C1|P|2.5"
    short_raw = prefix + f"{short_msh}\r{BODY}".encode().replace(b"\r", line_end)

    assert read_header(raw) == HEADER
    assert read_header(short_raw).version == "2.5"


def test_read_header_reads_a_message_that_is_only_an_msh_without_line_end() -> None:
    assert read_header(MSH.encode()) == HEADER


def test_read_header_unescapes_and_uses_alternative_delimiters() -> None:
    delimiters = Delimiters(field="*", component="@", repetition="%", escape="!", subcomponent="$")
    raw = b"MSH*@%!$*SIM!F!APP*FAC*HUB****ADT@A08@ADT_A01*C!S!1*T*2.3.1\r"

    header = read_header(raw)

    assert header.delimiters == delimiters
    assert (header.sending_application, header.control_id) == ("SIM*APP", "C@1")
    assert (header.trigger_event, header.processing_id, header.version) == ("A08", "T", "2.3.1")


def test_read_header_decodes_with_the_declared_charset() -> None:
    msh = _with_msh_field(MSH, 18, "8859/7").replace("SIM_HOSP", "ΣΙΜ")

    header = read_header(f"{msh}\rPID|1||MRN9||ΑΒΓ\r".encode("iso8859-7"))

    assert (header.sending_facility, header.character_set) == ("ΣΙΜ", "8859/7")


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"", "empty"),
        (b"\xef\xbb\xbf\r\n \r", "empty"),
        (b"PID|1\r" + MSH.encode(), "no_msh"),
        (b"MSH", "bad_encoding_characters"),
        (_with_msh_field(MSH, 2, "^~").encode(), "bad_encoding_characters"),
        (_with_msh_field(MSH, 18, "8859/7").encode() + b"\rPID|\xd2\r", "decode_error"),
        (_with_msh_field(MSH, 18, "UNICODE UTF-16").encode(), "decode_error"),
        (_with_msh_field(MSH, 9, "ADT").encode(), "missing_msh_9"),
        (_with_msh_field(MSH, 10, "").encode(), "missing_msh_10"),
        (_with_msh_field(MSH, 12, "").encode(), "missing_msh_12"),
        (_with_msh_field(MSH, 12, "2.9").encode(), "unsupported_version"),
        # Several problems at once: the first check in extract's order wins.
        (_with_msh_field(_with_msh_field(MSH, 9, ""), 12, "9.9").encode(), "missing_msh_9"),
        (_with_msh_field(_with_msh_field(MSH, 10, ""), 12, "").encode(), "missing_msh_10"),
    ],
)
def test_read_header_fails_with_extracts_code(raw: bytes, code: str) -> None:
    with pytest.raises(Hl7Error) as raised:
        read_header(raw)

    assert raised.value.code == code
    _assert_agrees_with_extract(raw)


def test_read_header_errors_never_contain_message_content() -> None:
    secret = "SECRETVALUE123"
    for number in (2, 9, 12):
        with pytest.raises(Hl7Error) as raised:
            read_header(_with_msh_field(MSH, number, secret).encode())
        assert secret not in str(raised.value)


def test_read_header_agrees_with_extract_on_a_synthetic_corpus() -> None:
    for raw in mixed_corpus(7, 1500):
        assert read_header(raw) == _header_of(extract(raw))


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_read_header_agrees_with_extract_on_malformed_samples(kind: str) -> None:
    rng = random.Random(kind)
    for _ in range(20):
        _assert_agrees_with_extract(malformed(rng, kind).payload)


_msh_values = st.sampled_from(["", "ADT", "ADT^A01", "^A01", "2.5", "2.9", "X", "^~", "^~\\&#"])


@given(
    changes=st.dictionaries(st.sampled_from([2, 9, 10, 12, 18]), _msh_values, max_size=4),
    body=st.sampled_from(["", BODY, "pid|bad\r", "\r\n\r\n"]),
    cut=st.integers(min_value=0, max_value=200),
)
def test_read_header_agrees_with_extract_on_mutated_headers(
    changes: dict[int, str], body: str, cut: int
) -> None:
    msh = MSH
    for number, value in changes.items():
        msh = _with_msh_field(msh, number, value)
    raw = f"{msh}\r{body}".encode()

    _assert_agrees_with_extract(raw)
    _assert_agrees_with_extract(raw[:cut])


@given(st.binary(max_size=300))
def test_read_header_raises_only_hl7_errors_and_agrees_on_arbitrary_bytes(raw: bytes) -> None:
    _assert_agrees_with_extract(raw)
    _assert_agrees_with_extract(b"MSH|^~\\&|" + raw)


# --- read_header_lenient -----------------------------------------------------------------------


def test_lenient_reads_what_read_header_reads_from_a_valid_message() -> None:
    assert read_header_lenient(f"{MSH}\r{BODY}".encode()) == PartialHeader(
        delimiters=Delimiters(),
        sending_application="SIM_ADT",
        sending_facility="SIM_HOSP",
        receiving_application="LANEWAY",
        receiving_facility="HUB",
        trigger_event="A01",
        control_id="CTRL0001",
        processing_id="P",
        version="2.5.1",
        accept_ack_type="AL",
        application_ack_type="NE",
        character_set="UNICODE UTF-8",
    )


@pytest.mark.parametrize(
    ("number", "value", "field", "expected"),
    [
        (9, "ADT", "control_id", "CTRL0001"),
        (9, "ADT", "trigger_event", ""),
        (10, "", "version", "2.5.1"),
        (12, "", "control_id", "CTRL0001"),
        (12, "9.9", "version", "9.9"),
    ],
)
def test_lenient_recovers_the_other_fields_of_a_rejected_header(
    number: int, value: str, field: str, expected: str
) -> None:
    raw = _with_msh_field(MSH, number, value).encode()
    with pytest.raises(Hl7Error):
        read_header(raw)

    partial = read_header_lenient(raw)

    assert getattr(partial, field) == expected
    assert (partial.sending_application, partial.receiving_facility) == ("SIM_ADT", "HUB")


def test_lenient_splits_on_msh_1_when_msh_2_is_invalid() -> None:
    partial = read_header_lenient(_with_msh_field(MSH, 2, "^^\\&").encode())

    assert partial.delimiters == Delimiters()
    assert (partial.control_id, partial.version, partial.sending_facility) == (
        "CTRL0001",
        "2.5.1",
        "SIM_HOSP",
    )


def test_lenient_keeps_a_usable_alternative_field_separator() -> None:
    partial = read_header_lenient(b"MSH*@%*SIM*FAC*APP*HUB***ADT@A01*C1*P*2.5\r")

    assert partial.delimiters == Delimiters(field="*")
    assert (partial.sending_application, partial.control_id) == ("SIM", "C1")


@pytest.mark.parametrize(
    "raw",
    [b"", b"\r\n", b"PID|1||MRN1\r", b"\xff\xfe garbage", b"MSH", b"MSH^~\\&|SIM|FAC\r"],
    ids=["empty", "blank", "no-msh", "garbage", "msh-only", "separator-is-an-encoding-char"],
)
def test_lenient_without_a_readable_msh_knows_nothing(raw: bytes) -> None:
    assert read_header_lenient(raw) == PartialHeader()


def test_lenient_falls_back_to_default_decoding_when_msh_18_does_not_match() -> None:
    msh = _with_msh_field(MSH, 18, "8859/7")
    raw = msh.encode() + b"\rPID|1||\xd2\r"

    partial = read_header_lenient(raw)

    assert (partial.control_id, partial.character_set) == ("CTRL0001", "")


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_lenient_echoes_the_control_id_whenever_msh_10_is_readable(kind: str) -> None:
    rng = random.Random(kind)
    for _ in range(20):
        sample = malformed(rng, kind)
        partial = read_header_lenient(sample.payload)
        if kind in ("missing_msh", "garbage", "empty"):
            assert partial == PartialHeader()
        elif kind in ("no_msh_10", "truncated"):
            assert partial.control_id == ""
        else:
            assert partial.control_id.startswith("BAD")


@given(st.binary(max_size=300))
def test_lenient_never_raises(raw: bytes) -> None:
    assert isinstance(read_header_lenient(raw), PartialHeader)
    assert isinstance(read_header_lenient(b"MSH|" + raw), PartialHeader)
