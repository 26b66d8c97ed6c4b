"""The dashboard in headless Chromium against the real worker, with live synthetic traffic."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from playwright.async_api import Browser, Page

from streams.hl7.synthetic import SyntheticFeed
from streams.topics import TopicNames
from tests.harness import REPO, Api, WorkerProcess
from tests.harness.browser import sign_in

pytestmark = pytest.mark.integration

BURST = 3000
NOISY_CONTRACT_PER_S = 5  # promotion: recent rate > 4 x contract and > 20 msgs/s
BADGE_DEADLINE_S = 10.0
SETTLE_DEADLINE_S = 60.0
VIEWPORT = {"width": 1400, "height": 900}
ARTIFACT = REPO / ".run" / "artifacts" / "dashboard.png"
NOT_HL7 = b"this is not an HL7 message"

# What a row shows, cell by cell (`data-field`); flags and lane as their badges' texts.
READ_ROWS = """() => Array.from(document.querySelectorAll("#rows tr"), (row) => {
  const cells = {tenant: row.dataset.tenant};
  for (const cell of row.querySelectorAll("td[data-field]")) {
    const badges = Array.from(cell.querySelectorAll(".badge"), (badge) => badge.textContent);
    cells[cell.dataset.field] = badges.length ? badges.join(",") : cell.textContent.trim();
  }
  return cells;
})"""
READ_TOTALS = """() => Object.fromEntries(Array.from(document.querySelectorAll("[data-total]"),
  (card) => [card.dataset.total, card.querySelector(".value").textContent]))"""
LANE_BADGE = """(tenant) => document.querySelector(
  `tr[data-tenant="${tenant}"] td[data-field="lane"]`)?.textContent.startsWith("dedicated")"""


def shown(value: int | None) -> str:
    """A count as the page writes it."""
    return "\N{EN DASH}" if value is None else f"{value:,}"


def as_shown(row: dict[str, Any]) -> dict[str, str]:
    """An /api/stats row as the dashboard must show it."""
    lane = "shared" if row["lane"] == "shared" else f"dedicated {row['lane_index']}"
    return {
        "tenant": row["tenant"],
        "lane": lane,
        "flags": ",".join(row["flags"]),
        "received": shown(row["received"]),
        "processed": shown(row["processed"]),
        "dlq": shown(row["dlq"]),
    }


async def page_rows(page: Page, tenants: set[str]) -> dict[str, dict[str, str]]:
    rows = await page.evaluate(READ_ROWS)
    fields = ("tenant", "lane", "flags", "received", "processed", "dlq")
    return {row["tenant"]: {f: row[f] for f in fields} for row in rows if row["tenant"] in tenants}


async def test_dashboard_shows_the_noisy_lane_and_the_api_numbers(
    dashboard_api: Api,
    dashboard_worker: WorkerProcess,
    dashboard_env: dict[str, str],
    chromium: Browser,
    tmp_path: Path,
) -> None:
    api = dashboard_api
    topics = TopicNames(dashboard_env["LANEWAY_TOPIC_PREFIX"])
    run = f"ui-{uuid.uuid4().hex[:6]}"
    noisy = await api.onboard(f"{run}-noisy", rate_per_s=NOISY_CONTRACT_PER_S, burst=10)
    senders = [await api.onboard(f"{run}-steady-{index}") for index in range(3)]
    failing = await api.onboard(f"{run}-failing")
    paused = await api.onboard(f"{run}-paused")
    quiet = await api.onboard(f"{run}-quiet")
    feed = SyntheticFeed(seed=21, escape_rate=0)
    expected: dict[str, tuple[int, int, int]] = {quiet["id"]: (0, 0, 0)}
    for index, tenant in enumerate([*senders, failing, paused]):
        count = 4 + 3 * index
        for _ in range(count):
            status, answer = await api.send(tenant["id"], tenant["token"], feed.next_message())
            assert status == 202, answer
        expected[tenant["id"]] = (count, count, 0)
    # Pause once its accepted messages are processed: what a paused tenant still has in
    # ingress waits there until it is resumed, and would be missing from the counts below.
    deadline = time.monotonic() + SETTLE_DEADLINE_S
    while time.monotonic() < deadline:
        status, stats = await api.call(
            "GET", f"/api/tenants/{paused['id']}/stats", token=api.admin_token
        )
        if status == 200 and stats["processed"] == expected[paused["id"]][1]:
            break
        await asyncio.sleep(0.25)
    status, _ = await api.call("POST", f"/api/tenants/{paused['id']}/pause", token=api.admin_token)
    assert status == 200

    context = await chromium.new_context(viewport=VIEWPORT)
    page = await context.new_page()
    producer = AIOKafkaProducer(
        bootstrap_servers=dashboard_env["LANEWAY_KAFKA_BOOTSTRAP"], acks="all", linger_ms=5
    )
    await producer.start()
    try:
        await sign_in(page, api.base_url, api.admin_token)
        await page.wait_for_selector(f'tr[data-tenant="{quiet["id"]}"]')
        assert api.admin_token not in page.url
        assert await page.evaluate("() => localStorage.length") == 0

        # Bad bytes straight to ingress: a DLQ record for `failing`. Then the noisy burst.
        await producer.send_and_wait(topics.ingress, NOT_HL7, key=failing["id"].encode())
        received, events, _ = expected[failing["id"]]
        expected[failing["id"]] = (received + 1, events + 1, 1)
        for _ in range(BURST):
            await producer.send(topics.ingress, feed.next_message(), key=noisy["id"].encode())
        await producer.flush()
        burst_sent_at = time.monotonic()
        expected[noisy["id"]] = (BURST, BURST, 0)

        await page.wait_for_function(LANE_BADGE, arg=noisy["id"], timeout=BADGE_DEADLINE_S * 1000)
        badge_after_s = time.monotonic() - burst_sent_at

        # Once the traffic is processed, the page must show what /api/stats says, and that must
        # be what was sent.
        deadline = time.monotonic() + SETTLE_DEADLINE_S
        while True:
            status, stats = await api.call("GET", f"/api/stats?q={run}", token=api.admin_token)
            assert status == 200
            api_rows = {row["tenant"]: row for row in stats["tenants"]}
            counts = {t: (r["received"], r["processed"], r["dlq"]) for t, r in api_rows.items()}
            on_page = await page_rows(page, set(expected))
            wanted = {tenant: as_shown(row) for tenant, row in api_rows.items()}
            if (counts == expected and on_page == wanted) or time.monotonic() > deadline:
                break
            await page.wait_for_timeout(250)
        totals = await page.evaluate(READ_TOTALS)
        api_totals = stats["totals"]
        await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / "dashboard.png", ARTIFACT)
    finally:
        await producer.stop()
        await context.close()

    assert badge_after_s < BADGE_DEADLINE_S
    assert counts == expected, dashboard_worker.log_tail()
    assert on_page == wanted
    assert wanted[noisy["id"]]["lane"].startswith("dedicated")
    assert "noisy" in wanted[noisy["id"]]["flags"]
    assert wanted[failing["id"]]["flags"] == "erroring"
    assert "paused" in wanted[paused["id"]]["flags"]
    assert wanted[quiet["id"]]["flags"] == "silent"
    # This module's worker serves only these tenants, so the totals are theirs.
    assert {key: totals[key] for key in ("tenants", "received", "processed", "dlq")} == {
        "tenants": shown(api_totals["tenants"]),
        "received": shown(api_totals["received"]),
        "processed": shown(api_totals["processed"]),
        "dlq": shown(api_totals["dlq"]),
    }
    assert api_totals["received"] == sum(received for received, _, _ in expected.values())


async def test_dashboard_signs_out_a_token_that_is_not_the_admins(
    dashboard_api: Api, chromium: Browser
) -> None:
    api = dashboard_api
    tenant = await api.onboard(f"ui-{uuid.uuid4().hex[:6]}-tenant")
    context = await chromium.new_context(viewport=VIEWPORT)
    try:
        page = await context.new_page()
        for token, message in (
            (tenant["token"], "That is not the admin token."),
            ("lw_" + "x" * 43, "Unknown token."),
        ):
            await sign_in(page, api.base_url, token)
            error = page.locator("#login-error")
            await error.filter(has_text=message).wait_for(timeout=10_000)
            assert await page.locator("#rows tr").count() == 0
            assert await page.locator("#board").is_hidden()
            assert await page.evaluate("() => sessionStorage.length") == 0
    finally:
        await context.close()
