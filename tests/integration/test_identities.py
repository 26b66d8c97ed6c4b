"""Sender identities on the real worker: no identity of one tenant overlaps another's."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from streams.topics import TopicNames
from tests.harness import Api, Sender, WorkerProcess, connection, consume_until, message
from tests.harness.quiet_tenant import quiet_tenant

pytestmark = pytest.mark.integration


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def topics(worker_env: dict) -> TopicNames:
    return TopicNames(worker_env["LANEWAY_TOPIC_PREFIX"])


@pytest.fixture
async def offboard_after(api: Api) -> AsyncIterator[list[str]]:
    """Ids to DELETE after the test: wildcard identities left behind would refuse later tests'
    (an application-only identity overlaps every facility-only one)."""
    tenant_ids: list[str] = []
    yield tenant_ids
    for tenant_id in tenant_ids:
        await api.call("DELETE", f"/api/tenants/{tenant_id}", token=api.admin_token)


async def post_tenant(
    api: Api, offboard_after: list[str], tenant_id: str, senders: list[dict[str, Any]]
) -> tuple[int, Any]:
    offboard_after.append(tenant_id)
    body = {"id": tenant_id, "name": tenant_id, "senders": senders}
    return await api.call("POST", "/api/tenants", token=api.admin_token, json_body=body)


async def test_a_later_tenant_cannot_capture_an_earlier_ones_mllp_traffic(
    api: Api,
    worker: WorkerProcess,
    worker_env: dict,
    bootstrap: str,
    topics: TopicNames,
    offboard_after: list[str],
) -> None:
    application, facility = unique("APP").upper(), unique("FAC").upper()
    async with quiet_tenant(api, bootstrap, topics):
        earlier = await api.onboard(unique("earlier"), senders=[{"facility": facility}])
        offboard_after.append(earlier["id"])
        later_id = unique("later")
        status, answer = await post_tenant(
            api, offboard_after, later_id, [{"application": application}]
        )
        other = await api.onboard(
            unique("other"), senders=[{"application": unique("O"), "facility": unique("O")}]
        )
        patch_status, patch_answer = await api.call(
            "PATCH",
            f"/api/tenants/{other['id']}",
            token=api.admin_token,
            json_body={"senders": [{"application": application, "facility": facility}]},
        )
        async with connection(int(worker_env["LANEWAY_MLLP_PORT"])) as client:
            ack = await client.exchange(message(Sender(application, facility), "CAPTURE-1"))
        events = await consume_until(
            bootstrap, [topics.out(earlier["id"])], lambda got: len(got) >= 1, 30
        )

    assert status == 409, answer
    assert answer["error"] == "sender_taken"
    assert answer["senders"] == [
        {
            "application": application,
            "facility": "",
            "networks": [],
            "conflicts_with": {
                "tenant": earlier["id"],
                "application": "",
                "facility": facility,
                "networks": [],
            },
        }
    ]
    lookup_status, _ = await api.call("GET", f"/api/tenants/{later_id}", token=api.admin_token)
    assert lookup_status == 404
    assert patch_status == 409, patch_answer
    assert patch_answer["senders"][0]["conflicts_with"]["tenant"] == earlier["id"]
    assert ack.code == "AA"
    assert [json.loads(e.value)["control_id"] for e in events] == ["CAPTURE-1"], worker.log_tail()


async def test_identities_on_disjoint_networks_do_not_overlap(
    api: Api, offboard_after: list[str]
) -> None:
    application = unique("NET").upper()

    first, _ = await post_tenant(
        api,
        offboard_after,
        unique("ten"),
        [{"application": application, "networks": ["10.0.0.0/8"]}],
    )
    disjoint, _ = await post_tenant(
        api,
        offboard_after,
        unique("lan"),
        [{"application": application, "networks": ["192.168.0.0/16"]}],
    )
    overlapping, answer = await post_tenant(
        api, offboard_after, unique("sub"), [{"facility": "ANY", "networks": ["10.9.0.0/16"]}]
    )

    assert (first, disjoint, overlapping) == (201, 201, 409)
    assert answer["senders"][0]["conflicts_with"]["networks"] == ["10.0.0.0/8"]


async def test_concurrent_overlapping_onboardings_cannot_both_win(
    api: Api, bootstrap: str, topics: TopicNames, offboard_after: list[str]
) -> None:
    outcomes: list[list[int]] = []
    async with quiet_tenant(api, bootstrap, topics):
        for _ in range(5):
            application, facility = unique("RACE").upper(), unique("F").upper()
            pair = [{"application": application, "facility": facility}]
            answers = await asyncio.gather(
                post_tenant(api, offboard_after, unique("pair"), pair),
                post_tenant(api, offboard_after, unique("app"), [{"application": application}]),
            )
            outcomes.append(sorted(status for status, _ in answers))

    assert outcomes == [[201, 409]] * 5
