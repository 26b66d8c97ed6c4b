"""The pure parts of tests/harness/faults.py, which bench.faults measures with: the ACK oracle,
the accounting of fault inputs, the stall rule and the quiet tenant's p99. A measure that cannot
see a fault would pass every run."""

from __future__ import annotations

import random

import pytest

from streams.mllp import frame
from streams.topics import TopicNames
from tests.harness import Ack, Sender, message
from tests.harness.faults import (
    FAULT_CLASSES,
    MAX_MESSAGE_BYTES,
    FaultCase,
    FaultScene,
    Outcome,
    Placed,
    RandomDraw,
    account,
    expected_acks,
    p99_ms,
    stall_runs,
)
from tests.harness.outage import Tenant
from tests.harness.quiet_tenant import QuietTenant

FRAME_LIMIT = 4 * 1024 * 1024
LIMIT_TEXT = f"Message exceeds the {MAX_MESSAGE_BYTES}-byte limit"


def ack(code: str, control_id: str, text: str = "") -> Ack:
    msa = ["MSA", code, control_id, text]
    return Ack(["MSH"], msa, has_err=code not in ("AA", "CA"))


def mllp_case(kind: str, *ids: str, due: int | None = None) -> FaultCase:
    return FaultCase(kind, "mllp", (b"",), ids, expected_acks=len(ids) if due is None else due)


def scene() -> FaultScene:
    def tenant(name: str) -> Tenant:
        return Tenant(name, Sender(f"APP-{name}", f"FAC-{name}"), "token")

    topics = TopicNames("t.")
    return FaultScene(
        None,  # type: ignore[arg-type]  # building needs no API
        0,
        "",
        topics,
        tenant("faulty"),
        tenant("victim"),
        MAX_MESSAGE_BYTES,
        FRAME_LIMIT,
    )


def test_expected_acks_follow_frames_messages_and_broken_framing() -> None:
    one, two = message(Sender("A", "F"), "1"), message(Sender("A", "F"), "2")
    assert expected_acks(frame(one + two), FRAME_LIMIT) == 2
    assert expected_acks(b"junk" + frame(one) + frame(b"not hl7"), FRAME_LIMIT) == 2
    # A start block inside a frame: the listener closes, nothing after is answered.
    assert expected_acks(frame(one) + b"\x0bMSH" + frame(two), FRAME_LIMIT) == 1
    assert expected_acks(b"\x0b" + one, FRAME_LIMIT) == 0  # unfinished
    assert expected_acks(frame(one * 3), 64) == 1  # oversize frame: one AE, then closed


def test_a_refused_and_an_accepted_input_are_accounted() -> None:
    refused = Outcome(mllp_case("short_msh", "F-1"), 0.0, acks=[ack("AE", "F-1")])
    accepted = Outcome(mllp_case("bad_segment", "F-2"), 0.0, acks=[ack("AA", "F-2")])
    placed = [Placed("dlq", "F-2", 0, 7, "bad_segment")]

    accounting = account([refused, accepted], placed, MAX_MESSAGE_BYTES)

    assert accounting.problems() == []
    assert (accounting.faults_sent, accounting.faults_accounted, accounting.lost) == (2, 2, 0)
    assert [case.fate for case in accounting.cases] == ["refused", "dlq"]


@pytest.mark.parametrize(
    ("outcome", "placed", "problem"),
    [
        # AA'd and nowhere: lost.
        (Outcome(mllp_case("multi", "F-1"), 0.0, acks=[ack("AA", "F-1")]), [], "neither"),
        # AA'd and written twice.
        (
            Outcome(mllp_case("multi", "F-1"), 0.0, acks=[ack("AA", "F-1")]),
            [Placed("out", "F-1", 0, 1), Placed("out", "F-1", 0, 2)],
            "more than once",
        ),
        # Refused, yet written.
        (
            Outcome(mllp_case("multi", "F-1"), 0.0, acks=[ack("AR", "F-1")]),
            [Placed("out", "F-1", 0, 1)],
            "refused messages written",
        ),
        # A refusal without an ERR segment.
        (
            Outcome(
                mllp_case("multi", "F-1"), 0.0, acks=[Ack(["MSH"], ["MSA", "AE", "F-1"], False)]
            ),
            [],
            "without an ERR",
        ),
        # Fewer ACKs than messages.
        (Outcome(mllp_case("multi", "F-1", "F-2"), 0.0, acks=[ack("AE", "F-1")]), [], "were due"),
        # Oversize refused without naming the limit.
        (Outcome(mllp_case("oversize", "F-1"), 0.0, acks=[ack("AE", "F-1")]), [], "naming"),
        # A malformed segment that went to out, not to the DLQ.
        (
            Outcome(mllp_case("bad_segment", "F-1"), 0.0, acks=[ack("AA", "F-1")]),
            [Placed("out", "F-1", 0, 1)],
            "bad_segment",
        ),
        # A mixed frame accepted.
        (
            Outcome(mllp_case("mixed_identity", "F-1"), 0.0, acks=[ack("AA", "F-1")]),
            [Placed("out", "F-1", 0, 1)],
            "accepted",
        ),
        # HTTP 202 whose message is nowhere (matched by ingress position, not control id).
        (
            Outcome(
                FaultCase("multi", "http", (b"",), ("F-1",)),
                0.0,
                status=202,
                answer={
                    "results": [
                        {"control_id": "F-1", "status": "accepted", "partition": 0, "offset": 5}
                    ]
                },
            ),
            [Placed("out", "F-1", 0, 6)],
            "neither",
        ),
        # HTTP refusal without a reason.
        (
            Outcome(
                FaultCase("multi", "http", (b"",), ("F-1",)),
                0.0,
                status=422,
                answer={"results": [{"control_id": "F-1", "status": "rejected"}]},
            ),
            [],
            "without a reason",
        ),
        # No answer at all.
        (
            Outcome(mllp_case("multi", "F-1"), 0.0, failure="the listener did not close"),
            [],
            "did not close",
        ),
    ],
)
def test_every_fault_the_accounting_must_see(
    outcome: Outcome, placed: list[Placed], problem: str
) -> None:
    accounting = account([outcome], placed, MAX_MESSAGE_BYTES)

    assert accounting.faults_accounted == 0
    assert problem in " ".join(accounting.problems())


def test_oversize_refused_naming_the_limit_is_accounted() -> None:
    outcome = Outcome(mllp_case("oversize", "F-1"), 0.0, acks=[ack("AE", "F-1", LIMIT_TEXT)])
    assert account([outcome], [], MAX_MESSAGE_BYTES).problems() == []


def test_records_nobody_accepted_and_records_in_other_topics_are_stray() -> None:
    accounting = account(
        [],
        [Placed("out", "F-9", 0, 1), Placed("out", "MARKER", 0, 2)],
        MAX_MESSAGE_BYTES,
        others=["t.out.victim control id F-3"],
        marker="MARKER",
    )
    assert len(accounting.stray) == 2
    assert "F-9" in accounting.stray[0]


def test_a_slow_frame_may_be_closed_unanswered_and_a_partial_frame_must_be() -> None:
    slow = Outcome(mllp_case("slow", "F-1", due=1), 0.0)
    partial = Outcome(mllp_case("partial", "F-2", due=0), 0.0, acks=[ack("AE", "F-2")])
    accounting = account([slow, partial], [], MAX_MESSAGE_BYTES)
    assert [case.accounted for case in accounting.cases] == [True, False]
    assert [case.fate for case in accounting.cases] == ["closed", "refused"]


def test_stalls_are_runs_with_input_waiting_and_no_commit_longer_than_the_grace() -> None:
    # (time, end offset, committed offset)
    flowing = [(t / 2, 10 + t, 8 + t) for t in range(10)]  # commits advance every sample
    assert stall_runs(flowing) == []
    stuck = [(t / 2, 10 + t, 8) for t in range(10)]  # input keeps coming, nothing committed
    assert stall_runs(stuck) == [(0.0, 4.5)]
    short = [(t / 2, 10 + t, 8 if t < 4 else 8 + t) for t in range(10)]  # 1.5 s: the cycle
    assert stall_runs(short) == []
    idle = [(t / 2, 8, 8) for t in range(10)]  # nothing to do is no stall
    assert stall_runs(idle) == []


def test_p99_is_nearest_rank_over_the_window() -> None:
    quiet = QuietTenant("quiet")
    for n in range(200):
        quiet.sent[f"Q{n}"] = float(n)
        quiet.arrived[f"Q{n}"] = n + (1.0 if n == 150 else 0.01)
    assert p99_ms(quiet, 0, 100) == 10.0
    assert p99_ms(quiet, 100, 200) == 10.0  # one slow message of 100 is the 1 %
    assert p99_ms(quiet, 140, 160) == 1000.0
    assert p99_ms(quiet, 300, 400) is None


def test_every_class_builds_and_its_frames_split_as_predicted() -> None:
    fault_scene = scene()
    draw = RandomDraw(random.Random(5))
    for kind in FAULT_CLASSES * 20:
        case = fault_scene.build(kind, draw)
        assert case.kind == kind
        if kind in ("partial", "slow"):
            assert case.transport == "mllp"
        if kind == "oversize":
            assert case.size > MAX_MESSAGE_BYTES
        if kind == "partial":
            assert case.expected_acks == 0 and b"\x1c" not in case.chunks[0]
