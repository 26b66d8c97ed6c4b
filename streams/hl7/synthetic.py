"""Seeded synthetic HL7 v2 traffic for demos, tests and benchmarks. Contains no real PHI.

Everything is derived from a `random.Random`, so a seed reproduces a corpus byte for byte.
Names, addresses and numbers come from obviously fake lists (TESTPATIENT, 555 phones, SSNs
starting 000 which are never issued). Plain string building keeps it fast enough to generate
100k+ messages for a benchmark.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from streams.hl7.er7 import Delimiters, escape

VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8")
ADT_TRIGGERS = ("A01", "A03", "A04", "A08")
# Alternatives to |^~\& that never occur unescaped in generated values (which use "-", ".",
# "+", "/", ":" and " " structurally).
ALTERNATIVE_DELIMITERS = (
    Delimiters(field="*", component="@", repetition="%", escape="!", subcomponent="$"),
    Delimiters(field="!", component="@", repetition="#", escape="$", subcomponent="%"),
)
TRUNCATING_DELIMITERS = Delimiters(truncation="#")  # MSH|^~\&# as allowed from 2.7

_FAMILY_NAMES = ("TESTPATIENT", "FAKEPERSON", "SYNTHETIC", "DEMOUSER", "SAMPLECASE", "MOCKRECORD")
_GIVEN_NAMES = ("ALPHA", "BRAVO", "CHARLIE", "DELTA", "ECHO", "FOXTROT", "GOLF", "HOTEL")
_STREETS = ("TEST ST", "FAKE AVE", "SAMPLE RD", "DEMO BLVD")
_CITIES = ("TESTVILLE", "FAKETOWN", "SAMPLE CITY")
_FACILITY_UNITS = ("ICU", "WARD3", "ER", "MED2")
_LABS = (
    ("GLU", "GLUCOSE", "mg/dL", "70-110"),
    ("K", "POTASSIUM", "mmol/L", "3.5-5.1"),
    ("NA", "SODIUM", "mmol/L", "135-145"),
    ("HGB", "HEMOGLOBIN", "g/dL", "12-16"),
    ("WBC", "WHITE CELLS", "K/uL", "4.5-11"),
)
_PANELS = (("BMP", "BASIC METABOLIC PANEL"), ("CBC", "BLOOD COUNT"), ("LIPID", "LIPID PANEL"))
# Free text with every character that needs an escape, plus pre-escaped sequences that the
# escaper cannot produce: hex (2-byte UTF-8 "é") and a formatting line break.
_PLAIN_REMARKS = ("SEE NOTE | REVIEW", "A^B RATIO", "TOM & JERRY", "LEFT~RIGHT", "PATH C:\\TMP")
_RAW_REMARKS = ("CAF{esc}Xc3a9{esc} SAMPLE", "LINE ONE{esc}.br{esc}LINE TWO")
_EPOCH = datetime(2024, 1, 1)


@dataclass(slots=True)
class _Builder:
    """One message's delimiters and the escaping of free text into them."""

    delimiters: Delimiters
    segments: list[str] = field(default_factory=list)

    def segment(self, *fields: str) -> None:
        self.segments.append(self.delimiters.field.join(fields).rstrip(self.delimiters.field))

    def components(self, *values: str) -> str:
        return self.delimiters.component.join(values).rstrip(self.delimiters.component)

    def text(self, rng: random.Random, plain: str, escape_rate: float) -> str:
        """`plain`, or with that rate a remark that needs escape sequences."""
        if rng.random() >= escape_rate:
            return plain
        if rng.random() < 0.5:
            return escape(rng.choice(_PLAIN_REMARKS), self.delimiters)
        return rng.choice(_RAW_REMARKS).format(esc=self.delimiters.escape)

    def to_bytes(self) -> bytes:
        return ("\r".join(self.segments) + "\r").encode("utf-8")


def _timestamp(rng: random.Random) -> str:
    moment = _EPOCH + timedelta(seconds=rng.randrange(366 * 24 * 3600))
    return moment.strftime("%Y%m%d%H%M%S")


def _header(
    builder: _Builder,
    rng: random.Random,
    message_type: tuple[str, str, str],
    *,
    sending_application: str,
    sending_facility: str,
    control_id: str,
    version: str,
) -> None:
    delimiters = builder.delimiters
    encoding_characters = (
        delimiters.component
        + delimiters.repetition
        + delimiters.escape
        + delimiters.subcomponent
        + delimiters.truncation
    )
    # MSH-9.3 (message structure) only exists from 2.3.1.
    structure = message_type if version != "2.3" else message_type[:2]
    builder.segment(
        "MSH",
        encoding_characters,
        sending_application,
        sending_facility,
        "LANEWAY",
        "LANEWAY_HUB",
        _timestamp(rng),
        "",
        builder.components(*structure),
        control_id,
        rng.choice(("P", "P", "T", "D")),
        version,
        "",
        "",
        rng.choice(("AL", "NE", "")),
        rng.choice(("AL", "NE", "ER", "")),
        "",
        rng.choice(("UNICODE UTF-8", "")),
    )


def _patient(builder: _Builder, rng: random.Random, escape_rate: float) -> None:
    delimiters = builder.delimiters
    mrn = f"MRN{rng.randrange(10**7):07d}"
    identifiers = [
        builder.components(
            mrn, "", "", f"SIM{delimiters.subcomponent}1.2.3{delimiters.subcomponent}ISO", "MR"
        )
    ]
    if rng.random() < 0.4:
        identifiers.append(builder.components(f"V{rng.randrange(10**6):06d}", "", "", "SIM", "VN"))
    if rng.random() < 0.1:
        identifiers.insert(0, "")  # an empty repetition senders leave behind
    street = f"{rng.randrange(1, 999)} {rng.choice(_STREETS)}"
    builder.segment(
        "PID",
        "1",
        "",
        delimiters.repetition.join(identifiers),
        "",
        builder.components(
            rng.choice(_FAMILY_NAMES), rng.choice(_GIVEN_NAMES), rng.choice(("", "Q", "X"))
        ),
        "",
        (_EPOCH - timedelta(days=rng.randrange(365 * 90))).strftime("%Y%m%d"),
        rng.choice(("F", "M", "U", "")),
        "",
        "",
        builder.components(
            builder.text(rng, street, escape_rate),
            "",
            rng.choice(_CITIES),
            "ZZ",
            f"{rng.randrange(1000):05d}",
        ),
        "",
        f"555-01{rng.randrange(100):02d}",
        "",
        "",
        "",
        "",
        "",
        f"000-{rng.randrange(100):02d}-{rng.randrange(10000):04d}",
    )


def _visit(builder: _Builder, rng: random.Random) -> None:
    location = builder.components(
        rng.choice(_FACILITY_UNITS), str(rng.randrange(100, 500)), rng.choice("AB"), "SIMHOSP"
    )
    fields = ["PV1", "1", rng.choice("IOE"), location] + [""] * 15
    fields += [f"VN{rng.randrange(10**8):08d}"] + [""] * 24 + [_timestamp(rng)]
    builder.segment(*fields)


def _z_segment(builder: _Builder, rng: random.Random) -> None:
    builder.segment("ZPI", "1", f"SIMFLAG{rng.randrange(10)}", builder.text(rng, "LOCAL", 0.5))


def adt(
    rng: random.Random,
    *,
    trigger: str = "A01",
    sending_application: str = "",
    sending_facility: str = "SIM_FACILITY",
    control_id: str | None = None,
    version: str = "2.5",
    seq: int = 0,
    delimiters: Delimiters | None = None,
    escape_rate: float = 0.2,
    with_z_segment: bool = False,
) -> bytes:
    """One ADT^A01/A03/A04/A08. `control_id` defaults to one derived from `seq`."""
    builder = _Builder(delimiters or Delimiters())
    _header(
        builder,
        rng,
        ("ADT", trigger, "ADT_A01" if trigger in ("A01", "A04", "A08") else "ADT_A03"),
        sending_application=sending_application or "SIM_ADT",
        sending_facility=sending_facility,
        control_id=control_id or f"SIM{seq:010d}",
        version=version,
    )
    # EVN-1 (event type code) is withdrawn from 2.7 on: the trigger lives in MSH-9 only.
    builder.segment("EVN", trigger if version < "2.7" else "", _timestamp(rng))
    _patient(builder, rng, escape_rate)
    if with_z_segment:
        _z_segment(builder, rng)
    _visit(builder, rng)
    return builder.to_bytes()


def oru(
    rng: random.Random,
    *,
    sending_application: str = "",
    sending_facility: str = "SIM_FACILITY",
    control_id: str | None = None,
    version: str = "2.5",
    seq: int = 0,
    delimiters: Delimiters | None = None,
    escape_rate: float = 0.2,
    with_z_segment: bool = False,
) -> bytes:
    """One ORU^R01 with 1-5 OBX, some numeric, some coded, some repeating free text."""
    builder = _Builder(delimiters or Delimiters())
    _header(
        builder,
        rng,
        ("ORU", "R01", "ORU_R01"),
        sending_application=sending_application or "SIM_LAB",
        sending_facility=sending_facility,
        control_id=control_id or f"SIM{seq:010d}",
        version=version,
    )
    _patient(builder, rng, escape_rate)
    if with_z_segment:
        _z_segment(builder, rng)
    _visit(builder, rng)
    panel_code, panel_text = rng.choice(_PANELS)
    observed_at = _timestamp(rng)
    builder.segment("ORC", "RE", f"PLC{rng.randrange(10**6):06d}")
    builder.segment(
        "OBR",
        "1",
        "",
        f"FIL{rng.randrange(10**6):06d}",
        builder.components(panel_code, panel_text, "L"),
        "",
        "",
        observed_at,
        *([""] * 17),
        rng.choice("FPC"),
    )
    for set_id in range(1, rng.randint(1, 5) + 1):
        _observation(builder, rng, set_id, observed_at, escape_rate)
        if rng.random() < 0.1:
            builder.segment("NTE", "1", "L", builder.text(rng, "COMMENT", escape_rate))
    return builder.to_bytes()


def _observation(
    builder: _Builder,
    rng: random.Random,
    set_id: int,
    observed_at: str,
    escape_rate: float,
) -> None:
    delimiters = builder.delimiters
    code, text, units, reference_range = rng.choice(_LABS)
    kind = rng.random()
    if kind < 0.6:
        value_type, values, flags = "NM", [f"{rng.uniform(1, 200):.1f}"], rng.choice(("", "N", "H"))
    elif kind < 0.8:
        value_type, flags = "CE", rng.choice(("A", "", delimiters.repetition.join(("A", "H"))))
        values = [builder.components("POS", "POSITIVE", "L"), builder.components("NEG", "", "L")]
        values = values[: rng.randint(1, 2)]
    else:
        value_type, flags = "TX", ""
        values = [
            builder.text(rng, "NO ABNORMALITY", escape_rate) for _ in range(rng.randint(1, 3))
        ]
    builder.segment(
        "OBX",
        str(set_id),
        value_type,
        builder.components(code, builder.text(rng, text, escape_rate), "LN"),
        str(rng.randint(1, 2)) if rng.random() < 0.2 else "",
        delimiters.repetition.join(values),
        units if value_type == "NM" else "",
        reference_range if value_type == "NM" else "",
        flags,
        "",
        "",
        rng.choice("FPC"),
        "",
        "",
        observed_at,
    )


def orm(
    rng: random.Random,
    *,
    sending_application: str = "",
    sending_facility: str = "SIM_FACILITY",
    control_id: str | None = None,
    version: str = "2.5",
    seq: int = 0,
    delimiters: Delimiters | None = None,
    escape_rate: float = 0.2,
    with_z_segment: bool = False,
) -> bytes:
    """One ORM^O01 with an ORC/OBR pair; the placer number sits on ORC only."""
    builder = _Builder(delimiters or Delimiters())
    _header(
        builder,
        rng,
        ("ORM", "O01", "ORM_O01"),
        sending_application=sending_application or "SIM_ORDERS",
        sending_facility=sending_facility,
        control_id=control_id or f"SIM{seq:010d}",
        version=version,
    )
    _patient(builder, rng, escape_rate)
    if with_z_segment:
        _z_segment(builder, rng)
    panel_code, panel_text = rng.choice(_PANELS)
    builder.segment("ORC", "NW", f"PLC{rng.randrange(10**6):06d}")
    builder.segment("OBR", "1", "", "", builder.components(panel_code, panel_text, "L"))
    return builder.to_bytes()


@dataclass(slots=True)
class SyntheticFeed:
    """An endless, reproducible stream of mixed messages with unique control ids."""

    seed: int = 0
    sending_application: str = ""  # "" picks a per-message-type default
    sending_facility: str = "SIM_FACILITY"
    versions: tuple[str, ...] = VERSIONS
    alternative_delimiter_rate: float = 0.1
    escape_rate: float = 0.2
    z_segment_rate: float = 0.2
    control_id_prefix: str = "SIM"
    rng: random.Random = field(init=False)
    sequence: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def next_message(self) -> bytes:
        rng = self.rng
        self.sequence += 1
        version = rng.choice(self.versions)
        common: dict[str, Any] = {
            "sending_application": self.sending_application,
            "sending_facility": self.sending_facility,
            "control_id": f"{self.control_id_prefix}{self.seed:04d}{self.sequence:010d}",
            "version": version,
            "delimiters": self._delimiters(version),
            "escape_rate": self.escape_rate,
            "with_z_segment": rng.random() < self.z_segment_rate,
        }
        message_builder = rng.choices((adt, oru, orm), weights=(5, 4, 1))[0]
        if message_builder is adt:
            return adt(rng, trigger=rng.choice(ADT_TRIGGERS), **common)
        return message_builder(rng, **common)

    def messages(self, count: int) -> list[bytes]:
        return [self.next_message() for _ in range(count)]

    def _delimiters(self, version: str) -> Delimiters:
        if self.rng.random() >= self.alternative_delimiter_rate:
            return Delimiters()
        if version >= "2.7" and self.rng.random() < 0.5:
            return TRUNCATING_DELIMITERS
        return self.rng.choice(ALTERNATIVE_DELIMITERS)


def mixed_corpus(seed: int, count: int, **feed_options: Any) -> list[bytes]:
    """`count` messages from a `SyntheticFeed(seed, **feed_options)`."""
    return SyntheticFeed(seed, **feed_options).messages(count)


def batch(messages: list[bytes], *, line_end: bytes = b"\r") -> bytes:
    """Wrap messages in an FHS/BHS ... BTS/FTS envelope, segments ended by `line_end`."""
    lines = [b"FHS|^~\\&|SIM", b"BHS|^~\\&|SIM"]
    for message in messages:
        lines.extend(message.rstrip(b"\r").split(b"\r"))
    lines += [b"BTS|%d" % len(messages), b"FTS|1"]
    return line_end.join(lines) + line_end


@dataclass(slots=True, frozen=True)
class MalformedSample:
    kind: str
    expected_code: str
    payload: bytes


MALFORMED_KINDS = (
    "missing_msh",
    "no_msh_9",
    "no_msh_10",
    "no_msh_12",
    "bad_version",
    "bad_encoding",
    "bad_segment",
    "garbage",
    "truncated",
    "empty",
)


def malformed(rng: random.Random, kind: str | None = None) -> MalformedSample:
    """One bad input of `kind` (random when None) and the Hl7Error code it must produce."""
    kind = kind or rng.choice(MALFORMED_KINDS)
    good = adt(rng, control_id=f"BAD{rng.randrange(10**6):06d}", escape_rate=0)
    segments = good.rstrip(b"\r").split(b"\r")
    msh = segments[0].split(b"|")
    if kind == "missing_msh":
        return MalformedSample(kind, "no_msh", b"\r".join(segments[1:]) + b"\r")
    if kind in ("no_msh_9", "no_msh_10", "no_msh_12"):
        field_index = {"no_msh_9": 8, "no_msh_10": 9, "no_msh_12": 11}[kind]
        msh[field_index] = b"ADT" if kind == "no_msh_9" else b""  # MSH-9 without trigger event
        expected = {"no_msh_9": "missing_msh_9", "no_msh_10": "missing_msh_10"}
        payload = b"\r".join([b"|".join(msh), *segments[1:]]) + b"\r"
        return MalformedSample(kind, expected.get(kind, "missing_msh_12"), payload)
    if kind == "bad_version":
        msh[11] = rng.choice((b"3.0", b"2.9", b"2.5.9", b"V2"))
        payload = b"\r".join([b"|".join(msh), *segments[1:]]) + b"\r"
        return MalformedSample(kind, "unsupported_version", payload)
    if kind == "bad_encoding":
        msh[1] = rng.choice((b"^~", b"^^\\&", b"^~\\A", b""))
        payload = b"\r".join([b"|".join(msh), *segments[1:]]) + b"\r"
        return MalformedSample(kind, "bad_encoding_characters", payload)
    if kind == "bad_segment":
        segments.insert(
            rng.randrange(1, len(segments) + 1), rng.choice((b"pid|1", b"P|1", b"1AB|"))
        )
        return MalformedSample(kind, "bad_segment", b"\r".join(segments) + b"\r")
    if kind == "garbage":
        # The leading 0xFF can never start "MSH", so this is never accidentally valid.
        noise = bytes(rng.choice(range(0x20, 0x100)) for _ in range(rng.randint(8, 64)))
        return MalformedSample(kind, "no_msh", b"\xff" + noise)
    if kind == "truncated":
        # Cut inside MSH before MSH-9, as when a connection drops mid-send.
        return MalformedSample(kind, "missing_msh_9", b"|".join(msh[: rng.randint(3, 8)]))
    if kind == "empty":
        return MalformedSample(kind, "empty", rng.choice((b"", b"\r\n", b"\xef\xbb\xbf", b"  \n")))
    raise ValueError(f"unknown malformed kind: {kind}")
