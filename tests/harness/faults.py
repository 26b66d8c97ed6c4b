"""Fault inputs at ingest and their accounting, shared by tests/integration/test_fuzz_ingest.py
(hypothesis draws the inputs) and bench/faults.py (seeded random draws, the benchmark).

Every fault input is accounted for: refused with a reason (or the connection closed for its
framing), or accepted (AA / 202) and then found exactly once in the faulty tenant's out or DLQ
topic. A message that was refused must be nowhere; nothing may reach another tenant's topics.
Message bodies are never logged: only classes, control ids and answer codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import random
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import aiohttp
from aiokafka.partitioner import DefaultPartitioner

from streams.hl7 import Hl7Error, split_batch
from streams.mllp import Frame, FramingErrorKind, MllpDecoder, frame
from streams.topics import TopicNames
from tests.harness import (
    UNKNOWN_SENDER,
    Ack,
    Api,
    HarnessError,
    Sender,
    consume_until,
    message,
    parse_ack,
)
from tests.harness.outage import Tenant
from tests.harness.quiet_tenant import QuietTenant

T = TypeVar("T")

MAX_MESSAGE_BYTES = 64 * 1024
PARTITIONS = 4
FAULT_CLASSES = (
    "oversize",  # one message over the size contract
    "multi",  # several messages in one frame / body, some bad, some of other senders
    "mixed_identity",  # the faulty tenant's messages with the victim's in one frame / body
    "junk",  # random bytes, NULs, MLLP control bytes, bytes outside frames
    "encoding",  # MSH-18 values against latin-1 / UTF-8 / UTF-16 / invalid UTF-8 bytes
    "bad_segment",  # a valid MSH, garbage later: accepted, then parked with its reason
    "short_msh",  # no MSH, or an MSH cut short or with bad encoding characters
    "partial",  # MLLP: the connection ends mid-frame
    "slow",  # MLLP: a frame dribbled over a few seconds, then completed
)
MLLP_ONLY = frozenset(("partial", "slow"))
# Parts of a multi-message frame or body (each one message).
PART_KINDS = (
    "valid",
    "bad_segment",
    "bad_version",
    "unknown_sender",
    "victim",
    "oversize",
    "encoding",
    "short_msh",
)
# MSH-18 values (HL7 table 0211, a UTF-16 name that cannot be carried, and an unknown name).
CHARSETS = (
    "",
    "ASCII",
    "UNICODE UTF-8",
    "8859/1",
    "8859/15",
    "UNICODE UTF-16",
    "UNICODE",
    "BIG-5",
    "GB 18030-2000",
    "KS X 1001",
    "NOT-A-CHARSET",
)
# Non-ASCII text, none of it with a byte 0x0B, 0x0D, 0x0A or 0x1C in UTF-16.
TEXTS = ("CAFÉ AU LAIT", "ŁÓDŹ", "東京 TEST", "ΩMEGA ÄÖÜ", "PLAIN TEXT")
BYTE_FORMS = ("utf-8", "latin-1", "utf-16-le", "invalid-utf-8", "whole-utf-16")
# A segment id starting lowercase or with a digit is never valid (extract: [A-Z][A-Z0-9]{2}).
BAD_SEGMENT_STARTS = b"abcxyz0189"
# Bytes that would end a segment or touch MLLP framing inside one segment of junk.
_SEGMENT_BREAKERS = bytes.maketrans(b"\r\n\x0b\x1c", b"....")
JUNK_PIECES = ("bytes", "nuls", "start_block", "end_block", "msh_start", "valid_frame")

CONNECT_TIMEOUT_S = 5.0
ANSWER_TIMEOUT_S = 20.0  # from the last byte written to the listener closing the connection
READ_BYTES = 64 * 1024
ARRIVAL_TIMEOUT_S = 60.0
SAMPLE_EVERY_S = 0.5
# The router commits every 0.5 s and the sampler samples every 0.5 s: up to ~1.5 s without a
# visible commit is its normal cycle, not a stall.
STALL_GRACE_S = 2.0
STALL_RULE = (
    f"Every {SAMPLE_EVERY_S:g} s, per ingress partition: its end offset and the router group's "
    "(<app id>-router) committed offset. A stall is a run of consecutive samples in which the "
    "partition had input (end > committed) throughout and the committed offset did not move, "
    f"lasting more than {STALL_GRACE_S:g} s (the router commits every 0.5 s: shorter runs are "
    "its cycle). stalls = the summed length (s) of such runs over all partitions, from the "
    "steady phase to the end of the fault phase. processor_stalls: the same rule for the "
    "shared lane's partitions and the processor's group (<app id>)."
)
P99_RATIO_TARGET = 2.0
# After onboarding the faulty and victim tenants (their topics are created then), before the
# steady window opens: neither window should carry that start-up.
WARMUP_S = 5.0

ACCEPTED_CODES = frozenset(("AA", "CA"))
Transport = Literal["mllp", "http"]


# ---------------------------------------------------------------- drawing fault inputs


class Draw(Protocol):
    """Where a fault input's choices come from: `random.Random` (the bench) or hypothesis
    (the test), so both build inputs with the same code."""

    def integer(self, low: int, high: int) -> int: ...

    def choice(self, options: Sequence[T]) -> T: ...

    def binary(self, min_size: int, max_size: int) -> bytes: ...


@dataclass
class RandomDraw:
    rng: random.Random

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def choice(self, options: Sequence[T]) -> T:
        return self.rng.choice(options)

    def binary(self, min_size: int, max_size: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(min_size, max_size))


@dataclass(frozen=True)
class FaultCase:
    """One fault input: what is written on one MLLP connection, or POSTed as one body."""

    kind: str  # one of FAULT_CLASSES
    transport: Transport
    chunks: tuple[bytes, ...]  # written in order (the HTTP body is their concatenation)
    control_ids: tuple[str, ...]  # every control id put into it
    pause_s: float = 0.0  # between chunks
    abort: bool = False  # drop the connection after the chunks (a partial frame)
    expected_acks: int | None = None  # MLLP: ACKs due for the bytes sent whole

    @property
    def size(self) -> int:
        return sum(len(chunk) for chunk in self.chunks)


def expected_acks(data: bytes, frame_limit: int) -> int:
    """ACKs due for `data` sent on one connection and then half-closed: one per message of
    each frame (one for a frame that cannot be split), one for an oversize frame, after which
    the listener closes, as it does at broken framing; garbage and an unfinished frame get
    nothing (agents/ingest/mllp.py; all messages here ask for original-mode ACKs)."""
    count = 0
    for event in MllpDecoder(frame_limit).feed(data):
        if isinstance(event, Frame):
            count += messages_in(event.payload)
        elif event.kind is FramingErrorKind.OVERSIZE:
            return count + 1
        elif event.kind is FramingErrorKind.BROKEN_FRAMING:
            return count
    return count


def messages_in(payload: bytes) -> int:
    try:
        return len(split_batch(payload))
    except Hl7Error:
        return 1  # refused whole, with one answer


def _with_msh18(raw: bytes, charset: str) -> bytes:
    """`raw` (a `message()`) with MSH-18 set."""
    msh, rest = raw.split(b"\r", 1)
    fields = msh.split(b"|")
    fields += [b""] * (18 - len(fields))  # fields[n - 1] is MSH-n
    fields[17] = charset.encode()
    return b"|".join(fields) + b"\r" + rest


# ---------------------------------------------------------------- sending and answers


@dataclass
class Outcome:
    """What one fault input got back."""

    case: FaultCase
    sent_at: float
    answered_at: float = math.nan
    acks: list[Ack] = field(default_factory=list)  # MLLP
    reset: bool = False  # MLLP: the connection was reset (answers may have been lost)
    status: int | None = None  # HTTP
    answer: Any = None  # HTTP JSON
    failure: str | None = None  # no answer where one was due, or a broken one

    def accepted_ids(self) -> set[str]:
        return {ack.acked_id for ack in self.acks if ack.code in ACCEPTED_CODES}

    def accepted_positions(self) -> list[tuple[int, int]]:
        """HTTP: (partition, offset) of every accepted message."""
        results = self.answer.get("results", []) if isinstance(self.answer, dict) else []
        return [(r["partition"], r["offset"]) for r in results if r.get("status") == "accepted"]

    def accepted_http_ids(self) -> set[str]:
        results = self.answer.get("results", []) if isinstance(self.answer, dict) else []
        return {r["control_id"] for r in results if r.get("status") == "accepted"}


class BrokenAnswer(Exception):
    """The listener's answer is not MLLP-framed."""


async def read_answers(reader: asyncio.StreamReader) -> tuple[list[Ack], bool]:
    """Every ACK until the listener closes; (ACKs, whether the connection was reset)."""
    decoder = MllpDecoder(1024 * 1024)
    acks: list[Ack] = []
    try:
        while data := await reader.read(READ_BYTES):
            for event in decoder.feed(data):
                if not isinstance(event, Frame):
                    raise BrokenAnswer(event.kind)
                acks.append(parse_ack(event.payload))
    except ConnectionResetError:
        return acks, True
    return acks, False


# ---------------------------------------------------------------- placement and accounting


@dataclass(frozen=True)
class Placed:
    """One record of the faulty tenant's out or DLQ topic."""

    topic: Literal["out", "dlq"]
    control_id: str | None
    partition: int
    offset: int
    reason: str | None = None


@dataclass
class CaseReport:
    kind: str
    transport: Transport
    fate: str  # refused / closed / out / dlq / out+dlq, "+refused" when partly refused
    accepted: int
    lost: int
    duplicated: int
    problems: list[str]

    @property
    def accounted(self) -> bool:
        return not self.problems


@dataclass
class Accounting:
    cases: list[CaseReport]
    stray: list[str]  # records that stand for no accepted fault message

    @property
    def faults_sent(self) -> int:
        return len(self.cases)

    @property
    def faults_accounted(self) -> int:
        return sum(case.accounted for case in self.cases)

    @property
    def lost(self) -> int:
        return sum(case.lost for case in self.cases)

    def by_class(self) -> dict[str, dict[str, Any]]:
        classes: dict[str, dict[str, Any]] = {}
        for kind in FAULT_CLASSES:
            cases = [case for case in self.cases if case.kind == kind]
            classes[kind] = {
                "sent": len(cases),
                "accounted": sum(case.accounted for case in cases),
                "messages_accepted": sum(case.accepted for case in cases),
                "fates": dict(Counter(case.fate for case in cases)),
                "transports": dict(Counter(case.transport for case in cases)),
            }
        return classes

    def problems(self) -> list[str]:
        lines = [
            f"{case.kind}/{case.transport}: {'; '.join(case.problems)}"
            for case in self.cases
            if case.problems
        ]
        return lines + [f"stray record: {stray}" for stray in self.stray]


def account(
    outcomes: Sequence[Outcome],
    placed: Sequence[Placed],
    max_message_bytes: int,
    *,
    others: Sequence[str] = (),
    marker: str = "",
) -> Accounting:
    """Each fault input's fate, and every problem with it (see the module docstring).

    `placed` is the faulty tenant's out and DLQ topics up to `marker`; `others` describes each
    record found in topics no fault may reach."""
    by_id: dict[str, list[Placed]] = defaultdict(list)
    by_position: dict[tuple[int, int], list[Placed]] = defaultdict(list)
    for record in placed:
        if record.control_id is not None:
            by_id[record.control_id].append(record)
        by_position[record.partition, record.offset].append(record)
    claimed: set[Placed] = set()
    cases = []
    for outcome in outcomes:
        report, hits = _account_one(outcome, by_id, by_position, max_message_bytes)
        claimed.update(hits)
        cases.append(report)
    stray = [
        f"{record.topic} {record.partition}-{record.offset} control id {record.control_id}"
        for record in placed
        if record not in claimed and record.control_id != marker
    ]
    return Accounting(cases, stray + list(others))


def _account_one(
    outcome: Outcome,
    by_id: dict[str, list[Placed]],
    by_position: dict[tuple[int, int], list[Placed]],
    max_message_bytes: int,
) -> tuple[CaseReport, list[Placed]]:
    case = outcome.case
    problems = [outcome.failure] if outcome.failure else []
    if case.transport == "mllp":
        problems += _mllp_answer_problems(outcome)
        accepted_ids = outcome.accepted_ids()
        placements = [by_id.get(control_id, []) for control_id in sorted(accepted_ids)]
        refused_ids = set(case.control_ids) - accepted_ids
    else:
        problems += _http_answer_problems(outcome)
        placements = [by_position.get(at, []) for at in outcome.accepted_positions()]
        refused_ids = set(case.control_ids) - outcome.accepted_http_ids()
    lost = sum(not hits for hits in placements)
    duplicated = sum(len(hits) > 1 for hits in placements)
    if lost:
        problems.append(f"{lost} accepted message(s) in neither out nor DLQ")
    if duplicated:
        problems.append(f"{duplicated} accepted message(s) written more than once")
    hits = [hit for found in placements for hit in found]
    if any(hit.topic == "dlq" and not hit.reason for hit in hits):
        problems.append("a DLQ record without a reason")
    leaked = sorted(c for c in refused_ids if c in by_id)
    if outcome.reset:
        # The answers were cut off: an unseen AA may be what wrote these. Once is fine.
        duplicated_leaks = [c for c in leaked if len(by_id[c]) > 1]
        hits += [hit for c in leaked for hit in by_id[c]]
        leaked = duplicated_leaks
    if leaked:
        problems.append(f"refused messages written: {leaked}")
    problems += _class_problems(outcome, hits, max_message_bytes)
    accepted = len(placements)
    return (
        CaseReport(
            case.kind,
            case.transport,
            _fate(outcome, hits, accepted),
            accepted,
            lost,
            duplicated,
            problems,
        ),
        hits,
    )


def _mllp_answer_problems(outcome: Outcome) -> list[str]:
    problems = [
        f"{ack.code} for {ack.acked_id!r} without an ERR segment"
        for ack in outcome.acks
        if ack.code not in ACCEPTED_CODES and not ack.has_err
    ]
    due = outcome.case.expected_acks
    if due is not None:
        got = len(outcome.acks)
        # A reset connection may have lost answers in flight; a slow frame may be closed by a
        # partial-frame deadline before it is complete (then it gets nothing).
        allowed = {due}
        if outcome.reset:
            allowed |= set(range(due))
        if outcome.case.kind == "slow":
            allowed.add(0)
        if got not in allowed:
            problems.append(f"{got} ACKs where {due} were due")
    return problems


def _http_answer_problems(outcome: Outcome) -> list[str]:
    status, answer = outcome.status, outcome.answer
    if status is None:
        return []  # the failure says why
    if not isinstance(answer, dict):
        return [f"HTTP {status} without a JSON answer"]
    results = answer.get("results")
    if results is None:
        # A whole-body refusal (422 bad body, 413 body limit ...): the error names the reason.
        return [] if status >= 400 and answer.get("error") else [f"HTTP {status}: {answer}"]
    problems = [
        f"HTTP {status}: a refused message without a reason"
        for result in results
        if result.get("status") != "accepted" and not result.get("reason")
    ]
    accepted = sum(result.get("status") == "accepted" for result in results)
    expected = 202 if accepted == len(results) else 207 if accepted else None
    if (expected is not None and status != expected) or (expected is None and status < 400):
        problems.append(f"HTTP {status} with {accepted} of {len(results)} accepted")
    if status >= 500 and status != 503:
        problems.append(f"HTTP {status}")
    return problems


def _class_problems(outcome: Outcome, hits: Sequence[Placed], max_message_bytes: int) -> list[str]:
    """What each class must get, beyond the general accounting."""
    case, kind = outcome.case, outcome.case.kind
    accepted = outcome.accepted_ids() or outcome.accepted_positions()
    if kind in ("oversize", "mixed_identity", "short_msh", "partial") and accepted:
        return [f"a {kind} input was accepted"]
    if kind == "partial" and outcome.acks:
        return ["a partial frame was answered"]
    if kind == "oversize" and not outcome.failure:
        limit = f"exceeds the {max_message_bytes}-byte limit"
        if case.transport == "mllp":
            named = [ack for ack in outcome.acks if ack.code == "AE" and limit in ack.msa[3]]
            return [] if named or outcome.reset else ["no AE naming the limit"]
        results = outcome.answer.get("results", []) if isinstance(outcome.answer, dict) else []
        reasons = [r.get("reason") for r in results]
        ok = outcome.status == 413 and reasons[:1] == ["message_too_large"]
        return [] if ok else [f"HTTP {outcome.status} {reasons}, not 413 message_too_large"]
    placed = [(hit.topic, hit.reason) for hit in hits]
    if kind == "bad_segment" and not outcome.failure and placed != [("dlq", "bad_segment")]:
        return [f"not parked once as bad_segment: {[(h.topic, h.reason) for h in hits]}"]
    return []


def _fate(outcome: Outcome, hits: Sequence[Placed], accepted: int) -> str:
    if not accepted:
        answered = outcome.acks or outcome.status is not None
        return "refused" if answered else "closed"
    fate = "+".join(sorted({hit.topic for hit in hits})) or "lost"
    total = (
        len(outcome.acks)
        if outcome.case.transport == "mllp"
        else len(outcome.answer.get("results", []))
    )
    return fate + ("+refused" if total > accepted else "")


def placed_records(records: Iterable[Any], out_topic: str) -> list[Placed]:
    """Out and DLQ records (aiokafka ConsumerRecords) as `Placed`."""
    placed = []
    for record in records:
        document = json.loads(record.value)
        source = document["source"]
        placed.append(
            Placed(
                "out" if record.topic == out_topic else "dlq",
                document.get("control_id"),
                source["partition"],
                source["offset"],
                document.get("reason"),
            )
        )
    return placed


# ---------------------------------------------------------------- the scene


@dataclass
class FaultScene:
    """A faulty tenant beside a quiet one on the same ingress partition, a victim tenant whose
    identity faults borrow, and the worker's ingest: builds fault inputs, sends them, and
    accounts for them."""

    api: Api
    mllp_port: int
    bootstrap: str
    topics: TopicNames
    faulty: Tenant
    victim: Tenant
    max_message_bytes: int
    frame_limit: int
    tag: str = field(default_factory=lambda: secrets.token_hex(3).upper())
    _numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @classmethod
    async def onboard(
        cls,
        api: Api,
        *,
        beside: str,
        mllp_port: int,
        bootstrap: str,
        topics: TopicNames,
        partitions: int,
        max_message_bytes: int,
        frame_limit: int,
    ) -> FaultScene:
        """Onboard the faulty tenant on `beside`'s ingress partition, and the victim."""
        everyone = list(range(partitions))

        def partition_of(tenant_id: str) -> int:
            return int(DefaultPartitioner()(tenant_id.encode(), everyone, everyone))

        tenants = []
        for name, partition in (("faulty", partition_of(beside)), ("victim", None)):
            while True:
                suffix = secrets.token_hex(4)
                tenant_id = f"{name}-{suffix}"
                if partition is None or partition_of(tenant_id) == partition:
                    break
            identity = Sender(f"APP-{suffix.upper()}", f"FAC-{suffix.upper()}")
            # A contract far above the faults' pace: no lane move, no rate ceiling.
            answer = await api.onboard(
                tenant_id,
                senders=[{"application": identity.application, "facility": identity.facility}],
                rate_per_s=10_000,
                burst=20_000,
            )
            tenants.append(Tenant(answer["id"], identity, answer["token"]))
        faulty, victim = tenants
        return cls(
            api, mllp_port, bootstrap, topics, faulty, victim, max_message_bytes, frame_limit
        )

    @property
    def marker(self) -> str:
        return f"F{self.tag}-MARKER"

    def _next_id(self) -> str:
        return f"F{self.tag}-{next(self._numbers):05d}"

    # -- building

    def build(self, kind: str, draw: Draw) -> FaultCase:
        """One fault input of class `kind`, its choices taken from `draw`."""
        transport: Transport = "mllp" if kind in MLLP_ONLY else draw.choice(("mllp", "http"))
        ids: list[str] = []
        if kind == "partial":
            whole = frame(self._part("valid", draw, ids))
            cut = draw.integer(1, len(whole) - 2)  # the FS (which ends a frame) stays unsent
            abort = draw.choice((True, False))  # a reset, or a clean close with the frame open
            chunks = (whole[:cut],)
            return FaultCase(kind, transport, chunks, tuple(ids), abort=abort, expected_acks=0)
        if kind == "slow":
            whole = frame(self._part("valid", draw, ids))
            pieces = draw.integer(2, 6)
            cuts = sorted({draw.integer(1, len(whole) - 1) for _ in range(pieces - 1)})
            chunks = tuple(whole[a:b] for a, b in itertools.pairwise([0, *cuts, len(whole)]))
            duration_s = draw.integer(10, 30) / 10
            pause_s = duration_s / max(1, len(chunks) - 1)
            return FaultCase(kind, transport, chunks, tuple(ids), pause_s, expected_acks=1)
        if kind == "junk":
            pieces = [self._junk(draw, ids) for _ in range(draw.integer(1, 6))]
            return self._case(kind, transport, b"".join(pieces), ids, framed=False)
        if kind == "multi":
            count = draw.integer(2, 5)
            parts = [self._part(draw.choice(PART_KINDS), draw, ids) for _ in range(count)]
        elif kind == "mixed_identity":
            count = draw.integer(2, 4)
            victim_at = draw.integer(0, count - 1)
            parts = [
                self._part(
                    "victim" if i == victim_at else draw.choice(("valid", "bad_segment")), draw, ids
                )
                for i in range(count)
            ]
        else:  # one message of the class
            parts = [self._part(kind, draw, ids)]
        return self._case(kind, transport, b"".join(parts), ids, framed=True)

    def _case(
        self, kind: str, transport: Transport, data: bytes, ids: list[str], *, framed: bool
    ) -> FaultCase:
        if transport == "http":
            return FaultCase(kind, transport, (data,), tuple(ids))
        wire = frame(data) if framed else data
        due = expected_acks(wire, self.frame_limit)
        return FaultCase(kind, transport, (wire,), tuple(ids), expected_acks=due)

    def _part(self, kind: str, draw: Draw, ids: list[str]) -> bytes:
        """One message of `kind` (see PART_KINDS, FAULT_CLASSES); its control id joins `ids`."""
        control_id = self._next_id()
        ids.append(control_id)
        own = self.faulty.identity
        if kind == "valid":
            return message(own, control_id)
        if kind == "victim":
            return message(self.victim.identity, control_id)
        if kind == "unknown_sender":
            return message(UNKNOWN_SENDER, control_id)
        if kind == "bad_version":
            return message(own, control_id, version=draw.choice(("2.9", "3.0", "V2", "2.5.9")))
        if kind == "oversize":
            padding = self.max_message_bytes + draw.integer(1, 64 * 1024)
            return message(own, control_id) + b"OBX|1|TX|NOTE||" + b"X" * padding + b"\r"
        if kind == "bad_segment":
            segments = message(own, control_id).rstrip(b"\r").split(b"\r")
            junk = bytes([draw.choice(BAD_SEGMENT_STARTS)]) + draw.binary(0, 60)
            segments.insert(draw.integer(1, len(segments)), junk.translate(_SEGMENT_BREAKERS))
            return b"\r".join(segments) + b"\r"
        if kind == "encoding":
            return self._encoded(control_id, draw)
        if kind == "short_msh":
            return self._short_msh(control_id, draw)
        raise ValueError(f"unknown part kind {kind}")

    def _encoded(self, control_id: str, draw: Draw) -> bytes:
        charset, text, form = draw.choice(CHARSETS), draw.choice(TEXTS), draw.choice(BYTE_FORMS)
        raw = _with_msh18(message(self.faulty.identity, control_id), charset)
        if form == "whole-utf-16":
            return (raw + f"NTE|1||{text}\r".encode()).decode().encode("utf-16")
        if form == "invalid-utf-8":
            encoded = b"\xc3\x28 " + text.encode() + b" \xff\xfe\xed\xa0\x80"
        else:
            encoded = text.encode(form, "replace")
        return raw + b"NTE|1||" + encoded + b"\r"

    def _short_msh(self, control_id: str, draw: Draw) -> bytes:
        msh, rest = message(self.faulty.identity, control_id).split(b"\r", 1)
        fields = msh.split(b"|")
        variant = draw.choice(("no_msh", "cut", "bad_encoding"))
        if variant == "no_msh":
            return rest
        if variant == "cut":  # MSH-12 (the version) and what follows are gone
            return b"|".join(fields[: draw.integer(1, 11)]) + b"\r" + rest
        fields[1] = draw.choice((b"^~", b"^^\\&", b"ab12", b"", b"^~\\&\\"))
        return b"|".join(fields) + b"\r" + rest

    def _junk(self, draw: Draw, ids: list[str]) -> bytes:
        piece = draw.choice(JUNK_PIECES)
        if piece == "bytes":
            return draw.binary(1, 200)
        if piece == "nuls":
            return b"\x00" * draw.integer(1, 64)
        if piece == "start_block":
            return b"\x0b"
        if piece == "end_block":
            return b"\x1c\r"
        if piece == "msh_start":
            return b"MSH|^~\\&|" + draw.binary(0, 40)
        return frame(self._part("valid", draw, ids))

    # -- sending

    async def send(self, case: FaultCase) -> Outcome:
        outcome = Outcome(case, time.monotonic())
        if case.transport == "mllp":
            await self._send_mllp(outcome)
        else:
            await self._send_http(outcome)
        outcome.answered_at = time.monotonic()
        return outcome

    async def send_all(self, cases: Iterable[FaultCase], at_once: int) -> list[Outcome]:
        gate = asyncio.Semaphore(at_once)

        async def one(case: FaultCase) -> Outcome:
            async with gate:
                return await self.send(case)

        return list(await asyncio.gather(*(one(case) for case in cases)))

    async def _send_mllp(self, outcome: Outcome) -> None:
        case = outcome.case
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.mllp_port)
        except OSError:  # TimeoutError included: refused at the door, nothing was sent
            outcome.failure = None if case.kind in MLLP_ONLY else "no connection"
            return
        # Answers are read all along: the listener may answer, or close, while we still write.
        answers = asyncio.create_task(read_answers(reader))
        try:
            for index, chunk in enumerate(case.chunks):
                if index:
                    await asyncio.sleep(case.pause_s)  # the dribble itself is the fault
                writer.write(chunk)
                await writer.drain()
            if case.abort:
                writer.transport.abort()
            else:
                writer.write_eof()  # the listener answers what it has, then closes
        except OSError:
            outcome.reset = True  # closed by the listener while we wrote
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                acks, reset = await answers
            outcome.acks, outcome.reset = acks, outcome.reset or reset
        except TimeoutError:
            outcome.failure = f"the listener did not close within {ANSWER_TIMEOUT_S:g}s"
        except (BrokenAnswer, AssertionError, KeyError, IndexError) as error:
            outcome.failure = f"an answer that is no ACK: {type(error).__name__}"
        except OSError:
            outcome.reset = True
        finally:
            answers.cancel()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _send_http(self, outcome: Outcome) -> None:
        body = b"".join(outcome.case.chunks)
        try:
            outcome.status, outcome.answer = await self.api.send(
                self.faulty.id, self.faulty.token, body
            )
        except (aiohttp.ClientError, json.JSONDecodeError, TimeoutError) as error:
            outcome.failure = f"HTTP exchange failed: {type(error).__name__}"

    # -- accounting

    async def account(self, outcomes: Sequence[Outcome], settle_s: float = 3.0) -> Accounting:
        """Send the marker, then read the faulty tenant's out and DLQ and the topics no fault
        may reach, until the marker is in out and at least `settle_s` passed (outputs of one
        batch land in two topics at about the same time, and a duplicate would show by then);
        then account for every outcome."""
        async with contextlib.AsyncExitStack() as stack:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.mllp_port)
            stack.callback(writer.close)
            writer.write(frame(message(self.faulty.identity, self.marker)))
            writer.write_eof()
            acks, _ = await asyncio.wait_for(read_answers(reader), ANSWER_TIMEOUT_S)
        if [(ack.code, ack.acked_id) for ack in acks] != [("AA", self.marker)]:
            raise HarnessError(
                f"the marker was not accepted: {[(a.code, a.acked_id) for a in acks]}"
            )
        own = [self.topics.out(self.faulty.id), self.topics.dlq(self.faulty.id)]
        forbidden = [
            self.topics.out(self.victim.id),
            self.topics.dlq(self.victim.id),
            self.topics.dlq_unrouted,
        ]
        settled = time.monotonic() + settle_s

        def has_marker(records: list[Any]) -> bool:
            return time.monotonic() > settled and any(
                r.topic == own[0] and json.loads(r.value).get("control_id") == self.marker
                for r in records
            )

        records = await consume_until(
            self.bootstrap, own + forbidden, has_marker, ARRIVAL_TIMEOUT_S
        )
        if not has_marker(records):
            raise HarnessError(f"the marker {self.marker} did not reach out")
        others = [
            f"{r.topic} control id {json.loads(r.value).get('control_id')}"
            for r in records
            if r.topic in forbidden
        ]
        return account(
            outcomes,
            placed_records([r for r in records if r.topic in own], own[0]),
            self.max_message_bytes,
            others=others,
            marker=self.marker,
        )


# ---------------------------------------------------------------- the quiet tenant's latency


def p99_ms(quiet: QuietTenant, start: float, end: float) -> float | None:
    """Nearest-rank p99, in ms, of the quiet messages sent in [start, end): from their 202
    (quiet_tenant records the time once the answer is in) to their arrival in out."""
    latencies = sorted(
        quiet.arrived[c] - sent
        for c, sent in quiet.sent.items()
        if start <= sent < end and c in quiet.arrived
    )
    if not latencies:
        return None
    return round(latencies[math.ceil(0.99 * len(latencies)) - 1] * 1000, 1)


# ---------------------------------------------------------------- stalls


Sample = tuple[float, int, int]  # (time.monotonic(), end offset, committed offset)


def stall_runs(
    samples: Sequence[Sample], grace_s: float = STALL_GRACE_S
) -> list[tuple[float, float]]:
    """(start, end) of each run of samples with input waiting and no commit advance, longer
    than `grace_s` (STALL_RULE)."""
    runs: list[tuple[float, float]] = []
    start: float | None = None
    last = 0.0
    for (t0, end0, committed0), (t1, end1, committed1) in itertools.pairwise(samples):
        if committed1 == committed0 and end0 > committed0 and end1 > committed1:
            start = t0 if start is None else start
            last = t1
            continue
        if start is not None:
            runs.append((start, last))
            start = None
    if start is not None:
        runs.append((start, last))
    return [(a, b) for a, b in runs if b - a > grace_s]
