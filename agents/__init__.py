"""Laneway's behaviour: Faust agents, commands and views installed onto the app."""

from __future__ import annotations

from typing import Any

from agents import (
    commands,  # noqa: F401  (importing registers the faust CLI commands)
    processor,
)
from streams.app import LanewayApp, create_app
from streams.settings import Settings


def build_worker(settings: Settings | None = None, **faust_overrides: Any) -> LanewayApp:
    """The worker app with every role installed. Tests build apps through this too."""
    app = create_app(settings, **faust_overrides)
    processor.install(app)
    return app
