"""Differential test: every field `extract()` returns equals what hl7apy parses at that position.

hl7apy (1.3.5) is the reference parser, but it does not unescape: its leaf values hold the raw
ER7 text (and its `to_er7()` re-escapes a bare escape character, turning \\Xc3a9\\ into
\\E\\Xc3a9\\E\\). So the oracle reads hl7apy's raw leaf values and unescapes them with a second,
independent implementation: python-hl7's `Message.unescape`, configured through its `app_map`
hook with Laneway's documented escape policy where python-hl7's defaults differ:

- \\H\\ \\N\\ and the \\.xx\\ formatting commands stay literal text (python-hl7 turns \\H\\ into
  "_" and \\.br\\ into "\\r");
- \\Xhh..\\ bytes are decoded as UTF-8, the message charset (python-hl7 maps each byte to the
  code point of the same number, i.e. latin-1).

Other narrow, documented exclusions:

- hl7apy has no 2.7.1 library; those messages are given to hl7apy as 2.7 (2.7.1 only changed
  tables), and MSH-12 is checked against the raw text instead.
- hl7apy drops whitespace-only fields and components (`strip()` before its emptiness test),
  where the fast path keeps them verbatim; the hypothesis strategy below never generates
  whitespace-only text for that reason. The synthetic corpus has none.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.hl7 import (
    Delimiters,
    ExtractedMessage,
    escape,
    extract,
    hl7_ts_to_iso,
)
from streams.hl7.synthetic import VERSIONS, SyntheticFeed
from streams.records import (
    Address,
    Location,
    Observation,
    Order,
    PatientIdentifier,
    PersonName,
    Visit,
)

_NUMBERED_NAME = re.compile(r".+_(\d+)")
# Versions hl7apy cannot load, mapped to the closest one it can.
_HL7APY_STAND_IN_VERSIONS = {"2.7.1": "2.7"}


class _LanewayEscapePolicy(dict[str, str]):
    """python-hl7 `app_map` that applies Laneway's policy for formatting and hex sequences."""

    def __init__(self, escape_char: str) -> None:
        super().__init__()
        self.escape_char = escape_char

    def __bool__(self) -> bool:
        return True  # python-hl7 only consults a truthy app_map

    def __contains__(self, sequence: object) -> bool:
        return isinstance(sequence, str) and (
            sequence in ("H", "N") or sequence.startswith((".", "X"))
        )

    def __getitem__(self, sequence: str) -> str:
        if sequence.startswith("X"):
            return bytes.fromhex(sequence[1:]).decode("utf-8")
        return f"{self.escape_char}{sequence}{self.escape_char}"


class _Hl7apyOracle:
    """Reads positions out of one hl7apy-parsed message and unescapes them with python-hl7."""

    def __init__(self, raw: bytes) -> None:
        self.text = raw.decode("utf-8")
        self.version = self.text.split("\r", 1)[0].split(self.text[3])[11].split(self.text[4])[0]
        stand_in = _HL7APY_STAND_IN_VERSIONS.get(self.version)
        parsed_text = self.text
        if stand_in is not None:
            field_separator = self.text[3]
            parsed_text = parsed_text.replace(
                f"{field_separator}{self.version}", f"{field_separator}{stand_in}", 1
            )
        self.message = parse_message(
            parsed_text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False
        )
        self.unescaper = hl7.parse(self.text)
        self.escape_policy = _LanewayEscapePolicy(self.unescaper.esc)

    def segments(self, segment_id: str) -> list[Any]:
        return [segment for segment in self.message.children if segment.name == segment_id]

    def first(self, segment_id: str) -> Any | None:
        found = self.segments(segment_id)
        return found[0] if found else None

    @staticmethod
    def repetitions(segment: Any | None, field_number: int) -> list[Any]:
        if segment is None:
            return []
        name = f"{segment.name}_{field_number}"
        return [field for field in segment.children if field.name == name]

    def value(
        self, segment: Any | None, field_number: int, component: int = 1, subcomponent: int = 1
    ) -> str:
        repetitions = self.repetitions(segment, field_number)
        return self.leaf(repetitions[0], component, subcomponent) if repetitions else ""

    def leaf(self, field: Any, component: int, subcomponent: int) -> str:
        found = _child_at(field, component)
        leaf = _child_at(found, subcomponent) if found is not None else None
        return "" if leaf is None else self.unescape(_raw_value(leaf))

    def unescape(self, raw: str) -> str:
        return self.unescaper.unescape(raw, self.escape_policy)

    def joined(self, field: Any) -> str:
        """All components and subcomponents of one repetition, joined with ^ and &."""
        return "^".join(
            "&".join(self.unescape(_raw_value(subcomponent)) for subcomponent in component.children)
            for component in field.children
        )

    def delimiters(self) -> Delimiters:
        chars = self.message.encoding_chars
        return Delimiters(
            field=chars["FIELD"],
            component=chars["COMPONENT"],
            repetition=chars["REPETITION"],
            escape=chars["ESCAPE"],
            subcomponent=chars["SUBCOMPONENT"],
            truncation=chars.get("TRUNCATION", ""),
        )


def _raw_value(subcomponent: Any) -> str:
    """The ER7 text of a leaf: a plain str when empty, the raw string for textual datatypes,
    and re-rendered ER7 for parsed ones (DTM, SI, NM hold Python values)."""
    value = subcomponent.value
    if isinstance(value, str):
        return value
    return value.value if isinstance(value.value, str) else value.to_er7()


def _child_at(element: Any, position: int) -> Any | None:
    """The child at 1-based `position`: hl7apy names composite children TYPE_n and omits empty
    ones, while base-type and varies children are unnamed or numbered and all present."""
    for index, child in enumerate(element.children, start=1):
        numbered = _NUMBERED_NAME.fullmatch(child.name or "")
        if (int(numbered.group(1)) if numbered else index) == position:
            return child
    return None


def oracle_extract(raw: bytes) -> ExtractedMessage:
    """ExtractedMessage built only from hl7apy's parse tree (plus python-hl7 unescaping)."""
    oracle = _Hl7apyOracle(raw)
    msh, pid, pv1 = oracle.first("MSH"), oracle.first("PID"), oracle.first("PV1")
    value = oracle.value
    return ExtractedMessage(
        delimiters=oracle.delimiters(),
        message_code=value(msh, 9, 1),
        trigger_event=value(msh, 9, 2),
        message_structure=value(msh, 9, 3),
        control_id=value(msh, 10),
        processing_id=value(msh, 11),
        version=oracle.version if oracle.version in _HL7APY_STAND_IN_VERSIONS else value(msh, 12),
        sending_application=value(msh, 3),
        sending_facility=value(msh, 4),
        receiving_application=value(msh, 5),
        receiving_facility=value(msh, 6),
        message_datetime=value(msh, 7),
        event_datetime=value(oracle.first("EVN"), 2),
        accept_ack_type=value(msh, 15),
        application_ack_type=value(msh, 16),
        character_set=value(msh, 18),
        segment_ids=tuple(segment.name for segment in oracle.message.children),
        patient_identifiers=tuple(_patient_identifiers(oracle, pid)),
        patient_name=PersonName(value(pid, 5, 1), value(pid, 5, 2), value(pid, 5, 3)),
        birth_date=value(pid, 7),
        sex=value(pid, 8),
        patient_address=Address(
            value(pid, 11, 1), value(pid, 11, 3), value(pid, 11, 4), value(pid, 11, 5)
        ),
        phone=value(pid, 13),
        ssn=value(pid, 19),
        visit=None
        if pv1 is None
        else Visit(
            patient_class=value(pv1, 2),
            location=Location(
                value(pv1, 3, 1), value(pv1, 3, 2), value(pv1, 3, 3), value(pv1, 3, 4)
            ),
            visit_number=value(pv1, 19),
            admit_datetime=hl7_ts_to_iso(value(pv1, 44)),
        ),
        orders=tuple(_orders(oracle)),
        observations=tuple(
            Observation(
                set_id=value(obx, 1),
                value_type=value(obx, 2),
                code=value(obx, 3, 1),
                text=value(obx, 3, 2),
                coding_system=value(obx, 3, 3),
                sub_id=value(obx, 4),
                values=[oracle.joined(field) for field in oracle.repetitions(obx, 5)],
                units=value(obx, 6),
                reference_range=value(obx, 7),
                abnormal_flags=value(obx, 8),
                status=value(obx, 11),
                observed_at=hl7_ts_to_iso(value(obx, 14)),
            )
            for obx in oracle.segments("OBX")
        ),
    )


def _patient_identifiers(oracle: _Hl7apyOracle, pid: Any | None) -> Iterator[PatientIdentifier]:
    for field in oracle.repetitions(pid, 3):
        identifier = PatientIdentifier(
            oracle.leaf(field, 1, 1), oracle.leaf(field, 4, 1), oracle.leaf(field, 5, 1)
        )
        if identifier != PatientIdentifier("", "", ""):
            yield identifier


def _orders(oracle: _Hl7apyOracle) -> Iterator[Order]:
    placer_from_orc = ""
    for segment in oracle.message.children:
        if segment.name == "ORC":
            placer_from_orc = oracle.value(segment, 2)
        elif segment.name == "OBR":
            yield Order(
                placer_order_number=oracle.value(segment, 2) or placer_from_orc,
                filler_order_number=oracle.value(segment, 3),
                service_code=oracle.value(segment, 4, 1),
                service_text=oracle.value(segment, 4, 2),
                observation_datetime=hl7_ts_to_iso(oracle.value(segment, 7)),
                result_status=oracle.value(segment, 25),
            )


# Every version the generator knows plus 2.7.1 (hl7apy stand-in) and 2.8.1/2.8.2, escapes and
# alternative delimiters far more often than live traffic, so each case shows up many times.
_CORPUS = SyntheticFeed(
    seed=20240601,
    versions=(*VERSIONS, "2.8.1", "2.8.2"),
    alternative_delimiter_rate=0.3,
    escape_rate=0.5,
    z_segment_rate=0.3,
).messages(300)


def test_corpus_covers_the_cases_the_oracle_must_see() -> None:
    extracted = [extract(raw) for raw in _CORPUS]

    assert {m.version for m in extracted} >= {"2.3", "2.5.1", "2.7.1", "2.8", "2.8.2"}
    assert len({m.delimiters for m in extracted}) == 4
    assert sum(len(m.observations) for m in extracted) > 300
    assert any(b"\\Xc3a9\\" in raw for raw in _CORPUS)
    assert any(b"\\.br\\" in raw for raw in _CORPUS)
    for sequence in (b"\\F\\", b"\\S\\", b"\\T\\", b"\\R\\", b"\\E\\"):
        assert any(sequence in raw for raw in _CORPUS)


@pytest.mark.parametrize("index", range(len(_CORPUS)))
def test_fast_path_matches_hl7apy_on_synthetic_corpus(index: int) -> None:
    raw = _CORPUS[index]

    assert extract(raw) == oracle_extract(raw)


# Any text hl7apy keeps verbatim: no whitespace-only values (see module docstring) and no
# surrogates (not encodable as UTF-8).
_FIELD_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30).filter(
    lambda text: not text.isspace()
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(family=_FIELD_TEXT, observation=_FIELD_TEXT, version=st.sampled_from(VERSIONS))
def test_fast_path_matches_hl7apy_on_arbitrary_escaped_text(
    family: str, observation: str, version: str
) -> None:
    delimiters = Delimiters()
    raw = (
        f"MSH|^~\\&|SIM|FAC|||20240101||ORU^R01|CTRL1|P|{version}\r"
        f"PID|1||MRN1||{escape(family, delimiters)}^GIVEN\r"
        f"OBX|1|TX|NOTE^TEXT^L||{escape(observation, delimiters)}~SECOND||||||F\r"
    ).encode()

    extracted = extract(raw)

    assert extracted == oracle_extract(raw)
    assert extracted.patient_name.family == family
    assert extracted.observations[0].values == [observation, "SECOND"]
