"""`served_worker`: the shared worker's web views on aiohttp's test server, with no broker.

The app is built by `agents.worker.build_worker`, as the faust CLI builds it, but never started:
no Kafka client, no service runs. `app.page` registers each view on Faust's aiohttp application
when the view is declared, and `Web.wsgi()` (Faust's entry point for hosting that application
elsewhere) applies the blueprints and returns it, so the test server serves the worker's own
routes. What the services would have read from Kafka is set in memory: the tenant registry and
the tenant-state mirror through their `apply` (the records they would read from their topics),
the stats' Kafka offsets as an `Offsets`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from agents.state.registry import TenantRegistry
from agents.state.tenant_state import TenantStateMirror
from agents.web.stats import StatsService
from agents.worker import build_worker
from streams.app import LanewayApp
from streams.auth import hash_token, new_token
from streams.settings import Settings
from streams.stats import Offsets
from streams.tenants import TenantRecord, TenantSpec

ADMIN_TOKEN = "lw_test_admin_token"
NO_BROKER = "127.0.0.1:9"  # the discard port: closed on a test machine
S = TypeVar("S")


@dataclass
class ServedWorker:
    app: LanewayApp
    client: TestClient[Any, Any]
    registry: TenantRegistry
    tenant_states: TenantStateMirror
    stats: StatsService

    def onboard(self, tenant_id: str, **spec: Any) -> str:
        """Put a tenant in the registry, as its topic record would; its bearer token."""
        token = new_token()
        record = TenantRecord.create(
            TenantSpec(id=tenant_id, name=spec.pop("name", tenant_id), **spec),
            hash_token(token),
            datetime.now(UTC),
        )
        self.registry.apply(tenant_id, record.to_json())
        return token

    def publish_state(self, tenant_id: str, document: dict[str, Any]) -> None:
        """A tenant-state document, as the router owning the tenant would publish it."""
        self.tenant_states.apply(tenant_id, orjson.dumps(document))

    def set_offsets(self, offsets: Offsets) -> None:
        """What the Kafka probe would have read."""
        self.stats.probe.offsets = offsets


def _service(app: LanewayApp, kind: type[S]) -> S:
    # Faust keeps the services given to `app.service` (LanewayApp.add_service) in this list
    # until the worker starts them; it has no public accessor.
    [service] = [s for s in app._extra_services if isinstance(s, kind)]
    return service


def no_broker_settings(data_dir: Path) -> Settings:
    return Settings(  # type: ignore[call-arg]  # pydantic-settings' own keyword
        _env_file=None,
        data_dir=data_dir,
        admin_token=ADMIN_TOKEN,
        # Nothing listens there: a view that asked Kafka would fail, not pass by luck.
        kafka_bootstrap=NO_BROKER,
    )


@pytest.fixture
async def served_worker(tmp_path: Path) -> AsyncIterator[ServedWorker]:
    app = build_worker(no_broker_settings(tmp_path))
    registry = _service(app, TenantRegistry)
    registry.ready.set()  # as if the tenant topic had been read to its end
    web_app = await app.web.wsgi()
    async with TestClient(TestServer(web_app)) as client:
        yield ServedWorker(
            app, client, registry, _service(app, TenantStateMirror), _service(app, StatsService)
        )
