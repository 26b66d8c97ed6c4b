"""The scale-out checker and the scene's pure helpers (tests/harness/scale.py), no broker."""

from __future__ import annotations

import pytest

from tests.harness import HarnessError, Sender
from tests.harness.scale import (
    Accepted,
    Delivery,
    Kind,
    TenantSender,
    check,
    owned_partitions,
    padded_message,
    vm_rss_bytes,
)

T0 = 1_700_000_000.0


def sent(tenant: str, *seqs: int) -> list[Accepted]:
    return [Accepted(tenant, seq, f"{tenant}{seq}", T0 + seq) for seq in seqs]


def out(tenant: str, *seqs: int, kind: Kind = "out", key: str = "") -> list[Delivery]:
    """Deliveries in the order given, at consecutive offsets, 1 s after each acceptance."""
    return [
        Delivery(tenant, kind, offset, f"{tenant}{seq}", f"k{seq}{key}", int((T0 + seq + 1) * 1000))
        for offset, seq in enumerate(seqs)
    ]


def test_everything_once_and_in_order_is_clean() -> None:
    report = check(sent("a", 0, 1, 2) + sent("b", 0, 1), out("a", 0, 1, 2) + out("b", 0, 1))
    assert report.problems() == []
    assert (report.accepted, report.delivered, report.unaccepted) == (5, 5, 0)
    assert report.max_latency_s == {"a": pytest.approx(1.0), "b": pytest.approx(1.0)}


def test_an_accepted_message_in_neither_topic_is_lost() -> None:
    report = check(sent("a", 0, 1, 2), out("a", 0, 2))
    assert report.lost == ("a1",)
    assert "lost 1 of 3" in report.problems()[0]


def test_a_message_in_the_dlq_is_not_lost() -> None:
    report = check(sent("a", 0, 1, 2), out("a", 0, 2) + out("a", 1, kind="dlq"))
    assert report.lost == ()
    assert report.problems() == []


def test_an_earlier_message_after_a_later_one_is_an_order_violation() -> None:
    report = check(sent("a", 0, 1, 2, 3), out("a", 0, 2, 1, 3))
    [violation] = report.order_violations
    assert (violation.control_id, violation.seq, violation.after, violation.after_seq) == (
        "a1",
        1,
        "a2",
        2,
    )
    assert violation.offset == 2
    assert "a out@2: a1 (#1) after a2 (#2)" in report.problems()[0]


def test_order_is_per_tenant_and_per_topic() -> None:
    # Interleaved tenants, and a DLQ record whose later sequence shows before an out event's.
    deliveries = out("a", 0, 2) + out("b", 0, 1) + out("a", 1, kind="dlq")
    report = check(sent("a", 0, 1, 2) + sent("b", 0, 1), deliveries)
    assert report.order_violations == ()


def test_a_redelivery_with_the_same_key_is_a_duplicate_but_neither_violation_nor_problem() -> None:
    # At-least-once: 0 1 2 then 1 2 again (a re-forward after a crash), same keys.
    report = check(sent("a", 0, 1, 2, 3), out("a", 0, 1, 2, 1, 2, 3))
    assert report.duplicates == {"a1": 2, "a2": 2}
    assert report.duplicates_without_same_key == {}
    assert report.order_violations == ()
    assert report.problems() == []


def test_a_duplicate_under_another_key_is_a_problem() -> None:
    again = Delivery("a", "out", 2, "a1", "other-key", int((T0 + 3) * 1000))
    deliveries = [*out("a", 0, 1), again]
    report = check(sent("a", 0, 1), deliveries)
    assert report.duplicates_without_same_key == {"a1": ("k1", "other-key")}
    assert "1 duplicates without the same idempotency key" in report.problems()[0]


def test_a_first_delivery_under_a_new_key_is_checked_for_order() -> None:
    # a1 again under another key, after a2: a second write of a1 came out after a2.
    again = Delivery("a", "out", 3, "a1", "other-key", int((T0 + 3) * 1000))
    deliveries = [*out("a", 0, 1, 2), again]
    report = check(sent("a", 0, 1, 2), deliveries)
    assert [v.control_id for v in report.order_violations] == ["a1"]


def test_deliveries_never_accepted_are_counted_not_checked() -> None:
    # Written before a kill, never answered: Laneway may emit it, the sender does not expect it.
    first, last = out("a", 0, 2)
    stray = Delivery("a", "out", 5, "a-stray", "ks", int(T0 * 1000))
    report = check(sent("a", 0, 2), [first, stray, last])
    assert report.unaccepted == 1
    assert report.problems() == []


def test_deliveries_are_ordered_by_offset_whatever_the_reading_order() -> None:
    report = check(sent("a", 0, 1, 2), list(reversed(out("a", 0, 1, 2))))
    assert report.order_violations == ()


def test_latency_is_the_slowest_first_arrival_per_tenant() -> None:
    late = Delivery("a", "out", 2, "a2", "k2", int((T0 + 2 + 7.5) * 1000))
    report = check(sent("a", 0, 1, 2), [*out("a", 0, 1), late])
    assert report.max_latency_s["a"] == pytest.approx(7.5)


def test_the_routers_partitions_come_from_its_latest_log_line() -> None:
    log = (
        b"[..] [INFO] router reads ingress partitions [0, 1, 2, 3] \n"
        b"[..] [INFO] Executing _on_partitions_assigned \n"
        b"[..] [INFO] router reads ingress partitions [1, 3] \n"
    )
    assert owned_partitions(log) == {1, 3}
    assert owned_partitions(b"[..] [INFO] router reads ingress partitions [] \n") == set()
    assert owned_partitions(b"[..] [INFO] Ready\n") is None


def test_vm_rss_is_read_in_bytes() -> None:
    status = "Name:\tfaust\nVmPeak:\t  900 kB\nVmRSS:\t   75264 kB\nThreads:\t4\n"
    assert vm_rss_bytes(status) == 75264 * 1024
    with pytest.raises(HarnessError):
        vm_rss_bytes("Name:\tkthreadd\n")


def test_a_sender_numbers_its_messages_and_pads_them_on_request() -> None:
    sender = TenantSender("t", "token", "F")
    [(seq0, id0, plain), (seq1, id1, _)] = sender.next_messages(2)
    assert (seq0, id0, seq1, id1) == (0, "F0000000", 1, "F0000001")
    assert len(id0) <= 20  # MSH-10
    sender.pad_bytes = 8192
    [(_, _, padded)] = sender.next_messages(1)
    assert len(padded) - len(plain) == len(b"NTE|1||\r") + 8192
    assert padded_message(Sender("A", "B"), "X1", 0).endswith(b"\r")
