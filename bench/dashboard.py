"""Dashboard benchmark: time to the first full render of /dashboard with 1,000 live tenants.

Starts its own worker (own app id and topic prefix) and onboards the tenants by writing their
registry records straight to the tenants topic, and their out/DLQ topics with one CreateTopics
request: the same state the admin API leaves, without 1,000 HTTP round trips. Traffic:
- a few tenants get real synthetic HL7 messages through ingress, so the router's own state
  documents are in the mix;
- every other tenant gets a synthetic tenant-state document (rolling windows built with the
  real `TenantVolume`, some in dedicated lanes with a move), republished every second as the
  router does for tenants that send. Writing them is much cheaper than 1,000 tenants' traffic.

Each run opens a fresh browser context, signs in with the admin token, then reloads the page
and reads `performance.mark("laneway:first-render")`, which the page sets once every tenant's row
is on screen: navigation to all rows rendered, including the `/api/stats` fetch.

    python -m bench.dashboard [--tenants 1000] [--runs 7]

Writes bench/results/dashboard.json and bench/results/dashboard.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from playwright.async_api import Browser, Page, async_playwright

from bench.common import (
    REPO,
    RESULTS_DIR,
    BenchError,
    declare_topics,
    log,
    new_run_id,
    run_bench,
    topic_table,
)
from streams.auth import hash_token, new_token
from streams.hl7.synthetic import SyntheticFeed
from streams.tenants import TenantRecord, TenantSpec
from streams.topics import TopicNames, TopicTable
from streams.volume import TenantVolume
from tests.harness import WorkerProcess, default_bootstrap, worker_env
from tests.harness.browser import launch_chromium, sign_in

FIRST_RENDER_MARK = "laneway:first-render"
VIEWPORT = {"width": 1400, "height": 900}
READY_TIMEOUT_S = 120.0
RENDER_TIMEOUT_MS = 30_000
REAL_TRAFFIC_TENANTS = 10
REAL_MESSAGES_EACH = 20
DEDICATED_LANES = 4
REPUBLISH_S = 1.0


async def first_render_ms(page: Page) -> float:
    """Milliseconds from the navigation's start to the page's first-render mark."""
    # A function, not an expression: the page's CSP forbids eval of strings.
    handle = await page.wait_for_function(
        "(mark) => performance.getEntriesByName(mark)[0]?.startTime",
        arg=FIRST_RENDER_MARK,
        timeout=RENDER_TIMEOUT_MS,
    )
    return float(await handle.json_value())


def tenant_id(index: int) -> str:
    return f"bench-tenant-{index:04d}"


class SyntheticTenants:
    """Rolling windows of the tenants without real traffic: a long-tailed rate (a few busy
    tenants, many quiet ones), the busiest in dedicated lanes, advanced second by second."""

    def __init__(self, first: int, tenants: int, now: float) -> None:
        self.indexes = range(first, tenants)
        self.volumes = {index: TenantVolume() for index in self.indexes}
        for ago in range(300, 0, -1):  # the last 5 minutes
            self.advance(now - ago)

    @staticmethod
    def rate(index: int) -> float:
        return 200.0 / (1 + index)  # msgs/s, Zipf-like

    def advance(self, now: float) -> None:
        """Count one second of traffic at `now` for every tenant."""
        for index, volume in self.volumes.items():
            rate = self.rate(index)
            every = max(1, round(1 / rate))  # a quiet tenant sends every few seconds
            if int(now) % every == index % every:
                messages = max(1, round(rate))
                volume.record(now, messages, 600 * messages)

    def document(self, index: int, now: float) -> dict[str, Any]:
        """The tenant-state document a router would write for this tenant at `now`."""
        volume = self.volumes[index]
        lane = index - self.indexes.start
        lane = lane if lane < DEDICATED_LANES else None
        moved_at = now - 60 if lane is not None else None
        moves = []
        if moved_at is not None:
            at = datetime.fromtimestamp(moved_at, UTC).isoformat(timespec="milliseconds")
            moves.append(
                {
                    "tenant": tenant_id(index),
                    "from": None,
                    "to": lane,
                    "reason": "rate_above_contract",
                    "at": at,
                }
            )
        return {
            "tenant": tenant_id(index),
            "lane": lane,
            "moved_at": moved_at,
            "moves": moves,
            "volume": volume.to_state(),
            "rates": volume.rates(now).as_dict(),
            "updated_at": now,
        }


async def onboard(
    admin: AIOKafkaAdminClient, producer: AIOKafkaProducer, table: TopicTable, tenants: int
) -> None:
    """Registry records and per-tenant topics, as `POST /api/tenants` leaves them."""
    topics = table.names
    per_tenant = [
        topic
        for index in range(tenants)
        for topic in (topics.out(tenant_id(index)), topics.dlq(tenant_id(index)))
    ]
    await declare_topics(admin, table, per_tenant)
    now = datetime.now(UTC)
    for index in range(tenants):
        spec = TenantSpec(id=tenant_id(index), name=f"Bench tenant {index}", rate_per_s=50)
        record = TenantRecord.create(spec, hash_token(new_token()), now)
        await producer.send(topics.tenants, record.to_json(), key=spec.id.encode())
    await producer.flush()


async def republish_states(
    producer: AIOKafkaProducer, topics: TopicNames, tenants: int, stop: asyncio.Event
) -> None:
    """Every second, a fresh state document for each synthetic tenant, like a router would."""
    synthetic = SyntheticTenants(REAL_TRAFFIC_TENANTS, tenants, time.time())
    while not stop.is_set():
        now = time.time()
        synthetic.advance(now)
        for index in synthetic.indexes:
            document = orjson.dumps(synthetic.document(index, now))
            await producer.send(topics.tenant_state, document, key=tenant_id(index).encode())
        await producer.flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), REPUBLISH_S)


async def send_real_traffic(producer: AIOKafkaProducer, topics: TopicNames) -> None:
    feed = SyntheticFeed(seed=5, escape_rate=0)
    for index in range(REAL_TRAFFIC_TENANTS):
        for _ in range(REAL_MESSAGES_EACH):
            await producer.send(topics.ingress, feed.next_message(), key=tenant_id(index).encode())
    await producer.flush()


async def wait_for_tenants(base_url: str, token: str, tenants: int) -> None:
    """Until /api/stats lists every tenant with its Kafka counts read."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            async with session.get(
                f"{base_url}/api/stats?limit=1", headers={"Authorization": f"Bearer {token}"}
            ) as response:
                if response.status == 200:
                    body = await response.json()
                    if body["totals"]["tenants"] == tenants and body["offsets_read_at"]:
                        return
            await asyncio.sleep(0.5)
    raise BenchError(f"the worker did not list {tenants} tenants within {READY_TIMEOUT_S:.0f}s")


async def time_api_stats(base_url: str, token: str, runs: int) -> tuple[list[float], bytes]:
    """Server round trips of the dashboard's data call, and its last answer."""
    timings, body = [], b""
    async with aiohttp.ClientSession() as session:
        for _ in range(runs):
            started = time.perf_counter()
            async with session.get(
                f"{base_url}/api/stats", headers={"Authorization": f"Bearer {token}"}
            ) as response:
                body = await response.read()
            timings.append((time.perf_counter() - started) * 1000)
    return timings, body


async def measure_renders(
    browser: Browser, base_url: str, token: str, tenants: int, runs: int, screenshot: Path
) -> list[float]:
    timings = []
    for run in range(runs):
        context = await browser.new_context(viewport=VIEWPORT)
        try:
            page = await context.new_page()
            await sign_in(page, base_url, token)
            await first_render_ms(page)
            await page.reload()  # the token stays in this tab's sessionStorage
            timings.append(await first_render_ms(page))
            rows = await page.locator("#rows tr").count()
            if rows != tenants:
                raise BenchError(f"run {run}: {rows} rows on the page, not {tenants}")
            if run == runs - 1:
                await page.screenshot(path=str(screenshot))
        finally:
            await context.close()
    return timings


@contextlib.asynccontextmanager
async def kafka_clients(
    bootstrap: str,
) -> AsyncIterator[tuple[AIOKafkaAdminClient, AIOKafkaProducer]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await admin.start()
    await producer.start()
    try:
        yield admin, producer
    finally:
        await producer.stop()
        await admin.close()


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    run_id = new_run_id()
    app_id = f"lwbench-{run_id}-dash"
    topics = TopicNames(f"{app_id}.")
    run_dir = REPO / ".run" / "bench" / run_id
    env = worker_env(args.bootstrap, app_id, run_dir / "data", dedicated_lanes=str(DEDICATED_LANES))
    token = env["LANEWAY_ADMIN_TOKEN"]
    base_url = f"http://127.0.0.1:{env['LANEWAY_WEB_PORT']}"
    worker = WorkerProcess(env, run_dir / "worker.log", name="faust worker")
    stop = asyncio.Event()
    republisher: asyncio.Task[None] | None = None
    async with kafka_clients(args.bootstrap) as (admin, producer):
        try:
            worker.spawn()
            await worker.ready(READY_TIMEOUT_S)
            log(f"onboarding {args.tenants} tenants")
            await onboard(admin, producer, topic_table(topics.prefix), args.tenants)
            republisher = asyncio.create_task(
                republish_states(producer, topics, args.tenants, stop)
            )
            await send_real_traffic(producer, topics)
            await wait_for_tenants(base_url, token, args.tenants)
            if args.warm_s:
                log(f"{args.warm_s:.0f} s of live state, so that sparklines fill up")
                await asyncio.sleep(args.warm_s)
                worker.check_alive()
            api_timings, api_body = await time_api_stats(base_url, token, args.runs)
            rows = orjson.loads(api_body)["tenants"]
            log(f"measuring {args.runs} renders in headless Chromium")
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            async with async_playwright() as playwright:
                browser = await launch_chromium(playwright)
                try:
                    renders = await measure_renders(
                        browser,
                        base_url,
                        token,
                        args.tenants,
                        args.runs,
                        RESULTS_DIR / "dashboard.png",
                    )
                    chromium_version = browser.version
                finally:
                    await browser.close()
            worker.check_alive()
        finally:
            stop.set()
            worker.stop()
            if republisher is not None:
                await republisher
            await delete_topics(admin, (app_id,))
            shutil.rmtree(run_dir / "data", ignore_errors=True)
    return {
        "tenants": args.tenants,
        "first_render_ms": round(statistics.median(renders), 1),
        "runs": args.runs,
        "first_render_p50_ms": round(statistics.median(renders), 1),
        "first_render_max_ms": round(max(renders), 1),
        "first_render_runs_ms": [round(value, 1) for value in renders],
        "api_stats_p50_ms": round(statistics.median(api_timings), 1),
        "api_stats_bytes": len(api_body),
        "warm_s": args.warm_s,
        "sparkline_points_max": max(len(row["sparkline"]) for row in rows),
        "traffic": (
            f"registry records written to the tenants topic and out/DLQ topics created directly "
            f"(no admin API calls); {REAL_TRAFFIC_TENANTS} tenants got {REAL_MESSAGES_EACH} real "
            f"synthetic HL7 messages each through ingress; the other "
            f"{args.tenants - REAL_TRAFFIC_TENANTS} got synthetic tenant-state documents written "
            f"directly to the tenant-state topic every {REPUBLISH_S:.0f} s"
        ),
        "measured": "navigation start to every tenant's row rendered (reload of a signed-in "
        "tab, includes the /api/stats fetch)",
        "chromium": chromium_version,
        "cpu_count": os.cpu_count(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "wall_time_s": round(time.monotonic() - started, 1),
    }


async def delete_topics(admin: AIOKafkaAdminClient, prefixes: tuple[str, ...]) -> None:
    """The run's topics, Laneway's and Faust's (both start with the app id)."""
    doomed = [topic for topic in await admin.list_topics() if topic.startswith(prefixes)]
    if doomed:
        await admin.delete_topics(doomed)
    log(f"deleted {len(doomed)} bench topics")


def git_commit() -> str | None:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--warm-s",
        type=float,
        default=300.0,
        help="seconds of live state before measuring; 300 fills every sparkline (60 points)",
    )
    parser.add_argument("--bootstrap", default=default_bootstrap())
    args = parser.parse_args()
    if args.tenants <= REAL_TRAFFIC_TENANTS or args.runs < 1:
        parser.error(f"--tenants must exceed {REAL_TRAFFIC_TENANTS} and --runs be at least 1")
    return args


def _summary(results: dict[str, Any]) -> str:
    return (
        f"{results['tenants']:,} tenants: first full render p50 "
        f"{results['first_render_p50_ms']:.0f} ms, max {results['first_render_max_ms']:.0f} ms "
        f"over {results['runs']} runs; /api/stats {results['api_stats_p50_ms']:.0f} ms, "
        f"{results['api_stats_bytes']:,} bytes"
    )


def main() -> None:
    run_bench(bench, parse_args(), "dashboard", _summary)


if __name__ == "__main__":
    main()
