"""The worker's web views, served from the app `build_worker` builds, without a broker
(`served_worker` in conftest.py): authorisation, validation and the answers built from the
registry, the tenant-state mirror and the stats' Kafka offsets. The same views against the real
broker and worker processes: tests/integration/test_tenants.py, test_stats.py, test_fetch.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from agents.lane_worker import build_lane_worker
from streams.stats import RATE_KEYS, Offsets
from tests.unit.conftest import ADMIN_TOKEN, ServedWorker, no_broker_settings

HL7 = {"Content-Type": "application/hl7-v2"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ADMIN = bearer(ADMIN_TOKEN)


def prometheus_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(name, sorted labels) -> value of every sample in a Prometheus text exposition."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def state_document(
    rate_10s: float, *, lane: int | None = None, received: int = 0
) -> dict[str, Any]:
    """A fresh tenant-state document: every window at `rate_10s`, a message just now."""
    now = time.time()
    rates: dict[str, Any] = dict.fromkeys(RATE_KEYS, rate_10s)
    rates |= {key.replace("rate", "bytes"): 0 for key in RATE_KEYS}
    return {
        "lane": lane,
        "rates": rates | {"received": received, "last_message_at": now},
        "updated_at": now,
        "moved_at": None,
        "moves": [],
    }


async def test_admin_api_needs_the_admin_token(served_worker: ServedWorker) -> None:
    client = served_worker.client
    tenant_token = served_worker.onboard("alpha")

    anonymous = await client.get("/api/tenants")
    tenant = await client.get("/api/tenants", headers=bearer(tenant_token))
    wrong = await client.get("/api/tenants", headers=bearer("lw_not_a_token"))
    admin = await client.get("/api/tenants", headers=ADMIN)

    assert anonymous.status == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await anonymous.json())["error"] == "unauthorized"
    assert wrong.status == 401
    assert tenant.status == 403
    assert (await tenant.json())["error"] == "forbidden"
    assert admin.status == 200
    assert [view["id"] for view in (await admin.json())["tenants"]] == ["alpha"]


async def test_onboarding_refuses_a_bad_body_with_a_reason(served_worker: ServedWorker) -> None:
    client = served_worker.client

    not_json = await client.post("/api/tenants", data=b"{id: alpha", headers=ADMIN)
    not_object = await client.post("/api/tenants", json=["alpha"], headers=ADMIN)
    bad_fields = await client.post(
        "/api/tenants", json={"id": "Not A Slug", "name": "Alpha", "rate_per_s": -1}, headers=ADMIN
    )

    assert (not_json.status, (await not_json.json())["error"]) == (400, "invalid_json")
    assert (not_object.status, (await not_object.json())["error"]) == (400, "invalid_json")
    assert bad_fields.status == 422
    body = await bad_fields.json()
    assert body["error"] == "invalid_field"
    assert {problem["field"] for problem in body["problems"]} == {"id", "rate_per_s"}
    assert "id" in body["message"]
    assert served_worker.registry.directory.get("not-a-slug") is None


async def test_an_unknown_tenant_is_404_for_the_admin(served_worker: ServedWorker) -> None:
    client = served_worker.client
    tenant_token = served_worker.onboard("alpha")

    tenant = await client.get("/api/tenants/nobody", headers=ADMIN)
    stats = await client.get("/api/tenants/nobody/stats", headers=ADMIN)
    # Another tenant's token learns nothing about which ids exist.
    probing = await client.get("/api/tenants/nobody/stats", headers=bearer(tenant_token))

    assert (tenant.status, (await tenant.json())["error"]) == (404, "unknown_tenant")
    assert (stats.status, (await stats.json())["error"]) == (404, "unknown_tenant")
    assert probing.status == 403


async def test_stats_query_errors_name_the_parameter(served_worker: ServedWorker) -> None:
    for query, parameter in (
        ("sort=token", "sort"),
        ("order=up", "order"),
        ("lane=fast", "lane"),
        ("flag=loud", "flag"),
        ("limit=0", "limit"),
    ):
        response = await served_worker.client.get(f"/api/stats?{query}", headers=ADMIN)

        assert response.status == 400, query
        body = await response.json()
        assert (body["error"], body["parameter"]) == ("invalid_query", parameter)
        assert body["allowed"]
        assert response.headers["Cache-Control"] == "no-store"


async def test_stats_rows_and_totals_come_from_the_registry_mirror_and_offsets(
    served_worker: ServedWorker,
) -> None:
    world = served_worker
    alpha = world.onboard("alpha", name="Alpha Clinic", rate_per_s=10)
    world.onboard("beta", paused=True)
    world.onboard("gamma")  # no state published: it never sent
    world.publish_state("alpha", state_document(25.0, received=40))
    world.publish_state("beta", state_document(2.0, lane=1, received=3))
    names = world.app.topic_names
    world.set_offsets(
        Offsets(
            read_at=time.time(),
            ends={names.out("alpha"): 30, names.dlq("alpha"): 4, names.control: 2},
            lane_backlog={1: 6},
            shared_backlog=9,
        )
    )

    everyone = await world.client.get("/api/stats", headers=ADMIN)
    paused = await world.client.get("/api/stats?flag=paused", headers=ADMIN)
    own = await world.client.get("/api/tenants/alpha/stats", headers=bearer(alpha))
    not_admin = await world.client.get("/api/stats", headers=bearer(alpha))

    assert everyone.status == 200
    assert everyone.headers["Cache-Control"] == "no-store"
    body = await everyone.json()
    rows = {row["tenant"]: row for row in body["tenants"]}
    assert [row["tenant"] for row in body["tenants"]] == ["alpha", "beta", "gamma"]  # rate_1m
    assert (rows["alpha"]["events"], rows["alpha"]["dlq"], rows["alpha"]["processed"]) == (
        30,
        4,
        34,
    )
    assert rows["alpha"]["flags"] == ["noisy"]
    assert rows["alpha"]["backlog"] == {"messages": 9, "scope": "shared_lane"}
    assert rows["beta"]["flags"] == ["noisy", "paused"]  # in a dedicated lane by the router
    assert (rows["beta"]["lane"], rows["beta"]["backlog"]["messages"]) == ("dedicated", 6)
    assert rows["gamma"]["flags"] == ["silent"]
    totals = body["totals"]
    assert (totals["tenants"], totals["shared"], totals["dedicated"]) == (3, 2, 1)
    assert (totals["received"], totals["events"], totals["dlq"]) == (43, 30, 4)
    assert (totals["lane_moves"], totals["rate_10s"]) == (2, 27.0)
    assert totals["flags"] == {"noisy": 2, "paused": 1, "silent": 1, "erroring": 0}
    filtered = await paused.json()
    assert [row["tenant"] for row in filtered["tenants"]] == ["beta"]
    # Totals count every tenant, whatever the filter shows.
    assert (filtered["totals"]["tenants"], filtered["totals"]["received"]) == (3, 43)
    assert own.status == 200
    assert (await own.json())["received"] == 40
    assert not_admin.status == 403


async def test_the_dashboard_is_served_and_never_cached(served_worker: ServedWorker) -> None:
    page = await served_worker.client.get("/dashboard")
    script = await served_worker.client.get("/dashboard/dashboard.js")
    missing = await served_worker.client.get("/dashboard/secrets.txt")

    assert page.status == 200
    assert page.content_type == "text/html"
    assert "<html" in (await page.text()).lower()
    assert page.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert (script.status, script.content_type) == (200, "text/javascript")
    assert script.headers["Cache-Control"] == "no-store"
    assert missing.status == 404


async def test_metrics_are_prometheus_text_with_laneway_names(served_worker: ServedWorker) -> None:
    served_worker.onboard("alpha", paused=True)
    served_worker.onboard("beta")
    served_worker.publish_state("alpha", state_document(1.5, received=7))

    response = await served_worker.client.get("/metrics")

    assert response.status == 200
    assert response.content_type == "text/plain"
    text = await response.text()
    samples = prometheus_samples(text)
    assert samples["laneway_tenants", ()] == 2
    assert samples["laneway_tenants_flagged", (("flag", "paused"),)] == 1
    assert samples["laneway_messages_received_total", ()] == 7
    assert (
        samples["laneway_lane_rate_messages_per_second", (("lane", "shared"), ("window", "10s"))]
        == 1.5
    )
    assert ("laneway_mllp_connections_open", ()) in samples
    assert "alpha" not in text  # no tenant label (invariant 4)


async def test_the_lane_worker_serves_metrics_of_its_own(tmp_path: Path) -> None:
    app = build_lane_worker(no_broker_settings(tmp_path))
    app.dlq_reasons["invalid_message"] += 2  # as its processor counts what it parks

    async with TestClient(TestServer(await app.web.wsgi())) as client:
        response = await client.get("/metrics")
        text = await response.text()

    assert response.status == 200
    samples = prometheus_samples(text)
    assert samples["laneway_dlq_records_total", (("reason", "invalid_message"),)] == 2
    assert samples["laneway_kafka_up", ()] == 1  # what the watch says before its first probe
    assert ("laneway_tenants", ()) not in samples  # the shared workers report the tenants
    # Nothing assigned yet (no broker): no lane held, nothing of the drain budget.
    assert samples["laneway_lane_drain_rate_records_per_second", ()] == 0


async def test_fetch_by_ref_needs_the_tenants_token_and_a_well_formed_ref(
    served_worker: ServedWorker,
) -> None:
    alpha = served_worker.onboard("alpha")
    beta = served_worker.onboard("beta")
    partitions = served_worker.app.laneway.ingress_partitions
    client = served_worker.client

    anonymous = await client.get("/api/tenants/alpha/messages/0-1-0")
    other = await client.get("/api/tenants/alpha/messages/0-1-0", headers=bearer(beta))
    malformed = await client.get("/api/tenants/alpha/messages/0-1", headers=bearer(alpha))
    too_long = await client.get(
        "/api/tenants/alpha/messages/0-1234567890123456789-0", headers=bearer(alpha)
    )
    # A partition ingress does not have: answered like any missing message, before Kafka.
    nowhere = await client.get(
        f"/api/tenants/alpha/messages/{partitions}-1-0", headers=bearer(alpha)
    )

    assert anonymous.status == 401
    assert other.status == 403
    assert (malformed.status, (await malformed.json())["error"]) == (400, "invalid_ref")
    assert too_long.status == 400
    assert (nowhere.status, (await nowhere.json())["error"]) == (404, "unknown_message")


async def test_http_ingest_refuses_before_writing(served_worker: ServedWorker) -> None:
    alpha = served_worker.onboard("alpha")
    limit = served_worker.app.laneway.http_body_limit
    url = "/api/tenants/alpha/messages"
    client = served_worker.client

    anonymous = await client.post(url, data=b"MSH|^~\\&|", headers=HL7)
    admin = await client.post(url, data=b"MSH|^~\\&|", headers=ADMIN | HL7)
    empty = await client.post(url, data=b"", headers=bearer(alpha) | HL7)
    oversize = await client.post(url, data=b"x" * (limit + 1), headers=bearer(alpha) | HL7)
    not_hl7 = await client.post(
        url, data=b"{}", headers=bearer(alpha) | {"Content-Type": "application/json"}
    )

    assert anonymous.status == 401
    assert admin.status == 403  # ingest takes the tenant's own token
    assert empty.status == 422
    assert (await empty.json())["message"]
    assert oversize.status == 413
    assert (await oversize.json())["error"] == "body_too_large"
    assert not_hl7.status == 415


async def test_stats_rows_are_built_once_a_second_and_again_after_a_tenant_changes(
    served_worker: ServedWorker,
) -> None:
    world = served_worker
    world.onboard("alpha")
    now = time.time()

    first = world.stats.rows(now)
    again = world.stats.rows(now + 0.5)  # every request and scrape within the second
    later = world.stats.rows(now + 1.0)
    world.onboard("beta")
    changed = world.stats.rows(now + 1.1)

    assert again is first
    assert later is not first
    assert [row.tenant for row in changed] == ["alpha", "beta"]
    assert world.stats.row_json(changed[0]) is world.stats.row_json(changed[0])
