"""No mirroring, proved (docs/architecture.md §1 and invariant 5) on the real process topology.

Over 10,000 messages carrying PHI markers unique to this run (names, MRNs, SSNs, phones,
addresses, visit and order numbers, free text, NTE and Z segments) go through a shared worker
and a lane worker of their own (own topics and data dir), by direct ingress writes, HTTP and
MLLP, with tenants in both lanes, full, thin and masked. Then no marker, raw or base64, may
appear in:

- the workers' data dirs: every file's bytes, and every key and value of each RocksDB in them
  (read through RocksDB, since its files may be compressed);
- the workers' logs;
- every GET view either worker serves, for every tenant, with the admin token; the set of views
  is read from the apps themselves, so a view added later is scanned too. Only the on-demand
  fetch is exempt: it serves originals from Kafka by design;
- every topic except the ones that carry messages by design (ingress, lanes, out, DLQ): the
  tenants and tenant-state topics, the control log and Faust's internal topics.

Positive controls prove the scan can fail: markers are found in a full tenant's events (raw)
and in its DLQ records (base64), and a marker planted in a RocksDB is found through it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import string
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faust.web import View
from rocksdict import AccessType, Options, Rdict

from agents.lane_worker import build_lane_worker
from agents.web.dashboard import ASSETS
from agents.worker import build_worker
from streams.settings import Settings
from streams.topics import TopicNames
from tests.harness import Api, WorkerProcess, consume_until, own_worker_env

pytestmark = pytest.mark.integration

PER_TENANT = 2000  # x 5 tenants, plus HTTP, MLLP and malformed messages for one of them
HTTP_BODIES, PER_BODY = 20, 25
MLLP_MESSAGES = 300
MALFORMED = 100
FIRST_ROUND = 200  # sent before the rest, so the lane moves happen while traffic flows
TRICKLE, TRICKLE_EVERY_S = 20, 0.2
ALL_MASKS = ["patient_name", "address", "phone", "ssn", "birth_date", "free_text", "identifiers"]
# The fetch view returns originals from Kafka on purpose; every other GET view is scanned.
EXEMPT_VIEWS = {"/api/tenants/{tenant_id}/messages/{ref}"}
MLLP_START, MLLP_END = b"\x0b", b"\x1c\r"


def marker_patterns(token: bytes) -> dict[str, bytes]:
    """The token raw, and its base64 in each of the three alignments a byte offset can give."""
    patterns = {"raw": token}
    for shift in range(3):
        encoded = base64.b64encode(bytes(shift) + token)
        # Drop the characters that also depend on the padding or on what follows the token.
        start = 4 if shift else 0
        end = len(encoded) - (4 if (shift + len(token)) % 3 else 0)
        patterns[f"base64/{shift}"] = encoded[start:end]
    return patterns


@dataclass
class Scan:
    patterns: dict[str, bytes]
    findings: list[str] = field(default_factory=list)

    def check(self, where: str, data: bytes) -> None:
        for encoding, pattern in self.patterns.items():
            if pattern in data:
                self.findings.append(f"{where} ({encoding})")


def found(patterns: dict[str, bytes], data: bytes) -> set[str]:
    return {encoding for encoding, pattern in patterns.items() if pattern in data}


def phi_message(sender: tuple[str, str], control_id: str, token: str, i: int, oru: bool) -> bytes:
    """A synthetic message with the run's marker in every PHI field (never in MSH)."""
    mark = f"{token}{i}"
    message_type = "ORU^R01^ORU_R01" if oru else "ADT^A01^ADT_A01"
    segments = [
        f"MSH|^~\\&|{sender[0]}|{sender[1]}|LANEWAY|HUB|20240102030405||{message_type}|"
        f"{control_id}|P|2.5",
        f"PID|1||MRN{mark}^^^SIMHOSP^MR~SSN{mark}^^^USSSA^SS||FAM{mark}^GIV{mark}^M||"
        f"19800101|F|||{i} STREET{mark}^^CITY{mark}^ZZ^00001||555{mark}||||||SSN{mark}",
        "|".join(["PV1", "1", "I", "ICU^101^A^SIMHOSP", *[""] * 15, f"VN{mark}"]),
    ]
    if oru:
        segments += [
            f"ORC|RE|PLC{mark}",
            f"OBR|1|PLC{mark}|FIL{mark}|CBC^BLOOD COUNT^L|||20240102030405",
            f"OBX|1|TX|NOTE^NOTE^L||NOTE{mark}~MORE{mark}||||||F",
            "OBX|2|NM|GLU^GLUCOSE^LN||98.6|mg/dL|70-110|N|||F",
        ]
    segments += [f"NTE|1|L|COMMENT{mark}", f"ZPI|1|Z{mark}"]
    return ("\r".join(segments) + "\r").encode()


@dataclass
class Tenant:
    id: str
    token: str
    sent: int = 0


def onboarding(sender: tuple[str, str]) -> dict[str, dict[str, Any]]:
    """The run's tenants by role: full or thin or masked, in the shared or a dedicated lane."""
    shared, dedicated = {"pinned": "shared"}, {"pinned": "dedicated"}
    identity = {"application": sender[0], "facility": sender[1]}
    return {
        "full": {"lane": shared, "senders": [identity], "rate_per_s": 10_000, "burst": 10_000},
        "pinned": {"lane": dedicated},
        "thin": {"lane": dedicated, "output": {"mode": "thin"}},
        "hash": {"lane": shared, "output": {"mask": ALL_MASKS, "mask_method": "hash"}},
        # A contract of 1 msg/s: its traffic alone promotes it to a dedicated lane.
        "auto": {"rate_per_s": 1, "burst": 1, "output": {"mask": ALL_MASKS, "mask_method": "drop"}},
    }


def worker_processes(
    worker_env: dict, admin_token: str, base: Path
) -> tuple[dict[str, str], WorkerProcess, WorkerProcess]:
    env = own_worker_env(
        worker_env,
        "nomirror",
        base / "data",
        admin_token=admin_token,
        mask_secret=secrets.token_hex(16),
        hold_down_s="600",  # the promoted tenant stays put while the bulk flows
    )
    lane = WorkerProcess.lane(env, base / "lane-worker.log")
    shared = WorkerProcess(env, base / "worker.log")
    return env, shared, lane


async def mllp_exchange(port: int, payloads: list[bytes]) -> list[bytes]:
    """Send each message and wait for its ACK; the ACKs, in order."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    acks = []
    try:
        for payload in payloads:
            writer.write(MLLP_START + payload + MLLP_END)
            await writer.drain()
            frame = await asyncio.wait_for(reader.readuntil(MLLP_END), 10)
            acks.append(frame.strip(MLLP_START + MLLP_END))
    finally:
        writer.close()
        await writer.wait_closed()
    return acks


async def read_topic(
    bootstrap: str, admin: AIOKafkaAdminClient, topic: str
) -> list[ConsumerRecord]:
    """Every record of `topic`, all partitions, from the beginning to the current end."""
    (description,) = await admin.describe_topics([topic])
    partitions = [TopicPartition(topic, p["partition"]) for p in description["partitions"]]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[ConsumerRecord] = []
        for tp in partitions:
            while await consumer.position(tp) < ends[tp]:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                records.extend(r for r in batch.get(tp, []) if r.offset < ends[tp])
        return records
    finally:
        await consumer.stop()


def record_bytes(record: ConsumerRecord) -> bytes:
    headers = b"".join(name.encode() + value for name, value in record.headers or ())
    return (record.key or b"") + (record.value or b"") + headers


def scan_data_dirs(root: Path, scan: Scan) -> list[Path]:
    """Scan every file under `root`, and every RocksDB through RocksDB; the worker dirs.

    Laneway keeps its state in compacted topics, so the dirs may hold no file at all; whatever
    appears there later is scanned.
    """
    for path in sorted(root.rglob("*")):
        if path.is_file():
            scan.check(f"file {path.relative_to(root)}", path.read_bytes())
    for current in sorted(root.rglob("CURRENT")):
        scan_rocksdb(current.parent, scan)
    return [path for path in root.iterdir() if path.is_dir()]


def scan_rocksdb(path: Path, scan: Scan) -> None:
    """Every key and value of every column family, decompressed by RocksDB itself."""
    options = Options(raw_mode=True)
    families = Rdict.list_cf(str(path), options)
    db = Rdict(
        str(path),
        options,
        column_families={name: Options(raw_mode=True) for name in families if name != "default"},
        access_type=AccessType.read_only(),
    )
    try:
        for name in families:
            family = db if name == "default" else db.get_column_family(name)
            for key, value in family.items():
                scan.check(f"rocksdb {path.name}/{name}", key + value)
    finally:
        db.close()


def get_views(app_builder: Any, settings: Settings) -> list[str]:
    """The paths of every GET view the app serves."""
    app = app_builder(settings)
    return sorted(path for path, view in app.web.views.items() if view.get is not View.get)


def fill(path: str, tenants: list[str]) -> list[str]:
    """Concrete URLs for a view path; a parameter this test cannot fill fails it."""
    parameters = set(re.findall(r"{(\w+)}", path))
    unknown = parameters - {"tenant_id", "asset"}
    assert not unknown, f"teach test_no_mirroring to fill {unknown} in {path}"
    urls = [path]
    if "tenant_id" in parameters:
        urls = [url.replace("{tenant_id}", tenant) for url in urls for tenant in tenants]
    if "asset" in parameters:
        urls = [url.replace("{asset}", asset) for url in urls for asset in ASSETS]
    return urls


async def test_no_message_content_reaches_state_logs_topics_or_views(
    worker_env: dict,
    admin_token: str,
    producer: AIOKafkaProducer,
    admin: AIOKafkaAdminClient,
    bootstrap: str,
    tmp_path: Path,
) -> None:
    alphabet = string.ascii_uppercase + string.digits
    token = "MK" + "".join(secrets.choice(alphabet) for _ in range(12))
    patterns = marker_patterns(token.encode())
    suffix = uuid.uuid4().hex[:6]
    sender = (f"NMAPP{suffix.upper()}", f"NMFAC{suffix.upper()}")
    env, shared_worker, lane_worker = worker_processes(worker_env, admin_token, tmp_path)
    topics = TopicNames(env["LANEWAY_TOPIC_PREFIX"])
    lane_worker.start()
    shared_worker.start()
    scan = Scan(patterns)
    counter = iter(range(10**9))

    def next_message(tenant: Tenant, *, valid: bool = True) -> bytes:
        i = next(counter)
        tenant.sent += 1
        message = phi_message(sender, f"NM{i:08d}", token, i, oru=i % 2 == 1)
        return message if valid else message.replace(b"|P|2.5\r", b"|P|2.9\r", 1)

    async def produce(tenant: Tenant, count: int) -> None:
        for _ in range(count):
            await producer.send(topics.ingress, next_message(tenant), key=tenant.id.encode())
        await producer.flush()

    try:
        async with Api.of(shared_worker) as api:
            tenants: dict[str, Tenant] = {}
            for name, fields in onboarding(sender).items():
                answer = await api.onboard(f"nm-{name}-{suffix}", **fields)
                tenants[name] = Tenant(answer["id"], answer["token"])

            # Round one, then a trickle until the moves into dedicated lanes are on the control
            # log (the router notices a pin when the tenant sends); then the bulk.
            for tenant in tenants.values():
                await produce(tenant, FIRST_ROUND)
            promoted = [tenants[name] for name in ("pinned", "thin", "auto")]
            promoted_ids = {tenant.id for tenant in promoted}

            def moved(records: list[ConsumerRecord]) -> set[str]:
                moves = [json.loads(record.value) for record in records]
                return {move["tenant"] for move in moves if move["to"] is not None}

            async def trickle() -> None:
                while True:
                    for tenant in promoted:
                        await produce(tenant, TRICKLE)
                    await asyncio.sleep(TRICKLE_EVERY_S)  # pacing, not synchronisation

            trickling = asyncio.create_task(trickle())
            try:
                control = await consume_until(
                    bootstrap, [topics.control], lambda got: promoted_ids <= moved(got), 60
                )
            finally:
                trickling.cancel()
                await asyncio.gather(trickling, return_exceptions=True)
            assert promoted_ids <= moved(control), shared_worker.log_tail()
            for tenant in tenants.values():
                await produce(tenant, PER_TENANT - FIRST_ROUND)

            full = tenants["full"]
            for _ in range(MALFORMED):
                bad = next_message(full, valid=False)
                await producer.send(topics.ingress, bad, key=full.id.encode())
            await producer.flush()
            for _ in range(HTTP_BODIES):
                body = b"".join(next_message(full) for _ in range(PER_BODY))
                status, answer = await api.send(full.id, full.token, body)
                assert status == 202, answer
            acks = await mllp_exchange(
                int(env["LANEWAY_MLLP_PORT"]), [next_message(full) for _ in range(MLLP_MESSAGES)]
            )
            assert all(b"MSA|AA|" in ack for ack in acks)

            total = sum(tenant.sent for tenant in tenants.values())
            assert total >= 10_000
            outputs = [topics.out(t.id) for t in tenants.values()]
            outputs += [topics.dlq(t.id) for t in tenants.values()]
            records = await consume_until(bootstrap, outputs, lambda got: len(got) >= total, 240)
            assert len(records) == total, shared_worker.log_tail() + lane_worker.log_tail()

            # Views: every GET view of both apps, for every tenant, as admin.
            tenant_ids = [tenant.id for tenant in tenants.values()]
            settings = Settings(_env_file=None, data_dir=tmp_path / "views")  # type: ignore[call-arg]
            views = {
                env["LANEWAY_WEB_PORT"]: get_views(build_worker, settings),
                env["LANEWAY_LANE_WEB_PORT"]: get_views(build_lane_worker, settings),
            }
            served: list[str] = []
            async with aiohttp.ClientSession() as session:
                for port, paths in views.items():
                    for path in paths:
                        if path in EXEMPT_VIEWS:
                            continue
                        for url in fill(path, tenant_ids):
                            async with session.get(
                                f"http://127.0.0.1:{port}{url}",
                                headers={"Authorization": f"Bearer {admin_token}"},
                            ) as response:
                                scan.check(f"GET :{port}{url}", await response.read())
                                if response.status == 200:
                                    served.append(path)
            assert {"/api/tenants", "/api/tenants/{tenant_id}"} <= set(served), served
    finally:
        shared_worker.stop()
        lane_worker.stop()

    by_topic: dict[str, list[ConsumerRecord]] = {}
    for record in records:
        by_topic.setdefault(record.topic, []).append(record)

    # Positive controls: the scan finds the markers where they belong.
    full_events = b"".join(r.value for r in by_topic[topics.out(tenants["full"].id)])
    full_rejects = b"".join(r.value for r in by_topic[topics.dlq(tenants["full"].id)])
    assert "raw" in found(patterns, full_events)
    assert found(patterns, full_rejects) - {"raw"}, "base64 markers not detected"
    planted = tmp_path / "planted-rocksdb"
    db = Rdict(str(planted), Options(raw_mode=True))
    db[b"key"] = b"padding " * 100 + token.encode() + b" padding" * 100
    db.close()
    control_scan = Scan(patterns)
    scan_rocksdb(planted, control_scan)
    assert control_scan.findings, "a marker inside a RocksDB was not found"

    # Thin and masked tenants' events, from both lanes, carry no marker either.
    for name in ("thin", "hash", "auto"):
        events = by_topic[topics.out(tenants[name].id)]
        assert len(events) == tenants[name].sent
        scan.check(f"events of {name}", b"".join(r.value for r in events))
    hashed = b"".join(r.value for r in by_topic[topics.out(tenants["hash"].id)])
    dropped = b"".join(r.value for r in by_topic[topics.out(tenants["auto"].id)])
    assert b'"family":"h:' in hashed
    assert b'"name":null' in dropped

    ours = [
        topic
        for topic in await admin.list_topics()
        if topic.startswith((topics.prefix, env["LANEWAY_APP_ID"]))
    ]
    # Both lanes did work.
    lane_topic = re.compile(re.escape(topics.prefix) + r"lane\.dedicated")
    lanes = [topic for topic in ours if lane_topic.fullmatch(topic)]
    lane_records = [r for lane in lanes for r in await read_topic(bootstrap, admin, lane)]
    assert lane_records, "no record went through a dedicated lane"

    # Every topic that is not a message carrier by design.
    carriers = re.compile(
        re.escape(topics.prefix) + r"(ingress|lane\.shared|lane\.dedicated|out\..+|dlq\..+)"
    )
    candidates = [topic for topic in ours if not carriers.fullmatch(topic)]
    assert {topics.tenants, topics.tenant_state, topics.control} <= set(candidates)
    for topic in candidates:
        for record in await read_topic(bootstrap, admin, topic):
            scan.check(f"topic {topic}@{record.partition}:{record.offset}", record_bytes(record))

    # Data dirs, byte for byte and through RocksDB; then the logs.
    assert len(scan_data_dirs(Path(env["LANEWAY_DATA_DIR"]), scan)) == 2  # one per worker
    for process in (shared_worker, lane_worker):
        scan.check(f"log {process.log_path.name}", process.log_path.read_bytes())

    assert scan.findings == []
