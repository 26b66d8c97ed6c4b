"""Broker outages under live traffic: what senders are told while Kafka is down, what lands after.

A scenario runs a throwaway Kafka (its own run dir and ports, 1 or 3 nodes, driven through
scripts/kafka.sh), one worker, and two tenants whose senders run for the whole scenario: an MLLP
sender (stop-and-wait on one persistent connection, reconnecting when it drops) and an HTTP
sender (one message per POST), each paced, each message with a control id of its own. A message
refused (AR, 503, or no answer at all) is resent later, the same bytes, like a real sender, until
it is accepted (AA / 202) or the scenario ends. Every attempt is recorded: send time, answer time,
answer code. Faults are broken into the cluster while the senders keep going: a graceful stop of
the broker, a kill -9, or (3 nodes) a kill -9 of one broker. Afterwards every tenant's out topic
is read and the measures computed (see `PhaseReport` and `ScenarioReport`).

tests/integration/test_broker_outage.py uses the same scenario (tests/harness/outage.py) with
short phases. This module's entry point is the benchmark: a graceful 20 s outage, then a kill -9
and restart, on a single node with one worker; then a kill -9 of one broker of a 3-node cluster.

    python -m bench.outage [--rate 20] [--graceful-down-s 20] [--kill-down-s 10]
                           [--cluster-down-s 20] [--no-cluster]

Writes bench/results/outage.json and bench/results/outage.png; exits 1 naming every target
missed. Message bodies are never logged: only control ids and answer codes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.common import (
    REPO,
    RESULTS_DIR,
    git_commit,
    log,
    new_run_id,
    run_bench,
    targets_verdict,
)
from tests.harness.outage import (
    KAFKA_LIBS,
    LOG_LINES_TARGET,
    RATE_PER_S,
    RECOVERY_TARGET_S,
    Fault,
    Scenario,
    ScenarioReport,
)

TARGETS: dict[str, Callable[[Any], bool]] = {
    "lost == 0": lambda r: r["lost"] == 0,
    "acked_while_down == 0": lambda r: r["acked_while_down"] == 0,
    f"ingest_recovery_s <= {RECOVERY_TARGET_S:g}": lambda r: (
        r["ingest_recovery_s"] is not None and r["ingest_recovery_s"] <= RECOVERY_TARGET_S
    ),
    f"log_lines_during_outage <= {LOG_LINES_TARGET}": lambda r: (
        r["log_lines_during_outage"] <= LOG_LINES_TARGET
    ),
    "cluster_broker_kill_lost == 0": lambda r: r["cluster_broker_kill_lost"] in (0, None),
}


def aggregate(reports: Sequence[ScenarioReport]) -> dict[str, Any]:
    """Sums of counts and maxima of times and lines over the phases; per phase under `phases`."""
    phases = [p for report in reports for p in report.phases]
    outages = [p for p in phases if p.whole_cluster]
    cluster = [p for p in phases if not p.whole_cluster]
    recoveries = [p.ingest_recovery_s for p in outages]
    return {
        "acked": sum(p.acked for p in phases),
        "lost": sum(p.lost for p in phases),
        "acked_while_down": sum(p.acked_while_down or 0 for p in outages),
        "ingest_recovery_s": None if None in recoveries else max(recoveries, default=0.0),
        "log_lines_during_outage": max((p.log_lines_during_outage for p in outages), default=0),
        "cluster_broker_kill_lost": sum(p.lost for p in cluster) if cluster else None,
        "cluster_max_ack_gap_s": max((p.max_answer_gap_s for p in cluster), default=None),
        "duplicates_without_same_key": sum(r.duplicates_without_same_key for r in reports),
        "order_violations": sum(r.order_violations for r in reports),
        "never_accepted": sum(r.never_accepted for r in reports),
        "malformed_refusals": sum(r.malformed_refusals for r in reports),
        "workers_exited": [name for r in reports for name in r.workers_exited],
        "phases": {p.name: asdict(p) for p in phases},
        "scenarios": [r.as_dict() for r in reports],
    }


def plot(scenarios: Sequence[tuple[str, Scenario]], path: Path) -> None:
    """Per sender, every answer over time (latency, coloured by outcome), outages shaded."""
    rows = [
        (label, scenario, sender) for label, scenario in scenarios for sender in scenario.senders
    ]
    figure = Figure(figsize=(14, 2.8 * len(rows)), layout="constrained")
    FigureCanvasAgg(figure)  # render with Agg: no display needed
    axes_list = figure.subplots(len(rows), 1, squeeze=False)[:, 0]
    outcomes = (
        ("accepted (AA/202)", lambda a: a.accepted, "tab:green"),
        ("refused (AR/503/...)", lambda a: a.answered and not a.accepted, "tab:red"),
        ("no answer (connection)", lambda a: not a.answered, "tab:grey"),
    )
    for axes, (label, scenario, sender) in zip(axes_list, rows, strict=True):
        for phase in scenario.phases:
            # Darker while the broker is surely down, lighter while it stops and starts.
            for start, end, shade in (
                (phase.stop_issued, phase.broker_gone, "0.9"),
                (phase.broker_gone, phase.start_issued, "0.8"),
                (phase.start_issued, phase.broker_back, "0.9"),
            ):
                axes.axvspan(scenario.at(start), scenario.at(end), color=shade, linewidth=0)
            axes.text(
                scenario.at(phase.stop_issued),
                1.0,
                f" {phase.name} (node {phase.node})",
                va="top",
                fontsize=8,
                transform=axes.get_xaxis_transform(),
            )
        for name, keep, color in outcomes:
            chosen = [a for a in sender.attempts if keep(a)]
            axes.scatter(
                [scenario.at(a.answered_at) for a in chosen],
                [max(0.1, (a.answered_at - a.sent_at) * 1000) for a in chosen],
                s=4,
                color=color,
                label=f"{name}: {len(chosen)}",
                rasterized=True,
            )
        axes.set(
            title=f"{label}: {sender.name} sender ({sender.tenant.id})",
            xlabel="time since scenario start (s)",
            ylabel="answer latency (ms)",
            yscale="log",
        )
        axes.legend(loc="upper right", fontsize=8)
        axes.grid(True, alpha=0.3)
    figure.savefig(path, dpi=90)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    run_id = new_run_id()
    logs = REPO / ".run" / "bench" / f"outage-{run_id}"
    # Broker logs stay beside the worker logs when a run fails (data is wiped either way).
    kafka_root = logs / "kafka"
    scenarios: list[tuple[str, Scenario]] = []
    reports: list[ScenarioReport] = []
    try:
        then = "" if args.graceful_only else ", then kill -9"
        log(f"single node, one worker: graceful stop{then}")
        async with Scenario(
            logs / "single", rate_per_s=args.rate, cluster_root=kafka_root / "single"
        ) as single:
            scenarios.append(("1 node", single))
            faults: list[Fault] = [("graceful-stop", "stop", args.graceful_down_s)]
            if not args.graceful_only:
                faults.append(("kill-9", "kill", args.kill_down_s))
            reports.append(await single.run(faults, args.steady_s))
        if args.cluster and not args.graceful_only:
            log("3-node cluster: kill -9 of one broker under traffic")
            async with Scenario(
                logs / "cluster", nodes=3, rate_per_s=args.rate, cluster_root=kafka_root / "cluster"
            ) as cluster:
                scenarios.append(("3 nodes", cluster))
                fault: Fault = ("cluster-broker-kill", "kill", args.cluster_down_s)
                reports.append(await cluster.run([fault], args.steady_s))
    finally:
        if any(scenario.senders for _, scenario in scenarios):
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            plot(scenarios, RESULTS_DIR / "outage.png")
    shutil.rmtree(kafka_root, ignore_errors=True)
    results = aggregate(reports)
    results["targets_missed"] = [name for name, met in TARGETS.items() if not met(results)]
    if results["targets_missed"]:
        for report in reports:
            log(report.explain())
    results |= {
        "rate_per_s": args.rate,
        "graceful_down_s": args.graceful_down_s,
        "kill_down_s": args.kill_down_s,
        "cluster_down_s": args.cluster_down_s,
        "kafka_version": kafka_version(),
        "cpu_count": os.cpu_count(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "worker_logs": str(logs),
        "wall_time_s": round(time.monotonic() - started, 1),
    }
    return results


def kafka_version() -> str | None:
    jar = next(KAFKA_LIBS.glob("kafka_2.13-*.jar"), None)
    return jar.stem.removeprefix("kafka_2.13-") if jar else None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=RATE_PER_S, help="msg/s per sender")
    parser.add_argument("--graceful-down-s", type=float, default=20.0)
    parser.add_argument("--kill-down-s", type=float, default=10.0)
    parser.add_argument("--cluster-down-s", type=float, default=20.0)
    parser.add_argument("--steady-s", type=float, default=5.0, help="traffic between phases")
    parser.add_argument("--no-cluster", dest="cluster", action="store_false")
    parser.add_argument(
        "--graceful-only", action="store_true", help="only the single-node graceful phase"
    )
    args = parser.parse_args()
    if args.rate <= 0:
        parser.error("--rate must be positive")
    return args


def _summary(results: dict[str, Any]) -> str:
    return (
        f"outages: {results['acked']} accepted, {results['lost']} lost, "
        f"{results['acked_while_down']} accepted while down, recovery "
        f"{results['ingest_recovery_s']} s, {results['log_lines_during_outage']} log lines, "
        f"cluster kill lost {results['cluster_broker_kill_lost']}, max gap "
        f"{results['cluster_max_ack_gap_s']} s; {targets_verdict('outage', results)}"
    )


def main() -> None:
    run_bench(bench, parse_args(), "outage", _summary)


if __name__ == "__main__":
    main()
