"""The operators' dashboard: one HTML page and its script and style, served by the worker.

GET /dashboard            the page (no data in it: anyone may load it)
GET /dashboard/{asset}    dashboard.js, dashboard.css

The page holds no data and no token. The operator types the admin token into a form; the script
keeps it in sessionStorage (gone with the tab, never in a URL, a cookie or a cache) and sends it
as a Bearer header on every `GET /api/stats`, which polls for live updates. No CDN, no build step:
the files in `agents/web/static/` are served as they are.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from faust.web import View

from agents.web.common import no_store
from streams.app import LanewayApp

STATIC_DIR = Path(__file__).with_name("static")
PAGE = "dashboard.html"
ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}

# The page runs only its own script and talks only to its own origin; nothing may frame it.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def install(app: LanewayApp) -> None:
    """Register the dashboard views on `app`; the files are read once, here."""
    page = (STATIC_DIR / PAGE).read_bytes()
    assets = {name: (STATIC_DIR / name).read_bytes() for name in ASSETS}

    @app.page("/dashboard")
    class DashboardPage(View):
        @no_store
        async def get(self, request: web.Request) -> web.Response:
            return web.Response(
                body=page, content_type="text/html", charset="utf-8", headers=SECURITY_HEADERS
            )

    @app.page("/dashboard/{asset}")
    class DashboardAsset(View):
        @no_store
        async def get(self, request: web.Request, asset: str) -> web.Response:
            if asset not in assets:
                return web.json_response(
                    {"error": "not_found", "message": "no such file"}, status=404
                )
            return web.Response(
                body=assets[asset],
                content_type=ASSETS[asset],
                charset="utf-8",
                headers=SECURITY_HEADERS,
            )
