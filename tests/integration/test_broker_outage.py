"""Kafka outages under live traffic: refused while down, served again within seconds, nothing lost.

Each test runs its own throwaway Kafka (tests/harness/outage.py's Scenario: own run dir and
ports), one worker, and two tenants sending all along: one over MLLP (stop-and-wait,
reconnecting), one over HTTP, each 20 msg/s with a control id per message, resending refused
messages (same bytes) until accepted. A failure shows the per-sender answer timeline and the
worker's log tail.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from streams.hl7.synthetic import SyntheticFeed
from tests.harness import Api
from tests.harness.outage import (
    FaultKind,
    Scenario,
    ScenarioReport,
    delivery_problems,
    outage_problems,
)

pytestmark = pytest.mark.integration

MAX_ANSWER_GAP_S = 15.0  # with one of three brokers dead, ingest keeps answering
OUTAGE_S = 20.0
KILL_OUTAGE_S = 8.0
WORKER_WAITING_S = 10.0  # a worker started while the broker is down waits this long for it
CLUSTER_KILL_S = 20.0
STEADY_S = 3.0  # traffic before a fault and after recovery
SETTLE_S = 10.0  # resends still refused after the last phase are given this long
RECOVERY_TIMEOUT_S = 20.0  # how long to wait for recovery before measuring it as missing


def refusal_problems(report: ScenarioReport, phase_name: str) -> list[str]:
    """While the only broker is down, MLLP answers AR and HTTP 503, and answers at all."""
    expected = {"mllp": "AR", "http": "503"}
    problems = []
    for sender, codes in report.phase(phase_name).answers_while_down.items():
        if not codes:
            problems.append(f"no answer to the {sender} sender while the broker was down")
        elif set(codes) != {expected[sender]}:
            problems.append(f"{sender} answers while the broker was down: {codes}")
    return problems


async def view_problems(scenario: Scenario, kafka_up: bool, timeout_s: float = 5.0) -> list[str]:
    """Within `timeout_s`, /metrics and /api/stats say whether Kafka is up, and /api/stats
    answers at once (it never waits for Kafka)."""
    want = 1.0 if kafka_up else 0.0
    deadline = time.monotonic() + timeout_s
    seen: tuple[object, ...] = ()
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            async with session.get(f"{scenario.web_url}/metrics") as response:
                metric = next(
                    (
                        float(line.split()[-1])
                        for line in (await response.text()).splitlines()
                        if line.startswith("laneway_kafka_up ")
                    ),
                    None,
                )
            asked = time.monotonic()
            async with session.get(
                f"{scenario.web_url}/api/stats",
                headers={"Authorization": f"Bearer {scenario.env['LANEWAY_ADMIN_TOKEN']}"},
            ) as response:
                stats = await response.json()
            answered_s = time.monotonic() - asked
            seen = (metric, stats["kafka"], round(answered_s, 2))
            if metric == want and stats["kafka"]["up"] is kafka_up and answered_s < 1.0:
                return []
            await asyncio.sleep(0.2)
    return [f"views while Kafka {'up' if kafka_up else 'down'}: (metric, kafka, answer s) {seen}"]


async def onboarding_problems(scenario: Scenario) -> list[str]:
    """After the outage, the tenant registry (its mirror's producer and consumer) works again."""
    feed = SyntheticFeed(seed=7, control_id_prefix="LATE-", escape_rate=0)
    async with Api(scenario.web_url, scenario.env["LANEWAY_ADMIN_TOKEN"]) as api:
        tenant = await api.onboard(f"late-{scenario.run_tag}")
        status, answer = await api.send(tenant["id"], tenant["token"], feed.messages(1)[0])
    return [] if status == 202 else [f"a tenant onboarded after the outage got {status} {answer}"]


async def outage_problems_after(
    tmp_path: Path, fault: FaultKind, down_s: float, *, check_views: bool = False
) -> list[str]:
    """One single-node outage under traffic; what went wrong, then the timeline and log tail.
    With `check_views`, also what /metrics and /api/stats say meanwhile, and onboarding after."""
    async with Scenario(tmp_path) as scenario:
        await scenario.start()
        await scenario.start_traffic()
        await scenario.await_serving()
        await scenario.hold(STEADY_S)
        phase = await scenario.break_broker(f"broker-{fault}", fault)
        views = await view_problems(scenario, kafka_up=False) if check_views else []
        await scenario.hold(down_s)
        await scenario.restore(phase, recovery_timeout_s=RECOVERY_TIMEOUT_S)
        if check_views:
            views += await view_problems(scenario, kafka_up=True)
            views += await onboarding_problems(scenario)
        await scenario.hold(STEADY_S)
        report = await scenario.finish(settle_s=SETTLE_S)
    problems = views + refusal_problems(report, phase.name) + outage_problems(report, phase.name)
    return [*problems, report.explain()] if problems else []


async def test_graceful_broker_stop_refuses_then_recovers_and_loses_nothing(
    tmp_path: Path,
) -> None:
    problems = await outage_problems_after(tmp_path, "stop", OUTAGE_S, check_views=True)

    assert not problems, "\n".join(problems)


async def test_broker_kill_9_refuses_then_recovers_and_loses_nothing(tmp_path: Path) -> None:
    problems = await outage_problems_after(tmp_path, "kill", KILL_OUTAGE_S)

    assert not problems, "\n".join(problems)


async def test_a_worker_started_while_the_broker_is_down_serves_once_it_is_back(
    tmp_path: Path,
) -> None:
    async with Scenario(tmp_path) as scenario:
        # Tenants are onboarded through a first worker while the broker is up; the worker
        # under test starts (same settings, data dir and ports) only once the broker is down.
        await scenario.start()
        await scenario.stop_worker()
        phase = await scenario.break_broker("worker-started-while-down", "stop")
        await scenario.start_worker(wait_ready=False)
        await scenario.start_traffic()
        await scenario.hold(WORKER_WAITING_S)
        await scenario.restore(phase, recovery_timeout_s=RECOVERY_TIMEOUT_S)
        await scenario.hold(STEADY_S)
        report = await scenario.finish(settle_s=SETTLE_S)

    # Nothing to refuse before its listeners are up: no AR/503 expectation here, only no AA,
    # serving soon after the broker is back, and a worker that waits quietly.
    problems = outage_problems(report, phase.name)
    assert not problems, "\n".join(problems) + report.explain()


async def test_one_broker_of_three_killed_under_traffic_loses_nothing_and_keeps_order(
    tmp_path: Path,
) -> None:
    async with Scenario(tmp_path, nodes=3) as scenario:
        report = await scenario.run(
            [("cluster-broker-kill", "kill", CLUSTER_KILL_S)], STEADY_S, settle_s=SETTLE_S
        )

    measured = report.phase("cluster-broker-kill")
    problems = delivery_problems(report)
    if measured.max_answer_gap_s > MAX_ANSWER_GAP_S:
        problems.append(
            f"ingest went {measured.max_answer_gap_s:.1f} s without answering a sender "
            f"while broker {measured.node} was dead"
        )
    if report.order_violations:
        problems.append(f"{report.order_violations} events out of first-AA order in out")
    assert not problems, "\n".join(problems) + report.explain()
