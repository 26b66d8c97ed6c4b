"""ACK building and the acknowledgment decision, with hl7apy (1.3.5) as the parsing oracle.

Every ACK built here is parsed by hl7apy, with STRICT validation (its ACK structure, required
fields, withdrawn fields, lengths, timestamps) wherever hl7apy can validate it:

- 2.1: hl7apy's 2.1 TS requires TS.2 (degree of precision, optional in the standard) and models
  ERR-1 as a plain ID without components, so 2.1 ACKs are parsed TOLERANT.
- 2.1-2.3: MSH-9 has no structure component, from which hl7apy's `parse_message` would derive
  the structure; the ACK structure is given to it explicitly instead.
- 2.7.1: hl7apy has no 2.7.1 library; such ACKs are parsed as 2.7 (2.7.1 only changed tables).
- ACKs of a message whose MSH-10 is unknown have an empty MSA-2, and from 2.7 those whose
  trigger event is unknown have an empty MSG.2: both are required, so those are TOLERANT too.

Synthetic data only.
"""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.parser import get_message_info, parse_message, parse_segments

from streams.hl7 import (
    SUPPORTED_VERSIONS,
    Delimiters,
    Hl7Error,
    MessageHeader,
    PartialHeader,
    read_header,
    read_header_lenient,
)
from streams.hl7.ack import (
    AN_EARLIER_MESSAGE_WAS_REFUSED,
    BROKER_FAILURE,
    FALLBACK_VERSION,
    MIXED_SENDERS,
    RATE_CEILING,
    SENDER_PAUSED,
    UNKNOWN_SENDER,
    AckCode,
    AckError,
    ErrorCondition,
    ErrorLocation,
    Outcome,
    ack_codes,
    acknowledge,
    build_ack,
    error_for,
    message_too_large,
)
from streams.hl7.synthetic import ALTERNATIVE_DELIMITERS, MALFORMED_KINDS, malformed

NOW = datetime(2024, 3, 9, 14, 5, 7, 123456)
ACK_CONTROL_ID = "LW-0000000042"
DEFAULT = Delimiters()
TRUNCATING = Delimiters(truncation="#")
DELIMITER_SETS = [DEFAULT, *ALTERNATIVE_DELIMITERS, TRUNCATING]
VERSIONS = sorted(SUPPORTED_VERSIONS)
VERSIONS_WITHOUT_STRUCTURE = ("2.1", "2.2", "2.3")
ELD_VERSIONS = ("2.1", "2.2", "2.3", "2.3.1", "2.4")
VERSIONS_FROM_2_7 = ("2.7", "2.7.1", "2.8", "2.8.1", "2.8.2")
_HL7APY_STAND_IN_VERSIONS = {"2.7.1": "2.7"}
_HL7_ERROR_CODES = (
    "empty",
    "no_msh",
    "bad_encoding_characters",
    "decode_error",
    "missing_msh_9",
    "missing_msh_10",
    "missing_msh_12",
    "unsupported_version",
    "bad_segment",
    "batch_malformed",
)
REJECTIONS = (
    UNKNOWN_SENDER,
    SENDER_PAUSED,
    BROKER_FAILURE,
    RATE_CEILING,
    MIXED_SENDERS,
    AN_EARLIER_MESSAGE_WAS_REFUSED,
)
ALL_ERRORS = [*(error_for(Hl7Error(code)) for code in _HL7_ERROR_CODES), *REJECTIONS]


def _header(version: str = "2.5", delimiters: Delimiters = DEFAULT, **fields: Any) -> MessageHeader:
    values: dict[str, Any] = {
        "delimiters": delimiters,
        "sending_application": "SIM_LAB",
        "sending_facility": "SIM_HOSP",
        "receiving_application": "LANEWAY",
        "receiving_facility": "HUB",
        "message_code": "ORU",
        "trigger_event": "R01",
        "message_structure": "ORU_R01",
        "control_id": "CTRL-42",
        "processing_id": "T",
        "version": version,
        "accept_ack_type": "",
        "application_ack_type": "",
        "character_set": "",
    }
    return MessageHeader(**(values | fields))


def _encoding_characters(delimiters: Delimiters) -> str:
    return "".join(
        (
            delimiters.component,
            delimiters.repetition,
            delimiters.escape,
            delimiters.subcomponent,
            delimiters.truncation,
        )
    )


def _parse(ack: bytes, *, strict: bool, codec: str = "utf-8") -> Message:
    """hl7apy's reading of an ACK (see the module docstring for when `strict` is possible)."""
    text = ack.decode(codec)
    version = text.split("\r", 1)[0].split(text[3])[11]
    stand_in = _HL7APY_STAND_IN_VERSIONS.get(version)
    if stand_in is not None:
        text = text.replace(f"{text[3]}{version}\r", f"{text[3]}{stand_in}\r", 1)
        version = stand_in
    if not strict:
        return parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)
    if version in VERSIONS_WITHOUT_STRUCTURE:
        encoding_chars, _, _ = get_message_info(text)
        message = Message(
            "ACK",
            version=version,
            validation_level=VALIDATION_LEVEL.STRICT,
            encoding_chars=encoding_chars,
        )
        message.children = parse_segments(
            text, version, encoding_chars, VALIDATION_LEVEL.STRICT, message.reference, False
        )
    else:
        message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=False)
        assert message.name == "ACK"
    message.validate()
    return message


def _strict_possible(version: str) -> bool:
    return version != "2.1"


def _descend(message: Message, path: str) -> Any | None:
    element: Any = message
    for name in path.split("."):
        element = getattr(element, name)
        if not element:
            return None
    return element


def _er7(message: Message, path: str) -> str:
    """hl7apy's ER7 text of e.g. "msh.msh_3", "" when absent. hl7apy re-escapes a bare escape
    character here (\\X0D\\ becomes \\E\\X0D\\E\\): use `_raw` for escaped values.
    """
    element = _descend(message, path)
    return "" if element is None else element.to_er7()


def _raw(message: Message, path: str) -> str:
    """The raw, still escaped text hl7apy parsed for the first subcomponent at `path`."""
    element = _descend(message, path)
    assert element is not None
    while element.children:
        element = element.children[0]
    value = element.value
    return value if isinstance(value, str) else value.value


def _joined(delimiters: Delimiters, separator: str, *parts: str) -> str:
    return getattr(delimiters, separator).join(parts)


# --- building: every version, delimiter set and outcome ----------------------------------------


@pytest.mark.parametrize(
    ("version", "delimiters"),
    [
        (version, delimiters)
        for version in VERSIONS
        for delimiters in DELIMITER_SETS
        # A truncation character only exists from 2.7; see the tests for it below.
        if not delimiters.truncation or version in VERSIONS_FROM_2_7
    ],
    ids=str,
)
def test_accept_ack_parses_and_swaps_sender_and_receiver(
    version: str, delimiters: Delimiters
) -> None:
    header = _header(version, delimiters)

    ack = build_ack(
        header, AckCode.APPLICATION_ACCEPT, error=None, control_id=ACK_CONTROL_ID, now=NOW
    )

    message = _parse(ack, strict=_strict_possible(version))
    d = delimiters
    assert ack.decode().startswith(f"MSH{d.field}{_encoding_characters(d)}{d.field}")
    assert ack.count(b"\r") == 2 and ack.endswith(b"\r")
    assert _er7(message, "msh.msh_3") == "LANEWAY"
    assert _er7(message, "msh.msh_4") == "HUB"
    assert _er7(message, "msh.msh_5") == "SIM_LAB"
    assert _er7(message, "msh.msh_6") == "SIM_HOSP"
    assert _er7(message, "msh.msh_7").startswith("20240309140507")
    expected_type = (
        ["ACK", "R01"] if version in VERSIONS_WITHOUT_STRUCTURE else ["ACK", "R01", "ACK"]
    )
    assert _er7(message, "msh.msh_9") == _joined(d, "component", *expected_type)
    assert _er7(message, "msh.msh_10") == ACK_CONTROL_ID
    assert _er7(message, "msh.msh_11") == "T"
    assert ack.decode().split("\r")[0].split(d.field)[11] == version
    assert _er7(message, "msa.msa_1") == "AA"
    assert _er7(message, "msa.msa_2") == "CTRL-42"
    assert _er7(message, "msa.msa_3") == ""
    assert [segment.name for segment in message.children] == ["MSH", "MSA"]


@pytest.mark.parametrize("error", ALL_ERRORS, ids=lambda error: error.message)
@pytest.mark.parametrize("version", VERSIONS)
def test_error_ack_carries_msa_and_err_for_the_version(version: str, error: AckError) -> None:
    for delimiters in (DEFAULT, ALTERNATIVE_DELIMITERS[0]):
        code = (
            AckCode.APPLICATION_REJECT
            if error.outcome is Outcome.REJECT
            else AckCode.APPLICATION_ERROR
        )
        ack = build_ack(
            _header(version, delimiters), code, error=error, control_id=ACK_CONTROL_ID, now=NOW
        )

        message = _parse(ack, strict=_strict_possible(version))

        d = delimiters
        assert [segment.name for segment in message.children] == ["MSH", "MSA", "ERR"]
        assert _er7(message, "msa.msa_1") == code
        assert _er7(message, "msa.msa_2") == "CTRL-42"
        text = error.message  # no delimiter of these sets occurs in it
        if version in VERSIONS_FROM_2_7:
            assert ack.decode().split("\r")[1].count(d.field) == 2  # no MSA-3
        else:
            assert _er7(message, "msa.msa_3") == text
        location = error.location
        condition = error.condition
        if version in ELD_VERSIONS:
            position = ("", "", "")
            if location is not None:
                position = (location.segment_id, str(location.sequence), str(location.field or ""))
            coded = _joined(d, "subcomponent", condition.code, condition.text, "HL70357")
            expected_eld = _joined(d, "component", *position, coded)
            err_1 = ack.decode().split("\r")[2].split(d.field)[1]
            assert err_1 == expected_eld
            if version != "2.1":
                assert _er7(message, "err.err_1") == expected_eld
        else:
            erl = ""
            if location is not None:
                parts = [location.segment_id, str(location.sequence)]
                parts += [str(location.field)] if location.field is not None else []
                erl = _joined(d, "component", *parts)
            assert _er7(message, "err.err_2") == erl
            assert _er7(message, "err.err_3") == _joined(
                d, "component", condition.code, condition.text, "HL70357"
            )
            assert _er7(message, "err.err_4") == "E"
            assert _er7(message, "err.err_8") == text


def test_error_location_of_a_missing_msh_9_is_msh_1_9() -> None:
    ack = build_ack(
        _header("2.5"),
        AckCode.APPLICATION_REJECT,
        error=error_for(Hl7Error("missing_msh_9")),
        control_id=ACK_CONTROL_ID,
        now=NOW,
    )

    assert ack.split(b"\r")[2] == (
        b"ERR||MSH^1^9|101^Required field missing^HL70357|E||||MSH-9 (message type) is missing"
    )


def test_error_ack_for_2_4_uses_eld() -> None:
    ack = build_ack(
        _header("2.4"),
        AckCode.APPLICATION_ERROR,
        error=error_for(Hl7Error("missing_msh_10")),
        control_id=ACK_CONTROL_ID,
        now=NOW,
    )

    assert ack.split(b"\r")[1:3] == [
        b"MSA|AE|CTRL-42|MSH-10 (message control id) is missing",
        b"ERR|MSH^1^10^101&Required field missing&HL70357",
    ]


@pytest.mark.parametrize("version", ["2.7", "2.8"])
def test_truncation_character_is_kept_from_2_7(version: str) -> None:
    ack = build_ack(
        _header(version, TRUNCATING, sending_application="A#B"),
        AckCode.APPLICATION_ACCEPT,
        error=None,
        control_id=ACK_CONTROL_ID,
        now=NOW,
    )

    assert ack.startswith(b"MSH|^~\\&#|")
    assert b"|A\\P\\B|" in ack
    assert _raw(_parse(ack, strict=True), "msh.msh_5") == "A\\P\\B"


@pytest.mark.parametrize("version", ["2.3", "2.5", "2.6"])
def test_truncation_character_is_dropped_before_2_7(version: str) -> None:
    ack = build_ack(
        _header(version, TRUNCATING, sending_application="A#B"),
        AckCode.APPLICATION_ACCEPT,
        error=None,
        control_id=ACK_CONTROL_ID,
        now=NOW,
    )

    assert ack.startswith(b"MSH|^~\\&|")
    assert b"|A#B|" in ack  # a plain character where it has no meaning
    _parse(ack, strict=True)


# --- field rules --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["", "2.9", "3.0", "2.5.9"])
def test_unknown_or_unsupported_version_answers_in_the_fallback_version(version: str) -> None:
    header = PartialHeader(control_id="CTRL-9", trigger_event="A01", version=version)

    ack = build_ack(
        header,
        AckCode.APPLICATION_REJECT,
        error=error_for(Hl7Error("unsupported_version")),
        control_id=ACK_CONTROL_ID,
        now=NOW,
    )

    assert FALLBACK_VERSION == "2.5"
    message = _parse(ack, strict=True)
    assert _er7(message, "msh.msh_12") == "2.5"
    assert _er7(message, "msh.msh_11") == "P"  # unknown processing id
    assert _er7(message, "msa.msa_2") == "CTRL-9"
    assert _er7(message, "err.err_3").startswith("203^")


def test_ack_of_a_header_with_nothing_known_still_parses() -> None:
    ack = build_ack(
        PartialHeader(),
        AckCode.APPLICATION_ERROR,
        error=error_for(Hl7Error("empty")),
        control_id=ACK_CONTROL_ID,
        now=NOW,
    )

    assert ack.split(b"\r")[:2] == [
        b"MSH|^~\\&|||||20240309140507||ACK^^ACK|LW-0000000042|P|2.5",
        b"MSA|AE||Message is empty",
    ]
    message = _parse(ack, strict=False)
    assert _er7(message, "err.err_3") == "100^Segment sequence error^HL70357"


@pytest.mark.parametrize("version", ["2.1", "2.3"])
def test_ack_without_a_known_trigger_before_2_3_1_is_plain_ack(version: str) -> None:
    ack = build_ack(
        _header(version, trigger_event=""),
        AckCode.APPLICATION_ACCEPT,
        error=None,
        control_id=ACK_CONTROL_ID,
        now=NOW,
    )

    assert ack.split(b"|")[8] == b"ACK"


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (NOW, "20240309140507"),
        (NOW.replace(tzinfo=UTC), "20240309140507+0000"),
        (NOW.replace(tzinfo=timezone(timedelta(hours=-5, minutes=-30))), "20240309140507-0530"),
    ],
)
def test_msh_7_is_now_to_the_second_with_its_offset(now: datetime, expected: str) -> None:
    ack = build_ack(
        _header(), AckCode.APPLICATION_ACCEPT, error=None, control_id=ACK_CONTROL_ID, now=now
    )

    assert _er7(_parse(ack, strict=True), "msh.msh_7") == expected


def test_field_values_are_escaped_with_the_message_delimiters() -> None:
    delimiters = ALTERNATIVE_DELIMITERS[0]
    d = delimiters
    # Short: HD.1 is an IS of at most 20 characters in 2.5, escapes included.
    awkward = f"{d.field}{d.component}{d.repetition}{d.escape}{d.subcomponent}"
    header = _header(
        "2.5",
        delimiters,
        sending_application=awkward,
        receiving_facility="L\rB\nH",
        control_id="\x0b\x1c\x00",
        trigger_event=f"R{d.component}01",
    )

    ack = build_ack(
        header, AckCode.APPLICATION_ACCEPT, error=None, control_id=ACK_CONTROL_ID, now=NOW
    )

    assert not any(byte in ack for byte in (b"\x0b", b"\x1c", b"\x00", b"\n"))
    assert ack.count(b"\r") == 2
    message = _parse(ack, strict=True)
    unescaper = hl7.parse(ack.decode())
    assert unescaper.unescape(_raw(message, "msh.msh_5")) == awkward
    assert unescaper.unescape(_raw(message, "msh.msh_4")) == "L\rB\nH"
    assert unescaper.unescape(_raw(message, "msa.msa_2")) == "\x0b\x1c\x00"
    assert unescaper.unescape(_raw(message, "msh.msh_9.msg_2")) == f"R{d.component}01"


def test_declared_charset_is_echoed_and_used_to_encode() -> None:
    raw = (
        "MSH|^~\\&|SIM|ΣΙΜ|LANEWAY|HUB|20240101||ADT^A01^ADT_A01|CTRL-7|P|2.5|||||GR|8859/7\r"
    ).encode("iso8859-7")
    header = read_header(raw)

    ack = build_ack(
        header, AckCode.APPLICATION_ACCEPT, error=None, control_id=ACK_CONTROL_ID, now=NOW
    )

    message = _parse(ack, strict=True, codec="iso8859-7")
    assert _er7(message, "msh.msh_6") == "ΣΙΜ"
    assert _er7(message, "msh.msh_18") == "8859/7"
    with pytest.raises(UnicodeDecodeError):
        ack.decode("utf-8")


@pytest.mark.parametrize("charset", ["", "UNICODE UTF-8", "ASCII"])
def test_default_charsets_are_not_echoed(charset: str) -> None:
    ack = build_ack(
        _header(character_set=charset, sending_facility="CAFÉ"),
        AckCode.APPLICATION_ACCEPT,
        error=None,
        control_id=ACK_CONTROL_ID,
        now=NOW,
    )

    assert ack.split(b"\r")[0].endswith(b"|2.5")
    assert "CAFÉ".encode() in ack


# --- error mapping ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "condition", "outcome", "location"),
    [
        ("empty", "100", Outcome.ERROR, None),
        ("no_msh", "100", Outcome.ERROR, ErrorLocation("MSH", 1)),
        ("bad_encoding_characters", "102", Outcome.ERROR, ErrorLocation("MSH", 1, 2)),
        ("decode_error", "102", Outcome.ERROR, ErrorLocation("MSH", 1, 18)),
        ("missing_msh_9", "101", Outcome.REJECT, ErrorLocation("MSH", 1, 9)),
        ("missing_msh_10", "101", Outcome.ERROR, ErrorLocation("MSH", 1, 10)),
        ("missing_msh_12", "101", Outcome.REJECT, ErrorLocation("MSH", 1, 12)),
        ("unsupported_version", "203", Outcome.REJECT, ErrorLocation("MSH", 1, 12)),
        ("bad_segment", "100", Outcome.ERROR, None),
        ("batch_malformed", "100", Outcome.ERROR, None),
        ("something_new", "207", Outcome.ERROR, None),
    ],
)
def test_error_for_maps_laneway_codes_to_table_0357(
    code: str, condition: str, outcome: Outcome, location: ErrorLocation | None
) -> None:
    error = error_for(Hl7Error(code, "detail naming positions"))

    assert (error.condition.code, error.outcome, error.location) == (condition, outcome, location)


@pytest.mark.parametrize(
    ("error", "condition"),
    [
        (UNKNOWN_SENDER, ErrorCondition.UNKNOWN_KEY_IDENTIFIER),
        (SENDER_PAUSED, ErrorCondition.APPLICATION_RECORD_LOCKED),
        (BROKER_FAILURE, ErrorCondition.APPLICATION_INTERNAL_ERROR),
        (MIXED_SENDERS, ErrorCondition.UNKNOWN_KEY_IDENTIFIER),
        (AN_EARLIER_MESSAGE_WAS_REFUSED, ErrorCondition.APPLICATION_RECORD_LOCKED),
    ],
)
def test_rejections_are_rejects_with_their_table_0357_code(
    error: AckError, condition: ErrorCondition
) -> None:
    assert (error.condition, error.outcome) == (condition, Outcome.REJECT)


def test_a_message_too_large_is_an_error_naming_the_limit_not_a_reject() -> None:
    # AR would make the sender resend the same bytes forever.
    error = message_too_large(4_194_304)

    assert error.outcome is Outcome.ERROR
    assert "4194304-byte limit" in error.message
    ack = build_ack(
        _header(), AckCode.APPLICATION_ERROR, error=error, control_id=ACK_CONTROL_ID, now=NOW
    )
    assert b"ERR|" in ack and b"4194304-byte limit" in ack


def test_error_texts_fit_msa_3_and_are_fixed_ascii() -> None:
    for error in ALL_ERRORS:
        assert 0 < len(error.message) <= 80
        assert error.message.isascii()


def test_table_0357_codes_are_unique() -> None:
    codes = [condition.code for condition in ErrorCondition]

    assert len(codes) == len(set(codes))
    assert ErrorCondition.UNSUPPORTED_VERSION_ID.value == ("203", "Unsupported version id")


# --- the acknowledgment decision ----------------------------------------------------------------

AA, AE, AR = AckCode.APPLICATION_ACCEPT, AckCode.APPLICATION_ERROR, AckCode.APPLICATION_REJECT
CA, CE, CR = AckCode.COMMIT_ACCEPT, AckCode.COMMIT_ERROR, AckCode.COMMIT_REJECT
ACCEPTED, ERROR, REJECT = Outcome.ACCEPTED, Outcome.ERROR, Outcome.REJECT

# Which ACKs, in order, for MSH-15 x MSH-16 x outcome; written out from the standard (HL7 v2
# chapter 2, enhanced acknowledgment mode) rather than derived. MSH-15 empty: original mode,
# whatever MSH-16 says (the standard requires MSH-15 for enhanced mode). In enhanced mode an
# empty MSH-16 asks for nothing; a CE/CR ends the exchange (the message was not committed, so no
# application acknowledgment can follow).
MODES = ("", "AL", "NE", "ER", "SU")
_ORIGINAL = {ACCEPTED: (AA,), ERROR: (AE,), REJECT: (AR,)}
# MSH-15 (enhanced mode) -> outcome -> accept acknowledgment codes.
_ACCEPT = {
    "AL": {ACCEPTED: (CA,), ERROR: (CE,), REJECT: (CR,)},
    "NE": {ACCEPTED: (), ERROR: (), REJECT: ()},
    "ER": {ACCEPTED: (), ERROR: (CE,), REJECT: (CR,)},
    "SU": {ACCEPTED: (CA,), ERROR: (), REJECT: ()},
}
# MSH-16 -> outcome -> application acknowledgment codes (when no CE/CR was sent).
_APPLICATION = {
    "": {ACCEPTED: (), ERROR: (), REJECT: ()},
    "AL": {ACCEPTED: (AA,), ERROR: (AE,), REJECT: (AR,)},
    "NE": {ACCEPTED: (), ERROR: (), REJECT: ()},
    "ER": {ACCEPTED: (), ERROR: (AE,), REJECT: (AR,)},
    "SU": {ACCEPTED: (AA,), ERROR: (), REJECT: ()},
}
# Spot checks of the table below against the cases the issue names.
SPOT_CHECKS = {
    ("NE", "AL", ACCEPTED): (AA,),  # IHE lab profiles
    ("ER", "AL", ACCEPTED): (AA,),  # immunization VXU
    ("ER", "AL", ERROR): (CE,),
    ("AL", "AL", ACCEPTED): (CA, AA),
    ("AL", "AL", REJECT): (CR,),
    ("SU", "AL", REJECT): (AR,),
    ("NE", "NE", ACCEPTED): (),
    ("NE", "SU", ERROR): (),
    ("", "", REJECT): (AR,),
    ("AL", "", ACCEPTED): (CA,),
    ("", "ER", ERROR): (AE,),
    ("", "NE", ACCEPTED): (AA,),  # streams/hl7/synthetic.py sends these
    ("", "SU", REJECT): (AR,),
    ("NE", "", ACCEPTED): (),
}


def _expected(accept: str, application: str, outcome: Outcome) -> tuple[AckCode, ...]:
    if not accept:
        return _ORIGINAL[outcome]
    first = _ACCEPT[accept][outcome]
    if first and outcome is not ACCEPTED:
        return first
    return first + _APPLICATION[application][outcome]


MATRIX = [
    (accept, application, outcome)
    for accept in MODES
    for application in MODES
    for outcome in Outcome
]


@pytest.mark.parametrize("case", list(SPOT_CHECKS))
def test_the_expected_matrix_agrees_with_the_spot_checks(
    case: tuple[str, str, Outcome],
) -> None:
    assert _expected(*case) == SPOT_CHECKS[case]


@pytest.mark.parametrize(("accept", "application", "outcome"), MATRIX)
def test_ack_codes_follow_msh_15_and_msh_16(
    accept: str, application: str, outcome: Outcome
) -> None:
    expected = _expected(accept, application, outcome)
    fields = {"accept_ack_type": accept, "application_ack_type": application}

    assert ack_codes(_header(**fields), outcome) == expected
    assert ack_codes(PartialHeader(**fields), outcome) == expected


@pytest.mark.parametrize(("accept", "application"), [("al", " Al"), (" ER ", "su"), ("Su", "")])
def test_ack_codes_read_the_fields_case_and_space_insensitively(
    accept: str, application: str
) -> None:
    normalized = (accept.strip().upper(), application.strip().upper())
    for outcome in Outcome:
        header = _header(accept_ack_type=accept, application_ack_type=application)
        assert ack_codes(header, outcome) == _expected(*normalized, outcome)


@pytest.mark.parametrize(
    ("accept", "application"), [("XX", ""), ("", "A"), ("ALWAYS", "AL"), ("NE", "NEVER")]
)
def test_a_value_outside_table_0155_in_either_field_is_original_mode(
    accept: str, application: str
) -> None:
    for outcome in Outcome:
        header = _header(accept_ack_type=accept, application_ack_type=application)
        assert ack_codes(header, outcome) == _ORIGINAL[outcome]


@pytest.mark.parametrize(("accept", "application", "outcome"), MATRIX)
def test_acknowledge_builds_each_decided_ack_in_order(
    accept: str, application: str, outcome: Outcome
) -> None:
    error = {ACCEPTED: None, ERROR: error_for(Hl7Error("missing_msh_10")), REJECT: SENDER_PAUSED}[
        outcome
    ]
    header = _header(accept_ack_type=accept, application_ack_type=application)
    control_ids = iter(("LW-1", "LW-2", "LW-3"))

    acks = acknowledge(header, error, control_ids=control_ids, now=NOW)

    assert [ack.code for ack in acks] == list(_expected(accept, application, outcome))
    for number, ack in enumerate(acks, start=1):
        message = _parse(ack.payload, strict=True)
        assert _er7(message, "msa.msa_1") == ack.code
        assert _er7(message, "msh.msh_10") == f"LW-{number}"  # each ACK its own control id
        assert bool(_er7(message, "err.err_3")) == (error is not None)


# --- end to end: rejected inbound messages ------------------------------------------------------


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_rejected_messages_get_an_ack_echoing_what_was_readable(kind: str) -> None:
    rng = random.Random(kind)
    for _ in range(10):
        payload = malformed(rng, kind).payload
        try:
            read_header(payload)
        except Hl7Error as error:
            ack_error = error_for(error)
        else:
            ack_error = None  # bad_segment: only extract() looks at the body
        header = read_header_lenient(payload)
        # original mode: always answered
        header = replace(header, accept_ack_type="", application_ack_type="")

        [(_, ack)] = acknowledge(header, ack_error, control_ids=iter([ACK_CONTROL_ID]), now=NOW)

        message = _parse(ack, strict=False)
        assert _er7(message, "msa.msa_2") == header.control_id
        assert _er7(message, "msh.msh_5") == header.sending_application
        assert _er7(message, "msh.msh_3") == header.receiving_application
        if ack_error is None:
            assert _er7(message, "msa.msa_1") == "AA"
        else:
            expected = "AR" if ack_error.outcome is Outcome.REJECT else "AE"
            assert _er7(message, "msa.msa_1") == expected
        if header.control_id and header.version in SUPPORTED_VERSIONS:
            _parse(ack, strict=_strict_possible(header.version))
