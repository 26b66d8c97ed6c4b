"""What the log says through a Kafka outage: three kinds of line, never one per retry."""

from __future__ import annotations

import logging

from streams.outage_log import BrokerLink, RepeatLimiter, install_repeat_limiter


def record(name: str, msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_link_says_lost_once_then_a_summary_every_ten_seconds_then_back() -> None:
    link = BrokerLink()
    lines = []
    for tick in range(0, 61):  # two probes a second for 30 s
        line = link.observe(False, 100.0 + tick / 2, "KafkaConnectionError", held_back=50)
        if line is not None:
            lines.append(line)
    assert lines[0] == "Kafka unreachable (KafkaConnectionError)"
    assert len(lines) == 4  # lost, then at 10, 20 and 30 s
    assert lines[1].startswith("Kafka still unreachable after 10 s")
    assert "1000 repeated client log lines held back" in lines[1]  # 20 probes x 50
    assert lines[3].startswith("Kafka still unreachable after 30 s")
    assert link.down_since == 100.0 and not link.up
    assert link.observe(True, 131.0) == "Kafka reachable again after 31.0 s"
    assert link.up and link.down_since is None
    assert link.observe(True, 131.5) is None


def test_link_is_silent_while_up() -> None:
    link = BrokerLink()
    assert [link.observe(True, float(t)) for t in range(100)] == [None] * 100


def test_a_flood_of_one_template_passes_one_record_per_window_with_the_count() -> None:
    clock = Clock()
    limiter = RepeatLimiter(every_s=10.0, clock=clock)
    passed = []
    for step in range(25_000):  # 1,000 a second for 25 s, as aiokafka logs a dead node
        clock.now = step / 1000
        entry = record("aiokafka.conn", "Unable connect to node with id %s: %s", 1, "refused")
        if limiter.filter(entry):
            passed.append(entry.getMessage())
    assert len(passed) == 3  # at 0, 10 and 20 s
    assert passed[0] == "Unable connect to node with id 1: refused"
    assert passed[1] == "Unable connect to node with id 1: refused [9999 more like this held back]"
    assert limiter.take_held_back() == 25_000 - 3
    assert limiter.take_held_back() == 0


def test_templates_and_loggers_are_limited_apart_and_info_is_never_held() -> None:
    clock = Clock()
    limiter = RepeatLimiter(every_s=10.0, clock=clock)
    assert limiter.filter(record("aiokafka.conn", "Unable connect to node with id %s", 1))
    assert limiter.filter(record("aiokafka.client", "Unable connect to node with id %s", 1))
    assert limiter.filter(record("aiokafka.client", "Unable to update metadata from %s", [1]))
    assert not limiter.filter(record("aiokafka.client", "Unable to update metadata from %s", [2]))
    for tenant in ("a", "b", "c"):
        move = record("agents.lanes.router", "tenant %s moved", tenant, level=logging.INFO)
        assert limiter.filter(move)


def test_installed_on_the_root_handlers_it_sees_child_loggers() -> None:
    clock = Clock()
    limiter = RepeatLimiter(every_s=10.0, clock=clock)
    root = logging.getLogger("laneway-test-root")
    root.propagate = False
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, entry: logging.LogRecord) -> None:
            seen.append(entry.getMessage())

    root.addHandler(Collect())
    install_repeat_limiter(limiter, root)
    install_repeat_limiter(limiter, root)  # idempotent: one filter per handler
    child = logging.getLogger("laneway-test-root.aiokafka.conn")
    for _ in range(100):
        child.error("Unable connect to node with id %s", 1)
    assert seen == ["Unable connect to node with id 1"]
    assert root.handlers[0].filters == [limiter]
