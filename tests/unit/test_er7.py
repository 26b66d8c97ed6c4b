"""ER7 primitives: batch splitting, delimiters, escapes and charsets. Synthetic data only."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.hl7 import Delimiters, Hl7Error, escape, split_batch, unescape
from streams.hl7.er7 import declared_codec

MSH_A = b"MSH|^~\\&|SIM|FAC|||20240101||ADT^A01|CTRL-A|P|2.5"
MSH_B = b"MSH|^~\\&|SIM|FAC|||20240101||ADT^A08|CTRL-B|P|2.5"
MESSAGE_A = MSH_A + b"\rPID|1||MRN1\r"
MESSAGE_B = MSH_B + b"\rPID|1||MRN2\rZPI|1\r"
DEFAULT = Delimiters()
ALTERNATIVE = Delimiters(field="*", component=":", repetition="%", escape="!", subcomponent="@")


def _with_line_ends(message: bytes, line_end: bytes) -> bytes:
    return message.replace(b"\r", line_end)


# --- split_batch -------------------------------------------------------------------------------


@pytest.mark.parametrize("line_end", [b"\r", b"\n", b"\r\n"], ids=["CR", "LF", "CRLF"])
def test_split_batch_normalizes_any_line_end_to_cr(line_end: bytes) -> None:
    assert split_batch(_with_line_ends(MESSAGE_A, line_end)) == [MESSAGE_A]


def test_split_batch_accepts_mixed_line_ends() -> None:
    payload = MSH_A + b"\r\nPID|1||MRN1\nZPI|1\r"

    assert split_batch(payload) == [MSH_A + b"\rPID|1||MRN1\rZPI|1\r"]


def test_split_batch_strips_leading_bom_and_skips_blank_lines() -> None:
    payload = b"\xef\xbb\xbf\r\n" + MSH_A + b"\r\n\r\n   \r\nPID|1||MRN1\r\n\r\n"

    assert split_batch(payload) == [MESSAGE_A]


def test_split_batch_splits_messages_back_to_back() -> None:
    assert split_batch(MESSAGE_A + MESSAGE_B) == [MESSAGE_A, MESSAGE_B]


def test_split_batch_drops_a_bom_in_front_of_each_concatenated_message() -> None:
    bom = b"\xef\xbb\xbf"

    assert split_batch(bom + MESSAGE_A + bom + MESSAGE_B) == [MESSAGE_A, MESSAGE_B]


@pytest.mark.parametrize("line_end", [b"\r", b"\n", b"\r\n"], ids=["CR", "LF", "CRLF"])
def test_split_batch_unwraps_fhs_bhs_envelope(line_end: bytes) -> None:
    payload = (
        b"FHS|^~\\&|SIM\rBHS|^~\\&|SIM\r" + MESSAGE_A + MESSAGE_B + MESSAGE_A + b"BTS|3\rFTS|1\r"
    )

    assert split_batch(_with_line_ends(payload, line_end)) == [MESSAGE_A, MESSAGE_B, MESSAGE_A]


def test_split_batch_unwraps_several_batches_in_one_file() -> None:
    payload = (
        b"FHS|^~\\&\rBHS|^~\\&\r"
        + MESSAGE_A
        + b"BTS|1\rBHS|^~\\&\r"
        + MESSAGE_B
        + b"BTS|1\rFTS|2\r"
    )

    assert split_batch(payload) == [MESSAGE_A, MESSAGE_B]


def test_split_batch_accepts_bhs_without_fhs() -> None:
    assert split_batch(b"BHS|^~\\&\r" + MESSAGE_A + b"BTS|1\r") == [MESSAGE_A]


def test_split_batch_removes_leftover_mllp_framing() -> None:
    payload = b"\x0b" + MESSAGE_A + b"\x1c\r\x0b" + MESSAGE_B + b"\x1c\r"

    assert split_batch(payload) == [MESSAGE_A, MESSAGE_B]


def test_split_batch_keeps_segment_content_byte_for_byte() -> None:
    latin1_and_escapes = MSH_A + b"\rPID|1||MRN1||TEST\\T\\PATIENT^CAF\xe9\r"

    assert split_batch(latin1_and_escapes) == [latin1_and_escapes]


@pytest.mark.parametrize("payload", [b"", b"\r\n\r\n", b"   \n\t\n", b"\xef\xbb\xbf"])
def test_split_batch_rejects_payload_without_content(payload: bytes) -> None:
    with pytest.raises(Hl7Error) as raised:
        split_batch(payload)

    assert raised.value.code == "empty"


@pytest.mark.parametrize("payload", [b"PID|1||MRN1\r" + MESSAGE_A, b"hello world", b"\x00\x01"])
def test_split_batch_rejects_content_before_any_msh(payload: bytes) -> None:
    with pytest.raises(Hl7Error) as raised:
        split_batch(payload)

    assert raised.value.code == "no_msh"


@pytest.mark.parametrize(
    "payload",
    [
        b"FHS|^~\\&\rBHS|^~\\&\rBTS|0\rFTS|1\r",
        b"BHS|^~\\&\r",
        MESSAGE_A + b"BTS|1\r",
        b"BHS|^~\\&\rPID|1||MRN1\r" + MESSAGE_A + b"BTS|1\r",
        b"BHS|^~\\&\r" + MESSAGE_A + b"BTS|1\rPID|1||MRN1\r",
    ],
    ids=[
        "envelope-without-messages",
        "header-only",
        "trailer-without-header",
        "segment-before-first-msh",
        "segment-after-trailer",
    ],
)
def test_split_batch_rejects_malformed_batches(payload: bytes) -> None:
    with pytest.raises(Hl7Error) as raised:
        split_batch(payload)

    assert raised.value.code == "batch_malformed"


def test_split_batch_error_detail_does_not_echo_content() -> None:
    with pytest.raises(Hl7Error) as raised:
        split_batch(b"TESTPATIENT^SECRET-MRN-123\r" + MESSAGE_A)

    assert "SECRET" not in str(raised.value)
    assert "TESTPATIENT" not in raised.value.detail


# --- delimiters --------------------------------------------------------------------------------


def test_delimiters_default_encoding_characters() -> None:
    assert Delimiters.from_msh("MSH|^~\\&|APP") == DEFAULT


def test_delimiters_read_alternative_characters() -> None:
    assert Delimiters.from_msh("MSH*:%!@*APP") == ALTERNATIVE


def test_delimiters_read_truncation_character() -> None:
    assert Delimiters.from_msh("MSH|^~\\&#|APP").truncation == "#"


def test_delimiters_of_an_msh_with_only_encoding_characters() -> None:
    assert Delimiters.from_msh("MSH|^~\\&") == DEFAULT


@pytest.mark.parametrize(
    "msh",
    [
        "MSH",
        "MSHA^~\\&A",
        "MSH ^~\\& ",
        "MSH||APP",
        "MSH|^~\\|APP",
        "MSH|^~\\&#$|APP",
        "MSH|^^\\&|APP",
        "MSH|^~\\A|APP",
        "MSH|^~|&|APP",
    ],
    ids=[
        "no-field-separator",
        "alphanumeric-field-separator",
        "whitespace-field-separator",
        "empty-msh-2",
        "three-characters",
        "six-characters",
        "duplicated",
        "alphanumeric-encoding-character",
        "field-separator-inside-msh-2",
    ],
)
def test_delimiters_reject_invalid_encoding_characters(msh: str) -> None:
    with pytest.raises(Hl7Error) as raised:
        Delimiters.from_msh(msh)

    assert raised.value.code == "bad_encoding_characters"


# --- escapes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("escaped", "plain"),
    [
        ("A\\F\\B", "A|B"),
        ("A\\S\\B", "A^B"),
        ("A\\T\\B", "A&B"),
        ("A\\R\\B", "A~B"),
        ("A\\E\\B", "A\\B"),
        ("\\F\\\\S\\\\T\\\\R\\\\E\\", "|^&~\\"),
        ("CAF\\X45\\", "CAFE"),
        ("CAF\\Xc3a9\\", "CAFé"),
        ("CAF\\XC3A9\\ AU LAIT", "CAFé AU LAIT"),
        ("\\Xc3\\\\Xa9\\", "é"),
        ("LINE\\X0D0A\\NEXT", "LINE\r\nNEXT"),
        ("BAD\\Xe9\\", "BADé"),
    ],
    ids=[
        "field",
        "component",
        "subcomponent",
        "repetition",
        "escape",
        "all-adjacent",
        "hex-ascii",
        "hex-two-byte-utf8",
        "hex-uppercase",
        "hex-split-over-two-sequences",
        "hex-crlf",
        "hex-invalid-utf8-falls-back-to-latin1",
    ],
)
def test_unescape_decodes_delimiter_and_hex_sequences(escaped: str, plain: str) -> None:
    assert unescape(escaped, DEFAULT) == plain


@pytest.mark.parametrize(
    "kept",
    [
        "LINE\\.br\\NEXT",
        "\\H\\BOLD\\N\\",
        "\\.sp2\\",
        "\\C2842\\",
        "\\Zlocal\\",
        "HEX\\Xzz\\",
        "HEX\\Xabc\\",
        "HEX\\X\\",
        "DANGLING\\",
        "DANGLING\\F",
        "EMPTY\\\\SEQUENCE",
        "\\P\\",
    ],
    ids=[
        "line-break",
        "highlight",
        "skip-lines",
        "charset-switch",
        "locally-defined",
        "non-hex-digits",
        "odd-hex-digits",
        "empty-hex",
        "unterminated-bare",
        "unterminated-sequence",
        "empty-sequence",
        "truncation-without-truncation-character",
    ],
)
def test_unescape_keeps_formatting_and_unknown_sequences_literally(kept: str) -> None:
    assert unescape(kept, DEFAULT) == kept


def test_unescape_mixes_decoded_and_literal_sequences() -> None:
    assert unescape("A\\.br\\B\\T\\C\\Xc3a9\\\\H\\", DEFAULT) == "A\\.br\\B&Cé\\H\\"


def test_unescape_decodes_hex_with_the_message_codec() -> None:
    assert unescape("\\Xc3a9\\", DEFAULT, codec="latin-1") == "Ã©"


def test_unescape_truncation_character_when_defined() -> None:
    assert unescape("A\\P\\B", Delimiters(truncation="#")) == "A#B"


def test_unescape_uses_the_message_delimiters() -> None:
    assert unescape("A!F!B!S!C!E!D\\F\\", ALTERNATIVE) == "A*B:C!D\\F\\"


def test_escape_produces_every_delimiter_sequence() -> None:
    assert escape("|^&~\\", DEFAULT) == "\\F\\\\S\\\\T\\\\R\\\\E\\"
    assert escape("A#B\r\n", Delimiters(truncation="#")) == "A\\P\\B\\X0D\\\\X0A\\"


_DELIMITER_SETS = st.sampled_from([DEFAULT, ALTERNATIVE, Delimiters(truncation="#")])


@given(text=st.text(), delimiters=_DELIMITER_SETS)
def test_unescape_inverts_escape(text: str, delimiters: Delimiters) -> None:
    escaped = escape(text, delimiters)

    assert "\r" not in escaped and "\n" not in escaped
    for char in (
        delimiters.field,
        delimiters.component,
        delimiters.repetition,
        delimiters.subcomponent,
    ):
        assert char not in escaped
    assert unescape(escaped, delimiters) == text


# --- charsets ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("charset", "codec"),
    [
        ("", None),
        ("ASCII", None),
        ("UNICODE UTF-8", None),
        ("unicode utf-8", None),
        ("8859/1", "iso8859-1"),
        ("8859/15", "iso8859-15"),
        ("GB 18030-2000", "gb18030"),
        ("SOMETHING-LOCAL", None),
    ],
)
def test_declared_codec_maps_msh_18_names(charset: str, codec: str | None) -> None:
    assert declared_codec(charset) == codec


@pytest.mark.parametrize("charset", ["UNICODE", "UNICODE UTF-16", "UNICODE UTF-32"])
def test_declared_codec_rejects_charsets_that_cannot_be_er7_framed(charset: str) -> None:
    with pytest.raises(Hl7Error) as raised:
        declared_codec(charset)

    assert raised.value.code == "decode_error"
