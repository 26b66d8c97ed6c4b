"""Laneway's behaviour: Faust agents, services, views and commands installed onto the app."""

from __future__ import annotations

from typing import Any

from agents import (
    admin_api,
    commands,  # noqa: F401  (importing registers the faust CLI commands)
    http_ingest,
    processor,
)
from agents.ingest import Ingest, IngressWriter
from agents.registry import TenantRegistry
from agents.web_auth import Guard
from streams.app import LanewayApp, create_app
from streams.settings import Settings


def build_worker(settings: Settings | None = None, **faust_overrides: Any) -> LanewayApp:
    """The worker app with every role installed. Tests build apps through this too."""
    app = create_app(settings, **faust_overrides)
    settings = app.laneway
    registry = TenantRegistry(app)
    writer = IngressWriter(app)
    app.service(registry)  # type: ignore[arg-type]
    app.service(writer)  # type: ignore[arg-type]
    admin_token = settings.admin_token.get_secret_value() if settings.admin_token else None
    guard = Guard(registry, admin_token)
    ingest = Ingest(registry, writer)
    processor.install(app)
    admin_api.install(app, registry, guard)
    http_ingest.install(app, ingest, guard)
    return app
