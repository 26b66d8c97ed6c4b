"""What downstream consumers use, on the real broker and worker: the on-demand fetch of
originals by `ref`, per-tenant event shapes, the `consume` command and the documented example
consumer (docs/examples/dedupe_consumer.py)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from streams.hl7.synthetic import SyntheticFeed, batch
from streams.masking import THIN_KEYS
from streams.processing import guess_control_id
from streams.topics import TopicNames
from tests.harness import FAUST, REPO, Api, WorkerProcess, consume_until, own_worker_env

pytestmark = pytest.mark.integration

EVENT_WAIT_S = 60.0


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def messages(count: int, prefix: str) -> list[bytes]:
    return SyntheticFeed(seed=len(prefix), control_id_prefix=prefix, escape_rate=0).messages(count)


async def records_of(bootstrap: str, topic: str, count: int) -> list[Any]:
    records = await consume_until(bootstrap, [topic], lambda got: len(got) >= count, EVENT_WAIT_S)
    assert len(records) == count, f"expected {count} records on {topic}, got {len(records)}"
    return records


async def events_of(bootstrap: str, topic: str, count: int) -> list[dict[str, Any]]:
    return [json.loads(record.value) for record in await records_of(bootstrap, topic, count)]


class Fetcher:
    """GET /api/tenants/{tenant}/messages/{ref}: (status, content type, raw body)."""

    def __init__(self, session: aiohttp.ClientSession, port: str) -> None:
        self.session = session
        self.base_url = f"http://127.0.0.1:{port}"

    async def get(self, tenant: str, ref: str, token: str | None) -> tuple[int, str, bytes]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        url = f"{self.base_url}/api/tenants/{tenant}/messages/{ref}"
        async with self.session.get(url, headers=headers) as response:
            return response.status, response.content_type, await response.read()


@pytest.fixture
async def fetcher(worker: WorkerProcess) -> AsyncIterator[Fetcher]:
    async with aiohttp.ClientSession() as session:
        yield Fetcher(session, worker.env["LANEWAY_WEB_PORT"])


@pytest.fixture
def topics(worker_env: dict) -> TopicNames:
    return TopicNames(worker_env["LANEWAY_TOPIC_PREFIX"])


async def send(producer: AIOKafkaProducer, topics: TopicNames, tenant: str, value: bytes) -> None:
    await producer.send_and_wait(topics.ingress, value, key=tenant.encode())


# ---------------------------------------------------------------------------- on-demand fetch


async def test_fetch_returns_the_exact_original_of_single_and_batched_messages(
    api: Api, fetcher: Fetcher, topics: TopicNames, producer: AIOKafkaProducer, bootstrap: str
) -> None:
    tenant = await api.onboard(unique("fetch"))
    single_lf, *batched = messages(4, "FETCH-")
    # CRLF line ends: a single-message record comes back byte for byte, not normalized.
    single = single_lf.replace(b"\r", b"\r\n")
    await send(producer, topics, tenant["id"], single)
    await send(producer, topics, tenant["id"], batch(batched))

    events = await events_of(bootstrap, topics.out(tenant["id"]), 4)

    originals = [single, *batched]
    assert [event["control_id"] for event in events] == [guess_control_id(m) for m in originals]
    for event, original in zip(events, originals, strict=True):
        status, content_type, body = await fetcher.get(tenant["id"], event["ref"], tenant["token"])
        assert (status, content_type) == (200, "application/hl7-v2")
        assert body == original
    assert [event["ref"].rsplit("-", 1)[1] for event in events] == ["0", "0", "1", "2"]


async def test_thin_and_masked_tenants_get_shaped_events_and_still_fetch_originals(
    api: Api, fetcher: Fetcher, topics: TopicNames, producer: AIOKafkaProducer, bootstrap: str
) -> None:
    thin = await api.onboard(unique("thin"), output={"mode": "thin"})
    masked = await api.onboard(
        unique("masked"),
        output={"mask": ["patient_name", "identifiers", "phone"], "mask_method": "drop"},
    )
    thin_message, masked_message = messages(2, "SHAPE-")
    await send(producer, topics, thin["id"], thin_message)
    await send(producer, topics, masked["id"], masked_message)

    (thin_event,) = await events_of(bootstrap, topics.out(thin["id"]), 1)
    (masked_event,) = await events_of(bootstrap, topics.out(masked["id"]), 1)

    assert set(thin_event) == {*THIN_KEYS, "mode"}
    assert thin_event["mode"] == "thin"
    patient = masked_event["patient"]
    assert (patient["name"], patient["identifiers"], patient["phone"]) == (None, None, None)
    assert patient["birth_date"]  # not masked
    status, _, body = await fetcher.get(thin["id"], thin_event["ref"], thin["token"])
    assert (status, body) == (200, thin_message)


async def test_a_ref_to_another_tenants_record_answers_like_a_missing_one(
    api: Api, fetcher: Fetcher, topics: TopicNames, producer: AIOKafkaProducer, bootstrap: str
) -> None:
    owner = await api.onboard(unique("owner"))
    prober = await api.onboard(unique("prober"))
    await send(producer, topics, owner["id"], messages(1, "OWN-")[0])
    (event,) = await events_of(bootstrap, topics.out(owner["id"]), 1)
    partition = event["ref"].split("-")[0]

    foreign = await fetcher.get(prober["id"], event["ref"], prober["token"])
    foreign_as_admin = await fetcher.get(prober["id"], event["ref"], api.admin_token)
    beyond_end = await fetcher.get(prober["id"], f"{partition}-999999999999-0", prober["token"])
    no_such_partition = await fetcher.get(prober["id"], "9999-0-0", prober["token"])
    no_such_index = await fetcher.get(owner["id"], event["ref"][:-1] + "7", owner["token"])

    assert foreign[0] == 404
    assert foreign == foreign_as_admin == beyond_end == no_such_partition == no_such_index
    assert json.loads(foreign[2])["error"] == "unknown_message"


@pytest.mark.parametrize(
    "ref", ["abc", "1-2", "1-2-3-4", "-1-2-3", "1--2-3", "1-2-x", "1234567890-0-0", "1-2-3 "]
)
async def test_a_malformed_ref_is_400_after_authentication(
    api: Api, fetcher: Fetcher, ref: str
) -> None:
    tenant = await api.onboard(unique("badref"))

    status, _, body = await fetcher.get(tenant["id"], ref, tenant["token"])
    unauthenticated, _, _ = await fetcher.get(tenant["id"], ref, None)

    assert status == 400
    assert json.loads(body)["error"] == "invalid_ref"
    assert unauthenticated == 401


async def test_only_the_tenants_own_token_or_the_admin_token_may_fetch(
    api: Api, fetcher: Fetcher, topics: TopicNames, producer: AIOKafkaProducer, bootstrap: str
) -> None:
    tenant = await api.onboard(unique("authz"))
    other = await api.onboard(unique("other"))
    original = messages(1, "AUTHZ-")[0]
    await send(producer, topics, tenant["id"], original)
    (event,) = await events_of(bootstrap, topics.out(tenant["id"]), 1)

    async def status_with(token: str | None) -> int:
        status, _, body = await fetcher.get(tenant["id"], event["ref"], token)
        assert status != 200 or body == original
        return status

    assert await status_with(None) == 401
    assert await status_with("lw_not-a-real-token") == 401
    assert await status_with(other["token"]) == 403
    assert await status_with(api.admin_token) == 200
    assert await status_with(tenant["token"]) == 200


async def test_a_record_aged_out_of_retention_is_410_gone(
    worker_env: dict,
    admin_token: str,
    producer: AIOKafkaProducer,
    admin: AIOKafkaAdminClient,
    bootstrap: str,
    tmp_path: Path,
) -> None:
    # A worker with topics of its own: deleting ingress records cannot touch other tests' data.
    env = own_worker_env(
        worker_env,
        "fetch",
        tmp_path / "data",
        ingress_partitions="1",
        lanes_enabled="false",
    )
    topics = TopicNames(env["LANEWAY_TOPIC_PREFIX"])
    own_worker = WorkerProcess(env, tmp_path / "worker.log")
    own_worker.start()
    try:
        async with (
            Api.of(own_worker) as own_api,
            aiohttp.ClientSession() as session,
        ):
            tenant = await own_api.onboard(unique("aged"))
            for message in messages(3, "AGED-"):
                await send(producer, topics, tenant["id"], message)
            events = await events_of(bootstrap, topics.out(tenant["id"]), 3)
            kept = events[2]["source"]["offset"]
            await admin.delete_records(
                {TopicPartition(topics.ingress, 0): RecordsToDelete(before_offset=kept)}
            )
            fetcher = Fetcher(session, env["LANEWAY_WEB_PORT"])

            gone = await fetcher.get(tenant["id"], events[0]["ref"], tenant["token"])
            still_there = await fetcher.get(tenant["id"], events[2]["ref"], tenant["token"])
    finally:
        own_worker.stop()

    status, content_type, body = gone
    assert (status, content_type) == (410, "application/json"), own_worker.log_tail()
    assert json.loads(body) == {
        "error": "gone",
        "message": "the message is older than Kafka's retention and can no longer be fetched",
        "ref": events[0]["ref"],
    }
    assert still_there[0] == 200


# ---------------------------------------------------------------------------- consume command


async def run_consume(worker_env: dict, *args: str) -> list[dict[str, Any]]:
    """`faust -A agents.worker consume ARGS` to completion: its JSON lines."""
    process = await asyncio.create_subprocess_exec(
        str(FAUST),
        "-A",
        "agents.worker",
        "consume",
        *args,
        cwd=REPO,
        env={**os.environ, **worker_env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode(errors="replace")
    return [json.loads(line) for line in stdout.splitlines()]


async def test_consume_prints_a_tenants_events_or_dlq_records_and_stops_at_the_end(
    api: Api, worker_env: dict, topics: TopicNames, producer: AIOKafkaProducer, bootstrap: str
) -> None:
    tenant = await api.onboard(unique("consume"))
    sent = messages(3, "CONSUME-")
    for message in [*sent, b"MSH|^~\\&|NOT-ENOUGH"]:
        await send(producer, topics, tenant["id"], message)
    await records_of(bootstrap, topics.out(tenant["id"]), 3)
    await records_of(bootstrap, topics.dlq(tenant["id"]), 1)

    everything = await run_consume(worker_env, "--tenant", tenant["id"], "--from-beginning")
    rejects = await run_consume(worker_env, "--tenant", tenant["id"], "--from-beginning", "--dlq")
    only_new = await run_consume(worker_env, "--tenant", tenant["id"])

    assert [event["control_id"] for event in everything] == [guess_control_id(m) for m in sent]
    assert [reject["reason"] for reject in rejects] == ["missing_msh_9"]
    assert only_new == []


async def test_consume_follow_keeps_printing_new_events(
    api: Api, worker_env: dict, topics: TopicNames, producer: AIOKafkaProducer, bootstrap: str
) -> None:
    tenant = await api.onboard(unique("follow"))
    first, second = messages(2, "FOLLOW-")
    await send(producer, topics, tenant["id"], first)
    await records_of(bootstrap, topics.out(tenant["id"]), 1)
    process = await asyncio.create_subprocess_exec(
        *(str(FAUST), "-A", "agents.worker", "consume", "--tenant", tenant["id"]),
        *("--from-beginning", "--follow"),
        cwd=REPO,
        env={**os.environ, **worker_env},
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        line_one = await asyncio.wait_for(process.stdout.readline(), EVENT_WAIT_S)
        await send(producer, topics, tenant["id"], second)
        line_two = await asyncio.wait_for(process.stdout.readline(), EVENT_WAIT_S)
        assert process.returncode is None  # still following
    finally:
        process.terminate()
        await process.wait()

    assert json.loads(line_one)["control_id"] == guess_control_id(first)
    assert json.loads(line_two)["control_id"] == guess_control_id(second)


async def test_consume_of_a_tenant_without_records_waits_for_its_topic_when_following(
    api: Api, worker_env: dict, topics: TopicNames, producer: AIOKafkaProducer
) -> None:
    tenant = await api.onboard(unique("unsent"))  # no topic yet: it comes with the first event
    assert await run_consume(worker_env, "--tenant", tenant["id"], "--from-beginning") == []
    process = await asyncio.create_subprocess_exec(
        *(str(FAUST), "-A", "agents.worker", "consume", "--tenant", tenant["id"], "--follow"),
        cwd=REPO,
        env={**os.environ, **worker_env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        notice = b""
        while b"no records yet" not in notice:  # the faust CLI may log before it
            notice = await asyncio.wait_for(process.stderr.readline(), 60)
            assert notice, "consume ended without the notice"
        [first] = messages(1, "FIRST-")
        await send(producer, topics, tenant["id"], first)
        line = await asyncio.wait_for(process.stdout.readline(), EVENT_WAIT_S)
    finally:
        process.terminate()
        await process.wait()

    assert json.loads(line)["control_id"] == guess_control_id(first)


# ---------------------------------------------------------------------------- example consumer


def load_example() -> ModuleType:
    path = REPO / "docs" / "examples" / "dedupe_consumer.py"
    spec = importlib.util.spec_from_file_location("dedupe_consumer", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_documented_consumer_handles_each_event_once_in_order(
    api: Api, worker_env: dict, topics: TopicNames, producer: AIOKafkaProducer, bootstrap: str
) -> None:
    example = load_example()
    tenant = await api.onboard(unique("dedupe"))
    sent = messages(20, "DEDUPE-")
    for message in sent:
        await send(producer, topics, tenant["id"], message)
    events = await records_of(bootstrap, topics.out(tenant["id"]), len(sent))
    # A redelivery after a crash, as Laneway would write it: same values and headers again.
    for record in events[5:15]:
        await producer.send_and_wait(
            record.topic, record.value, key=record.key, headers=list(record.headers)
        )
    total = len(sent) + 10

    handled: list[dict[str, Any]] = []

    async def handle(event: dict[str, Any]) -> None:
        handled.append(event)

    group = unique("example-group")
    consumer = example.events_consumer(
        bootstrap, tenant["id"], group, worker_env["LANEWAY_TOPIC_PREFIX"]
    )
    await consumer.start()
    partition = TopicPartition(topics.out(tenant["id"]), 0)
    task = asyncio.create_task(example.consume(consumer, handle, example.RecentKeys()))
    try:
        deadline = asyncio.get_running_loop().time() + EVENT_WAIT_S
        while await consumer.committed(partition) != total:
            assert asyncio.get_running_loop().time() < deadline, "the example never caught up"
            assert not task.done(), task.exception()
            await asyncio.sleep(0.1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await consumer.stop()

    assert [event["control_id"] for event in handled] == [guess_control_id(m) for m in sent]
