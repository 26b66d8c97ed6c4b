"""Headless Chromium for the dashboard's browser test and bench: Debian's Chromium, never a
download, and the dashboard's sign-in as an operator does it."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import Browser, Page, Playwright

from tests.harness import HarnessError

# Debian's Chromium (`apt-get install -y chromium`); Playwright's own browser download is never
# used. The flags keep a headless run quiet and offline.
CHROMIUM_PATH = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_executable() -> str:
    if not CHROMIUM_PATH.exists():
        raise HarnessError(f"no Chromium at {CHROMIUM_PATH}: apt-get install -y chromium")
    return str(CHROMIUM_PATH)


async def launch_chromium(playwright: Playwright) -> Browser:
    return await playwright.chromium.launch(
        executable_path=chromium_executable(), headless=True, args=CHROMIUM_ARGS
    )


async def sign_in(page: Page, base_url: str, token: str) -> None:
    """Open the dashboard and sign in through its form, as an operator would."""
    await page.goto(f"{base_url}/dashboard")
    await page.fill("#token", token)
    await page.click("#login-form button[type=submit]")
