"""HL7 v2 acknowledgments (ACK), built from per-(delimiters, version) string templates.

Ingest acknowledges every message it receives, so this is plain string building (hl7apy is two
orders of magnitude slower). The ACK follows the inbound message:

- MSH-1/2: the inbound delimiters; a truncation character only from 2.7, where it exists.
- MSH-3/4 = inbound MSH-5/6 and MSH-5/6 = inbound MSH-3/4 (first components).
- MSH-7 = `now` to the second, plus its UTC offset when `now` is timezone-aware.
- MSH-9 = ACK^<inbound trigger>^ACK from 2.3.1 (where MSG.3, the message structure, appears);
  ACK^<trigger> for 2.1-2.3, whose MSH-9 is type^trigger (CM_MSG in hl7apy).
- MSH-10 = the caller's new control id: keep it to 20 characters (ST 20 up to 2.6).
- MSH-11 = inbound MSH-11.1, else P. MSH-12 = inbound MSH-12.1, else `FALLBACK_VERSION` when
  that is missing or unsupported.
- MSH-18 = inbound MSH-18 when it names a non-default charset (2.3+); the ACK is then encoded
  with it, else as UTF-8.
- MSA-1 = the code, MSA-2 = inbound MSH-10 ("" when unknown), MSA-3 = the error's short,
  PHI-free text up to 2.6 (MSA-3 is withdrawn from 2.7).
- ERR, for errors: up to 2.4 ERR-1 (ELD: segment^sequence^field^code&text&HL70357); from 2.5
  ERR-2 (ERL: segment^sequence^field) when the position is known, ERR-3 (CWE:
  code^text^HL70357), ERR-4 severity E and ERR-8 the same text as MSA-3.

Which ACKs a message gets (none, one or two: an accept acknowledgment CA/CE/CR per MSH-15, then
an application acknowledgment AA/AE/AR per MSH-16) is `ack_codes`'s decision.

Codes are from HL7 table 0008 (MSA-1) and table 0357 (ERR). Which outcome is an error (AE/CE)
and which a reject (AR/CR) follows the standard's acknowledgment rules: an unacceptable
MSH-9 (message type) or MSH-12 (version) is a reject, like a message refused for reasons
unrelated to its content (unknown sender, paused sender, broker failure); every other defect of
the message itself is an error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from enum import Enum, StrEnum
from functools import lru_cache
from typing import NamedTuple

from streams.hl7.er7 import Delimiters, Hl7Error, declared_codec, escape
from streams.hl7.header import SUPPORTED_VERSIONS, MessageHeader, PartialHeader

# What an ACK can be built from: a validated header, or what was readable of a rejected one.
AckHeader = MessageHeader | PartialHeader

FALLBACK_VERSION = "2.5"
# MSH-9.3 (message structure) exists from 2.3.1 on.
_VERSIONS_WITHOUT_STRUCTURE = frozenset(("2.1", "2.2", "2.3"))
# MSH-18 (character set) exists from 2.3 on.
_VERSIONS_WITHOUT_CHARSET = frozenset(("2.1", "2.2"))
# ERR-1 (ELD) carries the error up to 2.4; 2.5 moved it to ERR-2/3/4/8.
_ELD_VERSIONS = frozenset(("2.1", "2.2", "2.3", "2.3.1", "2.4"))
# From 2.7 on, MSA-3 (text message) is withdrawn and MSH-2 may end with a truncation character.
_VERSIONS_FROM_2_7 = frozenset(("2.7", "2.7.1", "2.8", "2.8.1", "2.8.2"))
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


class AckCode(StrEnum):
    """HL7 table 0008: application acknowledgments (A*) and enhanced-mode accept
    acknowledgments (C*)."""

    APPLICATION_ACCEPT = "AA"
    APPLICATION_ERROR = "AE"
    APPLICATION_REJECT = "AR"
    COMMIT_ACCEPT = "CA"
    COMMIT_ERROR = "CE"
    COMMIT_REJECT = "CR"


class Outcome(Enum):
    ACCEPTED = "accepted"  # AA / CA
    ERROR = "error"  # AE / CE: the message itself is bad
    REJECT = "reject"  # AR / CR: see the module docstring


_APPLICATION_CODES = {
    Outcome.ACCEPTED: AckCode.APPLICATION_ACCEPT,
    Outcome.ERROR: AckCode.APPLICATION_ERROR,
    Outcome.REJECT: AckCode.APPLICATION_REJECT,
}
_ACCEPT_CODES = {
    Outcome.ACCEPTED: AckCode.COMMIT_ACCEPT,
    Outcome.ERROR: AckCode.COMMIT_ERROR,
    Outcome.REJECT: AckCode.COMMIT_REJECT,
}
# HL7 table 0155 (MSH-15 and MSH-16) -> the outcomes for which that acknowledgment is sent.
# In enhanced mode an empty MSH-16 asks for nothing, like NE.
_CONDITIONS = {
    "AL": frozenset(Outcome),
    "NE": frozenset(),
    "ER": frozenset((Outcome.ERROR, Outcome.REJECT)),
    "SU": frozenset((Outcome.ACCEPTED,)),
    "": frozenset(),
}


def _enhanced(accept: str, application: str, outcome: Outcome) -> tuple[AckCode, ...]:
    codes: list[AckCode] = []
    if outcome in _CONDITIONS[accept]:
        codes.append(_ACCEPT_CODES[outcome])
        if outcome is not Outcome.ACCEPTED:
            # Not committed, so the application never sees it: CE/CR is the final answer.
            return tuple(codes)
    if outcome in _CONDITIONS[application]:
        codes.append(_APPLICATION_CODES[outcome])
    return tuple(codes)


# Precomputed so that a decision costs one dict lookup. An empty MSH-15 is original mode.
_ENHANCED_MODE = {
    (accept, application, outcome): _enhanced(accept, application, outcome)
    for accept in _CONDITIONS
    if accept
    for application in _CONDITIONS
    for outcome in Outcome
}


def ack_codes(header: AckHeader, outcome: Outcome) -> tuple[AckCode, ...]:
    """The acknowledgments to send, in order: none, one or two codes.

    Laneway accepts (commits) a message and hands it to its application in the same step, the
    durable ingress write, so both acknowledgments report that one outcome:

    - Original mode (MSH-15 empty): one AA/AE/AR, always, whatever MSH-16 says. The standard
      requires MSH-15 for enhanced mode, and senders that leave it empty and set MSH-16 (often
      NE) expect an answer; original mode answers everything MSH-16 can ask for.
    - Enhanced mode (MSH-15 from table 0155): first the accept acknowledgment CA/CE/CR when
      MSH-15 asks for it (AL always, NE never, ER on CE/CR, SU on CA), then the application
      acknowledgment AA/AE/AR when MSH-16 asks for it (same table; empty asks for nothing). A
      refused message whose CE/CR is sent gets no application acknowledgment: it never
      reached the application.
    - A value outside table 0155 in either field: original mode. A sender left without an
      answer resends or stalls, while an answer it did not expect is harmless.
    """
    key = (
        header.accept_ack_type.strip().upper(),
        header.application_ack_type.strip().upper(),
        outcome,
    )
    codes = _ENHANCED_MODE.get(key)
    return codes if codes is not None else (_APPLICATION_CODES[outcome],)


class ErrorCondition(Enum):
    """HL7 table 0357 (message error condition codes): (code, text)."""

    SEGMENT_SEQUENCE_ERROR = ("100", "Segment sequence error")
    REQUIRED_FIELD_MISSING = ("101", "Required field missing")
    DATA_TYPE_ERROR = ("102", "Data type error")
    TABLE_VALUE_NOT_FOUND = ("103", "Table value not found")
    UNSUPPORTED_MESSAGE_TYPE = ("200", "Unsupported message type")
    UNSUPPORTED_EVENT_CODE = ("201", "Unsupported event code")
    UNSUPPORTED_PROCESSING_ID = ("202", "Unsupported processing id")
    UNSUPPORTED_VERSION_ID = ("203", "Unsupported version id")
    UNKNOWN_KEY_IDENTIFIER = ("204", "Unknown key identifier")
    DUPLICATE_KEY_IDENTIFIER = ("205", "Duplicate key identifier")
    APPLICATION_RECORD_LOCKED = ("206", "Application record locked")
    APPLICATION_INTERNAL_ERROR = ("207", "Application internal error")

    @property
    def code(self) -> str:
        return self.value[0]

    @property
    def text(self) -> str:
        return self.value[1]


@dataclass(slots=True, frozen=True)
class ErrorLocation:
    """Where an error is (ERL/ELD): a segment, which occurrence of it, and optionally a field."""

    segment_id: str
    sequence: int = 1
    field: int | None = None


@dataclass(slots=True, frozen=True)
class AckError:
    """Why a message is not accepted. `message` goes into MSA-3/ERR-8: fixed text naming
    positions, never message content, and at most 80 characters (MSA-3 is ST 80).
    """

    condition: ErrorCondition
    message: str
    outcome: Outcome = Outcome.ERROR
    location: ErrorLocation | None = None


def _msh(field: int | None = None) -> ErrorLocation:
    return ErrorLocation("MSH", 1, field)


_HL7_ERRORS = {
    "empty": AckError(ErrorCondition.SEGMENT_SEQUENCE_ERROR, "Message is empty"),
    "no_msh": AckError(
        ErrorCondition.SEGMENT_SEQUENCE_ERROR, "First segment is not MSH", location=_msh()
    ),
    "bad_encoding_characters": AckError(
        ErrorCondition.DATA_TYPE_ERROR, "Invalid MSH-1/MSH-2 delimiters", location=_msh(2)
    ),
    "decode_error": AckError(
        ErrorCondition.DATA_TYPE_ERROR,
        "Bytes do not match the MSH-18 character set",
        location=_msh(18),
    ),
    "missing_msh_9": AckError(
        ErrorCondition.REQUIRED_FIELD_MISSING,
        "MSH-9 (message type) is missing",
        Outcome.REJECT,
        _msh(9),
    ),
    "missing_msh_10": AckError(
        ErrorCondition.REQUIRED_FIELD_MISSING,
        "MSH-10 (message control id) is missing",
        location=_msh(10),
    ),
    "missing_msh_12": AckError(
        ErrorCondition.REQUIRED_FIELD_MISSING,
        "MSH-12 (version id) is missing",
        Outcome.REJECT,
        _msh(12),
    ),
    "unsupported_version": AckError(
        ErrorCondition.UNSUPPORTED_VERSION_ID,
        "MSH-12 version is not supported",
        Outcome.REJECT,
        _msh(12),
    ),
    "bad_segment": AckError(ErrorCondition.SEGMENT_SEQUENCE_ERROR, "Invalid segment in message"),
    "batch_malformed": AckError(ErrorCondition.SEGMENT_SEQUENCE_ERROR, "Malformed batch envelope"),
}
_UNCLASSIFIED = AckError(
    ErrorCondition.APPLICATION_INTERNAL_ERROR, "Message could not be processed"
)

# Rejections for reasons unrelated to the message content.
UNKNOWN_SENDER = AckError(ErrorCondition.UNKNOWN_KEY_IDENTIFIER, "Unknown sender", Outcome.REJECT)
SENDER_PAUSED = AckError(
    ErrorCondition.APPLICATION_RECORD_LOCKED, "Sender is paused, resend later", Outcome.REJECT
)
BROKER_FAILURE = AckError(
    ErrorCondition.APPLICATION_INTERNAL_ERROR,
    "Message store (Kafka) unavailable, resend later",
    Outcome.REJECT,
)
MIXED_SENDERS = AckError(
    ErrorCondition.UNKNOWN_KEY_IDENTIFIER,
    "Messages of one frame from different senders; none accepted",
    Outcome.REJECT,
)
AN_EARLIER_MESSAGE_WAS_REFUSED = AckError(
    ErrorCondition.APPLICATION_RECORD_LOCKED,
    "An earlier message of this frame was refused; resend from it",
    Outcome.REJECT,
)
RATE_CEILING = AckError(
    ErrorCondition.APPLICATION_RECORD_LOCKED,
    "Sender above its rate ceiling, retry later",
    Outcome.REJECT,
)


@lru_cache(maxsize=16)
def message_too_large(limit_bytes: int, what: str = "Message") -> AckError:
    """An error (AE, not AR: resending the same bytes can never succeed) naming the limit.

    104 "Value too long" would fit better but only exists from 2.7.
    """
    return AckError(
        ErrorCondition.APPLICATION_INTERNAL_ERROR, f"{what} exceeds the {limit_bytes}-byte limit"
    )


def error_for(error: Hl7Error) -> AckError:
    """The ACK error for a validation failure; unknown codes become 207 (internal error)."""
    return _HL7_ERRORS.get(error.code, _UNCLASSIFIED)


@dataclass(slots=True, frozen=True)
class _Template:
    """The constant parts of every ACK for one (delimiters, version)."""

    delimiters: Delimiters
    msh_start: str  # "MSH|^~\&|"
    structure_suffix: str  # "^ACK" where MSH-9.3 exists, else ""
    charset_gap: str | None  # the empty MSH-13..17 before MSH-18; None without MSH-18
    has_msa_text: bool
    uses_eld: bool  # the error goes into ERR-1 rather than ERR-2/3/4/8
    needs_escape: re.Pattern[str]

    def text(self, value: str) -> str:
        """`value` made safe for a field: delimiters escaped, control characters as \\Xhh\\
        (a raw CR would end the segment, a raw VT/FS would break MLLP framing).
        """
        if not value or self.needs_escape.search(value) is None:
            return value
        escape_char = self.delimiters.escape
        return _CONTROL_CHARACTERS.sub(
            lambda match: f"{escape_char}X{ord(match[0]):02X}{escape_char}",
            escape(value, self.delimiters),
        )


@lru_cache(maxsize=256)
def _template(inbound: Delimiters, version: str) -> _Template:
    # Older parsers reject a fifth encoding character, and it means nothing before 2.7.
    delimiters = inbound if version in _VERSIONS_FROM_2_7 else replace(inbound, truncation="")
    special = "".join(
        (
            delimiters.field,
            delimiters.component,
            delimiters.repetition,
            delimiters.escape,
            delimiters.subcomponent,
            delimiters.truncation,
        )
    )
    encoding_characters = special[1:]
    return _Template(
        delimiters=delimiters,
        msh_start=f"MSH{delimiters.field}{encoding_characters}{delimiters.field}",
        structure_suffix=""
        if version in _VERSIONS_WITHOUT_STRUCTURE
        else f"{delimiters.component}ACK",
        charset_gap=None if version in _VERSIONS_WITHOUT_CHARSET else delimiters.field * 6,
        has_msa_text=version not in _VERSIONS_FROM_2_7,
        uses_eld=version in _ELD_VERSIONS,
        needs_escape=re.compile(f"[{re.escape(special)}\\x00-\\x1f\\x7f]"),
    )


@lru_cache(maxsize=256)
def _error_segments(error: AckError, template: _Template) -> str:
    """MSA-3 (with its leading separator; "" where withdrawn) and the ERR segment."""
    delimiters = template.delimiters
    field = delimiters.field
    msa_text = f"{field}{template.text(error.message)}" if template.has_msa_text else ""
    condition = (error.condition.code, template.text(error.condition.text), "HL70357")
    position = _position(error.location)
    if template.uses_eld:
        position += [""] * (3 - len(position))  # ELD.4 comes after three position components
        coded = delimiters.subcomponent.join(condition)  # ELD.4 is a CE inside a component
        err = f"ERR{field}{delimiters.component.join((*position, coded))}"
    else:
        # ERR-1 stays empty (backward compatible, then withdrawn); ERR-5..7 are not used.
        err = field.join(
            (
                "ERR",
                "",
                delimiters.component.join(position),
                delimiters.component.join(condition),
                "E",
                "",
                "",
                "",
                template.text(error.message),
            )
        )
    return f"{msa_text}\r{err}"


def _position(location: ErrorLocation | None) -> list[str]:
    """segment ID, sequence and, when known, field position: the start of both ERL and ELD."""
    if location is None:
        return []
    position = [location.segment_id, str(location.sequence)]
    if location.field is not None:
        position.append(str(location.field))
    return position


def build_ack(
    header: AckHeader,
    code: AckCode,
    *,
    error: AckError | None,
    control_id: str,
    now: datetime,
) -> bytes:
    """One ACK for `header` (see the module docstring for every field), `\\r`-terminated
    segments, not MLLP-framed. `error` adds MSA-3 and ERR; pass it with error/reject codes.
    """
    version = header.version if header.version in SUPPORTED_VERSIONS else FALLBACK_VERSION
    template = _template(header.delimiters, version)
    text = template.text
    field = template.delimiters.field
    trigger = text(header.trigger_event)
    if trigger or template.structure_suffix:
        message_type = f"ACK{template.delimiters.component}{trigger}{template.structure_suffix}"
    else:
        message_type = "ACK"
    codec = declared_codec(header.character_set) if header.character_set else None
    charset = ""
    if codec is not None and template.charset_gap is not None:
        charset = f"{template.charset_gap}{text(header.character_set)}"
    ack = (
        f"{template.msh_start}{text(header.receiving_application)}{field}"
        f"{text(header.receiving_facility)}{field}{text(header.sending_application)}{field}"
        f"{text(header.sending_facility)}{field}{now:%Y%m%d%H%M%S%z}{field}{field}"
        f"{message_type}{field}{text(control_id)}{field}{text(header.processing_id) or 'P'}"
        f"{field}{version}{charset}\rMSA{field}{code}{field}{text(header.control_id)}"
    )
    if error is not None:
        ack += _error_segments(error, template)
    return f"{ack}\r".encode(codec or "utf-8")


class Acknowledgment(NamedTuple):
    code: AckCode
    payload: bytes  # the ACK message, not MLLP-framed


def acknowledge(
    header: AckHeader, error: AckError | None, *, control_ids: Iterator[str], now: datetime
) -> list[Acknowledgment]:
    """The ACKs to send, in order, for a message that was accepted (`error` None) or not: none,
    one or two (see `ack_codes`). Each takes the next of `control_ids` as its MSH-10.
    """
    codes = ack_codes(header, Outcome.ACCEPTED if error is None else error.outcome)
    return [
        Acknowledgment(
            code,
            build_ack(header, code, error=error, control_id=next(control_ids), now=now),
        )
        for code in codes
    ]
