"""A `Router` built without a broker, on fakes of the tenant registry and the tenant-state
mirror: for unit tests of its parts' wiring."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agents.lanes.router import Router
from streams.app import create_app
from streams.settings import Settings


class States:
    """The tenant-state mirror's documents (tenant -> document)."""

    def __init__(self, states: dict[str, dict[str, Any]]) -> None:
        self.states = states


class Registry:
    """A registry that knows no tenant."""

    class directory:
        @staticmethod
        def get(tenant: str) -> None:
            return None

        @staticmethod
        def pinned() -> set[str]:
            return set()


def offline_router(
    tmp_path: Path, states: dict[str, dict[str, Any]], web_port: int, dedicated_lanes: int
) -> Router:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, data_dir=tmp_path, web_port=web_port, dedicated_lanes=dedicated_lanes
    )
    return Router(create_app(settings), Registry(), States(states))  # type: ignore[arg-type]
