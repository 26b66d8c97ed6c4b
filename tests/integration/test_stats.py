"""Stats, dashboard and metrics on the real worker and broker (issue 5).

Every count is checked against the number of messages the test actually sent; all traffic is
synthetic.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client.parser import text_string_to_metric_families

from streams.hl7.synthetic import SyntheticFeed
from streams.mllp import Frame, MllpDecoder, frame
from streams.stats import current_rates
from streams.topics import TopicNames
from streams.volume import TenantVolume
from tests.harness import REPO, Api, WorkerProcess

pytestmark = pytest.mark.integration

COUNT_DEADLINE_S = 30.0
POLL_S = 0.2
# The dashboard's refresh period: two workers must agree within it.
REFRESH_INTERVAL_S = 2.0
NOT_HL7 = b"this is not an HL7 message"

T = TypeVar("T")


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


async def get(base_url: str, path: str, token: str | None = None) -> Answer:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(base_url + path, headers=headers, allow_redirects=False) as response,
    ):
        return Answer(response.status, dict(response.headers), await response.read())


async def poll(probe: Callable[[], Awaitable[T | None]], timeout_s: float) -> T | None:
    """`probe()` until it returns something other than None, or None at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await probe()
        if result is not None or time.monotonic() >= deadline:
            return result
        await asyncio.sleep(POLL_S)


def synthetic(seed: int) -> SyntheticFeed:
    return SyntheticFeed(seed=seed, escape_rate=0)


async def test_stats_access_matrix_every_token(api: Api) -> None:
    alice = await api.onboard(unique("alice"))
    bob = await api.onboard(unique("bob"))
    tokens = {
        "none": None,
        "wrong": "lw_" + "x" * 43,
        "alice": alice["token"],
        "bob": bob["token"],
        "admin": api.admin_token,
    }
    everyone = dict.fromkeys(tokens, 200)
    nobody = dict.fromkeys(tokens, 404)
    matrix: dict[str, dict[str, int]] = {
        f"/api/tenants/{bob['id']}/stats": {
            "none": 401,
            "wrong": 401,
            "alice": 403,
            "bob": 200,
            "admin": 200,
        },
        "/api/tenants/no-such-tenant/stats": {
            "none": 401,
            "wrong": 401,
            "alice": 403,
            "bob": 403,
            "admin": 404,
        },
        "/api/stats": {"none": 401, "wrong": 401, "alice": 403, "bob": 403, "admin": 200},
        "/dashboard": everyone,  # the page holds no data: its data call is /api/stats
        "/dashboard/dashboard.js": everyone,
        "/dashboard/no-such-file.js": nobody,
        # Faust's own views would show every tenant's tables and topics: they are off.
        "/table/": nobody,
        "/table/anything/": nobody,
        "/stats/": nobody,
    }

    answers = {
        (path, kind): await get(api.base_url, path, tokens[kind])
        for path, expected in matrix.items()
        for kind in expected
    }

    statuses = {key: answer.status for key, answer in answers.items()}
    assert statuses == {
        (path, kind): status
        for path, expected in matrix.items()
        for kind, status in expected.items()
    }
    # Nothing a stats or dashboard answer carries may be kept by a cache, errors included.
    cacheable = {
        key
        for key, answer in answers.items()
        if key[0].startswith(("/api/", "/dashboard"))
        and answer.headers.get("Cache-Control") != "no-store"
    }
    assert cacheable == set()
    own = answers[(f"/api/tenants/{bob['id']}/stats", "bob")].json()
    assert own["tenant"] == bob["id"]
    assert alice["id"] not in answers[(f"/api/tenants/{bob['id']}/stats", "bob")].body.decode()


async def test_counts_rates_and_flags_follow_real_traffic(
    api: Api, worker: WorkerProcess, worker_env: dict, producer: AIOKafkaProducer
) -> None:
    topics = TopicNames(worker_env["LANEWAY_TOPIC_PREFIX"])
    run = unique("flags")
    steady = await api.onboard(f"{run}-steady")
    quiet = await api.onboard(f"{run}-quiet")
    paused = await api.onboard(f"{run}-paused")
    status, _ = await api.call("POST", f"/api/tenants/{paused['id']}/pause", token=api.admin_token)
    assert status == 200
    feed = synthetic(11)
    good = 5
    for _ in range(good):
        status, answer = await api.send(steady["id"], steady["token"], feed.next_message())
        assert status == 202, answer
    # Unparseable bytes written to ingress by another producer end in the tenant's DLQ.
    await producer.send_and_wait(topics.ingress, NOT_HL7, key=steady["id"].encode())

    seen: list[dict[str, Any]] = []

    async def settled() -> dict[str, Any] | None:
        answer = await get(api.base_url, f"/api/tenants/{steady['id']}/stats", steady["token"])
        seen.append(answer.json())
        done = seen[-1]["received"] == good + 1 and seen[-1]["processed"] == good + 1
        return seen[-1] if done and "erroring" in seen[-1]["flags"] else None

    stats = await poll(settled, COUNT_DEADLINE_S)

    assert stats is not None, repr(seen[-1])
    assert (stats["events"], stats["dlq"]) == (good, 1)
    assert stats["flags"] == ["erroring"]
    assert stats["rates"]["rate_1m"] > 0
    assert stats["last_message_at"] is not None
    assert (stats["lane"], stats["lane_index"], stats["paused"]) == ("shared", None, False)
    assert stats["backlog"]["scope"] == "shared_lane"
    assert isinstance(stats["backlog"]["messages"], int)
    assert "backlog" in stats["notes"]

    async def drained() -> int | None:
        answer = await get(api.base_url, f"/api/tenants/{steady['id']}/stats", steady["token"])
        backlog = answer.json()["backlog"]["messages"]
        return backlog if backlog == 0 else None

    # Everything sent is processed: nothing is left to route or process (earlier tests' traffic
    # drains too), rather than the session's whole ingress.
    assert await poll(drained, COUNT_DEADLINE_S) is not None, seen[-1]["backlog"]
    quiet_stats = (
        await get(api.base_url, f"/api/tenants/{quiet['id']}/stats", quiet["token"])
    ).json()
    assert (quiet_stats["received"], quiet_stats["processed"]) == (0, 0)
    assert quiet_stats["flags"] == ["silent"]
    assert quiet_stats["last_message_at"] is None

    async def ids(query: str) -> list[str]:
        answer = await get(api.base_url, f"/api/stats?q={run}&{query}", api.admin_token)
        assert answer.status == 200, answer.body
        return [row["tenant"] for row in answer.json()["tenants"]]

    assert await ids("flag=paused") == [paused["id"]]
    assert await ids("flag=erroring") == [steady["id"]]
    assert await ids("flag=silent,paused") == [paused["id"]]
    assert await ids("lane=dedicated") == []
    assert await ids("lane=shared&sort=received&order=desc") == [
        steady["id"],
        paused["id"],
        quiet["id"],
    ]
    assert await ids("sort=tenant&limit=2") == [paused["id"], quiet["id"]]
    everything = (await get(api.base_url, "/api/stats", api.admin_token)).json()
    rows = everything["tenants"]
    assert everything["matched"] == len(rows) == everything["totals"]["tenants"]
    assert everything["totals"]["received"] == sum(row["received"] for row in rows)
    rates = [row["rates"]["rate_1m"] for row in rows]
    assert rates == sorted(rates, reverse=True)  # the default sort: the busiest first
    for bad_query in ("sort=loudness", "order=up", "flag=loud", "lane=fast", "limit=0"):
        answer = await get(api.base_url, f"/api/stats?{bad_query}", api.admin_token)
        assert (answer.status, answer.json()["error"]) == (400, "invalid_query"), bad_query


def tenant_ids_covering(partitions: int, prefix: str) -> list[str]:
    """One tenant id per ingress partition, so that every worker's router owns some of them."""
    partitioner = DefaultPartitioner()
    chosen: dict[int, str] = {}
    for index in range(1000):
        tenant_id = f"{prefix}-{index}"
        chosen.setdefault(
            partitioner(tenant_id.encode(), list(range(partitions)), list(range(partitions))),
            tenant_id,
        )
        if len(chosen) == partitions:
            break
    return [chosen[partition] for partition in sorted(chosen)]


async def test_every_worker_answers_the_same_counts(
    api: Api,
    worker: WorkerProcess,
    second_worker: WorkerProcess,
    worker_env: dict,
) -> None:
    bases = [api.base_url, f"http://127.0.0.1:{second_worker.env['LANEWAY_WEB_PORT']}"]
    partitions = int(worker_env["LANEWAY_INGRESS_PARTITIONS"])
    tenants = [await api.onboard(tid) for tid in tenant_ids_covering(partitions, unique("both"))]

    async def known_everywhere() -> bool | None:
        answers = [
            await get(base, f"/api/tenants/{tenant['id']}", api.admin_token)
            for base in bases
            for tenant in tenants
        ]
        return True if all(answer.status == 200 for answer in answers) else None

    assert await poll(known_everywhere, 10)
    feed = synthetic(12)
    sent = {tenant["id"]: 0 for tenant in tenants}
    async with Api(bases[1], api.admin_token) as second_api:
        for index, tenant in enumerate(tenants):
            for message_number in range(3 + index):
                via = api if message_number % 2 else second_api  # ingest through both workers
                status, answer = await via.send(tenant["id"], tenant["token"], feed.next_message())
                assert status == 202, answer
                sent[tenant["id"]] += 1
    prefix = tenants[0]["id"].rsplit("-", 1)[0]

    async def counts(base: str) -> dict[str, tuple[int, int, int]]:
        answer = await get(base, f"/api/stats?q={prefix}&sort=tenant", api.admin_token)
        return {
            row["tenant"]: (row["received"], row["processed"], row["dlq"])
            for row in answer.json()["tenants"]
        }

    expected = {tenant_id: (count, count, 0) for tenant_id, count in sent.items()}
    correct_since: dict[str, float] = {}
    last_seen: dict[str, dict[str, tuple[int, int, int]]] = {}
    deadline = time.monotonic() + COUNT_DEADLINE_S
    while len(correct_since) < len(bases) and time.monotonic() < deadline:
        for base in bases:
            if base not in correct_since:
                last_seen[base] = await counts(base)
                if last_seen[base] == expected:
                    correct_since[base] = time.monotonic()
        await asyncio.sleep(POLL_S)

    assert set(correct_since) == set(bases), (expected, last_seen, second_worker.log_tail())
    first, second = correct_since.values()
    assert abs(first - second) <= REFRESH_INTERVAL_S, first - second
    for tenant in tenants:  # the per-tenant endpoint agrees too, on both workers
        own = [
            await get(base, f"/api/tenants/{tenant['id']}/stats", tenant["token"]) for base in bases
        ]
        assert {(a.json()["received"], a.json()["processed"]) for a in own} == {
            expected[tenant["id"]][:2]
        }


async def mllp_exchange(port: int, payload: bytes) -> bytes:
    """Send one framed message and return the ACK's bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(frame(payload))
        await writer.drain()
        decoder = MllpDecoder(1024 * 1024)
        async with asyncio.timeout(15):
            while True:
                for event in decoder.feed(await reader.read(65536)):
                    if isinstance(event, Frame):
                        return event.payload
    finally:
        writer.close()


def scrape(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Metric family name -> {sorted labels: value}."""
    families: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            families.setdefault(sample.name, {})[labels] = sample.value
    return families


async def test_metrics_count_mllp_acks_without_naming_tenants(
    api: Api, worker: WorkerProcess, worker_env: dict
) -> None:
    sender = {"application": "STATSAPP", "facility": unique("STATSFAC").upper()}
    tenant = await api.onboard(unique("metered"), senders=[sender])
    before = scrape((await get(api.base_url, "/metrics")).body.decode())
    feed = SyntheticFeed(
        seed=13,
        sending_application=sender["application"],
        sending_facility=sender["facility"],
        escape_rate=0,
    )

    ack = await mllp_exchange(int(worker_env["LANEWAY_MLLP_PORT"]), feed.next_message())
    answer = await get(api.base_url, "/metrics")

    assert b"MSA|AA|" in ack
    assert answer.status == 200
    text = answer.body.decode()
    after = scrape(text)
    aa = (("code", "AA"),)
    assert (
        after["laneway_mllp_acks_total"][aa]
        == before.get("laneway_mllp_acks_total", {}).get(aa, 0) + 1
    )
    assert after["laneway_mllp_frames_total"][()] >= before["laneway_mllp_frames_total"][()] + 1
    assert after["laneway_tenants"][()] >= 1
    assert "faust_messages_received_total" in after  # Faust's own sensor, same registry
    assert tenant["id"] not in text  # unauthenticated: no tenant names, bounded cardinality
    lanes = {dict(labels)["lane"] for labels in after["laneway_lane_tenants"]}
    assert lanes == {"shared", *(str(lane) for lane in range(4))}
    documented = (REPO / "docs" / "metrics.md").read_text()
    families = {family.name for family in text_string_to_metric_families(text)}
    undocumented = {name for name in families if f"`{name}" not in documented}
    assert undocumented == set()


async def test_metrics_count_ingest_refusals_by_path_and_reason(
    api: Api, worker: WorkerProcess, worker_env: dict
) -> None:
    tenant = await api.onboard(unique("refused"))
    status, _ = await api.call("POST", f"/api/tenants/{tenant['id']}/pause", token=api.admin_token)
    assert status == 200
    before = scrape((await get(api.base_url, "/metrics")).body.decode())
    feed = SyntheticFeed(seed=17, sending_facility=unique("NOBODY").upper(), escape_rate=0)

    status, _ = await api.send(tenant["id"], tenant["token"], feed.next_message())
    ack = await mllp_exchange(int(worker_env["LANEWAY_MLLP_PORT"]), feed.next_message())
    after = scrape((await get(api.base_url, "/metrics")).body.decode())

    assert status == 503
    assert b"MSA|AR|" in ack
    refused = "laneway_ingest_refused_total"
    for path, reason in (("http", "tenant_paused"), ("mllp", "unknown_sender")):
        labels = (("path", path), ("reason", reason))
        assert after[refused][labels] == before.get(refused, {}).get(labels, 0) + 1


def test_a_stale_state_document_fades_short_windows_and_keeps_long_ones() -> None:
    volume = TenantVolume()
    stopped_at = 1_000_000.0
    for second in range(120):  # 1 msg/s for two minutes, then nothing
        volume.record(stopped_at - 119 + second, 1, 100)
    document = {
        "rates": volume.rates(stopped_at).as_dict(),
        "volume": volume.to_state(),
        "updated_at": stopped_at,
    }

    published = document["rates"]

    fresh = current_rates(document, stopped_at + 1)
    halfway = current_rates(document, stopped_at + 5)
    later = current_rates(document, stopped_at + 90)

    assert published["rate_10s"] > 0.9
    assert fresh["rate_10s"] == published["rate_10s"]
    assert halfway["rate_10s"] == pytest.approx(published["rate_10s"] * 0.5)
    assert halfway["rate_1m"] == pytest.approx(published["rate_1m"] * (1 - 5 / 60))
    assert (later["rate_10s"], later["rate_1m"]) == (0.0, 0.0)
    # The long windows come from the minute buckets: exactly what a live volume would say.
    assert later["rate_5m"] == pytest.approx(volume.rates(stopped_at + 90).rate_5m)
    assert later["rate_1h"] == pytest.approx(volume.rates(stopped_at + 90).rate_1h)
    assert current_rates(None, stopped_at)["rate_1h"] == 0.0
