"""Scale-out and failure scenes: several shared workers and lane workers on one broker, tenants
sending over HTTP, faults (kill -9, restart, a worker joining or leaving), and a checker of
what came out (issue 14).

- `Scene` starts N shared workers (same app id, so they share the consumer groups: Faust's, the
  routers' and ingest's) and M lane workers (the lane worker group), each with its own ports and
  data dir; it kills, restarts, adds and stops them, and samples every shared worker's RSS.
- `TenantSender` sends one tenant's messages at a given rate, stop-and-wait (the next POST only
  once the previous one is answered, so the sender's sequence is the ingress order), to the live
  shared workers in turn. Every accepted message (202, or the accepted prefix of a 207) is
  recorded with its control id and sequence number; a refused one is never resent (a resend of
  the same control id would be a duplicate made by the sender, not by Laneway).
- `check` (pure) compares what was accepted with what every `laneway.out.<tenant>` and
  `laneway.dlq.<tenant>` holds: lost, order violations, duplicates, and duplicates that do not
  carry the same idempotency key.

Message bodies are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner

from streams.processing import guess_control_id
from streams.topics import TopicNames
from tests.harness import (
    Api,
    HarnessError,
    Sender,
    WorkerProcess,
    consume_until,
    fresh_ports,
    group_settles,
    message,
)

READY_TIMEOUT_S = 120.0  # a worker's start on a 2-core machine that other suites share
SETTLE_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 15.0
RSS_EVERY_S = 0.25
DRAIN_TIMEOUT_S = 120.0
PRODUCE_CHUNK = 100  # records in flight at once when writing straight into ingress
_PARTITIONS_LINE = re.compile(rb"router reads ingress partitions \[([0-9, ]*)\]")

Kind = Literal["out", "dlq"]


# ---------------------------------------------------------------- the checker (pure)


@dataclass(frozen=True, slots=True)
class Accepted:
    """One message Laneway accepted (AA / 202): the sender's sequence number is its order."""

    tenant: str
    seq: int
    control_id: str
    accepted_at: float  # time.time() when the answer came
    ingress_offset: int | None = None  # where ingest wrote it (its partition is the tenant's)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One record of a tenant's out or DLQ topic."""

    tenant: str
    kind: Kind
    offset: int
    control_id: str | None
    idempotency_key: str
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class OrderViolation:
    """`control_id` (sequence `seq`) came out after `after` (a later sequence number)."""

    tenant: str
    kind: Kind
    offset: int
    control_id: str
    seq: int
    after: str
    after_seq: int

    def __str__(self) -> str:
        return (
            f"{self.tenant} {self.kind}@{self.offset}: {self.control_id} (#{self.seq}) "
            f"after {self.after} (#{self.after_seq})"
        )


@dataclass(frozen=True)
class ScaleReport:
    accepted: int
    delivered: int
    lost: tuple[str, ...]  # accepted control ids in neither the out nor the DLQ topic
    order_violations: tuple[OrderViolation, ...]
    duplicates: dict[str, int]  # control id -> times delivered, where more than once
    duplicates_without_same_key: dict[str, tuple[str, ...]]  # control id -> its distinct keys
    unaccepted: int  # delivered, but the sender never got an AA for it (a refused write)
    max_latency_s: dict[str, float]  # tenant -> slowest acceptance-to-output

    def summary(self) -> str:
        latency = {tenant: round(s, 2) for tenant, s in self.max_latency_s.items()}
        return (
            f"accepted {self.accepted}, delivered {self.delivered}, lost {len(self.lost)}, "
            f"order violations {len(self.order_violations)}, duplicates "
            f"{len(self.duplicates)} ({len(self.duplicates_without_same_key)} without the same "
            f"key), unaccepted {self.unaccepted}, slowest {latency}"
        )

    def problems(self) -> list[str]:
        """One line per kind of failure, naming the first few cases; empty when clean."""
        found = []
        if self.lost:
            found.append(f"lost {len(self.lost)} of {self.accepted}: {list(self.lost[:5])}")
        if self.order_violations:
            first = [str(violation) for violation in self.order_violations[:5]]
            found.append(f"{len(self.order_violations)} order violations: {first}")
        if self.duplicates_without_same_key:
            first_keys = dict(itertools.islice(self.duplicates_without_same_key.items(), 3))
            found.append(
                f"{len(self.duplicates_without_same_key)} duplicates without the same "
                f"idempotency key: {first_keys}"
            )
        return found


def check(accepted: Iterable[Accepted], deliveries: Iterable[Delivery]) -> ScaleReport:
    """What the out and DLQ topics hold, against what was accepted.

    Order is per tenant and per topic, by the sender's sequence, over the first delivery of
    each idempotency key: a redelivery with the same key is at-least-once, which consumers drop
    by that key, so only a first delivery can be out of order.
    """
    by_id = {a.control_id: a for a in accepted}
    ordered = sorted(deliveries, key=lambda d: (d.tenant, d.kind, d.offset))
    times: Counter[str] = Counter()
    keys: dict[str, set[str]] = defaultdict(set)
    first_arrival: dict[str, int] = {}
    violations: list[OrderViolation] = []
    for (tenant, kind), group in itertools.groupby(ordered, key=lambda d: (d.tenant, d.kind)):
        seen: set[str] = set()
        latest: Accepted | None = None
        for delivery in group:
            control_id = delivery.control_id or ""
            times[control_id] += 1
            keys[control_id].add(delivery.idempotency_key)
            first_arrival.setdefault(control_id, delivery.timestamp_ms)
            sent = by_id.get(control_id)
            if sent is None or delivery.idempotency_key in seen:
                continue
            seen.add(delivery.idempotency_key)
            if latest is not None and sent.seq < latest.seq:
                after = (latest.control_id, latest.seq)
                violations.append(
                    OrderViolation(tenant, kind, delivery.offset, control_id, sent.seq, *after)
                )
            else:
                latest = sent
    latency: dict[str, float] = {}
    for control_id, sent in by_id.items():
        if control_id in first_arrival:
            took = first_arrival[control_id] / 1000 - sent.accepted_at
            latency[sent.tenant] = max(latency.get(sent.tenant, 0.0), took)
    return ScaleReport(
        accepted=len(by_id),
        delivered=sum(times.values()),
        lost=tuple(c for c in by_id if c not in times),
        order_violations=tuple(violations),
        duplicates={c: n for c, n in times.items() if n > 1},
        duplicates_without_same_key={c: tuple(sorted(k)) for c, k in keys.items() if len(k) > 1},
        unaccepted=sum(1 for c in times if c not in by_id),
        max_latency_s=latency,
    )


def delivery_of(record: ConsumerRecord, tenant: str, kind: Kind) -> Delivery:
    """An out event or a DLQ record: both carry the control id and the idempotency key."""
    document = json.loads(record.value)
    return Delivery(
        tenant,
        kind,
        record.offset,
        document.get("control_id"),
        document["idempotency_key"],
        record.timestamp,
    )


def owned_partitions(log_text: bytes) -> set[int] | None:
    """The ingress partitions a shared worker's router reads, from its latest log line saying
    so; None before the first."""
    found = _PARTITIONS_LINE.findall(log_text)
    if not found:
        return None
    return {int(p) for p in found[-1].replace(b" ", b"").split(b",") if p}


def vm_rss_bytes(status_text: str) -> int:
    """VmRSS of a /proc/<pid>/status text, in bytes."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise HarnessError("no VmRSS line (a kernel thread, or the process is gone)")


# ---------------------------------------------------------------- memory


@dataclass
class RssSeries:
    """One incarnation of one worker: the baseline (a fresh worker's RSS when ready) and the
    most this incarnation used."""

    worker: str
    pid: int
    baseline: int
    peak: int

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    def __str__(self) -> str:
        mib = 1024 * 1024
        return (
            f"{self.worker} (pid {self.pid}): {self.baseline / mib:.0f} MiB fresh, "
            f"peak {self.peak / mib:.0f} MiB (+{self.growth / mib:.0f})"
        )


def read_rss(pid: int) -> int | None:
    try:
        return vm_rss_bytes(Path(f"/proc/{pid}/status").read_text())
    except (OSError, HarnessError):  # gone, e.g. killed between the check and the read
        return None


# ---------------------------------------------------------------- senders


def padded_message(sender: Sender, control_id: str, pad_bytes: int) -> bytes:
    """A small ADT, with an NTE segment of `pad_bytes` filler when asked (synthetic, no PHI)."""
    payload = message(sender, control_id)
    return payload + b"NTE|1||" + b"X" * pad_bytes + b"\r" if pad_bytes else payload


@dataclass
class TenantSender:
    """One tenant's traffic: the accepted messages, in the sender's order, and the refusals."""

    tenant: str
    token: str
    tag: str  # control ids are `<tag><seq>`: unique per test, within MSH-10's 20 characters
    batch: int = 1  # messages per POST
    pad_bytes: int = 0
    accepted: list[Accepted] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    posting: bool = False  # a POST is in flight
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def next_messages(self, count: int) -> list[tuple[int, str, bytes]]:
        sender = Sender(f"APP{self.tag}", "SCALE")
        out = []
        for _ in range(count):
            seq = next(self._seq)
            control_id = f"{self.tag}{seq:07d}"
            out.append((seq, control_id, padded_message(sender, control_id, self.pad_bytes)))
        return out

    async def post(self, api: Api) -> None:
        """One POST of `batch` new messages: the accepted ones are noted, the others counted."""
        batch = self.next_messages(self.batch)
        body = b"".join(payload for _, _, payload in batch)
        self.posting = True
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                status, answer = await api.send(self.tenant, self.token, body)
        except (aiohttp.ClientError, TimeoutError) as error:
            # Perhaps written, never answered: not accepted, and never resent.
            self.refused[type(error).__name__] += len(batch)
            return
        finally:
            self.posting = False
        now = time.time()
        results = answer.get("results", []) if isinstance(answer, dict) else []
        taken = 0
        for (seq, control_id, _), result in zip(batch, results, strict=False):
            if result.get("status") != "accepted":
                break  # the rest of the body is refused too
            offset = result.get("offset")
            self.accepted.append(Accepted(self.tenant, seq, control_id, now, offset))
            taken += 1
        if taken < len(batch):
            self.refused[str(status)] += len(batch) - taken

    def note_produced(self, records: Sequence[tuple[int, str, int]]) -> None:
        """Messages written straight into ingress (acks=all), as another producer would:
        (sequence, control id, ingress offset) each."""
        now = time.time()
        self.accepted.extend(
            Accepted(self.tenant, *record[:2], now, record[2]) for record in records
        )


# ---------------------------------------------------------------- the scene


class Scene:
    """N shared workers and M lane workers of one deployment (one topic prefix, one app id)."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.topics = TopicNames(env["LANEWAY_TOPIC_PREFIX"])
        self.bootstrap = env["LANEWAY_KAFKA_BOOTSTRAP"]
        self.shared: list[WorkerProcess] = []
        self.lane_workers: list[WorkerProcess] = []
        self.live: list[WorkerProcess] = []  # shared workers senders may use now
        self.senders: dict[str, TenantSender] = {}
        self.rss: list[RssSeries] = []
        self._apis: dict[str, Api] = {}
        self._incarnations: Counter[str] = Counter()
        self._names = itertools.count(1)
        self._streams: list[asyncio.Task[None]] = []
        self._sampler: asyncio.Task[None] | None = None
        self._rates: dict[str, float] = {}
        self._stopping = asyncio.Event()
        self._turn = itertools.count()
        self._partitioner = DefaultPartitioner()
        self._ports: set[str] = set()
        self._exits = contextlib.AsyncExitStack()  # the API clients

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls, env: dict[str, str], log_dir: Path, shared: int = 2, lane_workers: int = 1
    ) -> AsyncIterator[Scene]:
        """Every worker started and the shared group settled; all stopped on the way out."""
        scene = cls(env, log_dir)
        try:
            new = [scene._new_shared() for _ in range(shared)]
            new += [scene._new_lane_worker() for _ in range(lane_workers)]
            await asyncio.gather(*(scene._start(worker) for worker in new))
            await scene.settled()
            scene._sampler = asyncio.create_task(scene._sample_rss())
            yield scene
        finally:
            await scene.close()

    # ------------------------------------------------------------ processes

    def _new_shared(self) -> WorkerProcess:
        name = f"shared-{next(self._names)}"
        worker = WorkerProcess(self._own_env(name), self.log_dir / f"{name}.log", name=name)
        self.shared.append(worker)
        return worker

    def _new_lane_worker(self) -> WorkerProcess:
        name = f"lane-{len(self.lane_workers) + 1}"
        worker = WorkerProcess.lane(self._own_env(name), self.log_dir / f"{name}.log", name=name)
        self.lane_workers.append(worker)
        return worker

    def _own_env(self, name: str) -> dict[str, str]:
        """The deployment's settings with a data dir and ports of the worker's own. Ports are
        only probed free, not held, until the workers bind them: a port handed to an earlier
        worker of the scene is never handed out again."""
        ports = fresh_ports()
        while not self._ports.isdisjoint(ports.values()):
            ports = fresh_ports()
        self._ports.update(ports.values())
        return {**self.env, **ports, "LANEWAY_DATA_DIR": str(self.log_dir / name)}

    async def _start(self, worker: WorkerProcess) -> None:
        # A log per incarnation: readiness (and the router's partitions) are read from it.
        self._incarnations[worker.name] += 1
        worker.log_path = self.log_dir / f"{worker.name}.{self._incarnations[worker.name]}.log"
        worker.spawn()
        await worker.ready(READY_TIMEOUT_S)
        if worker in self.shared:
            if worker.name not in self._apis:
                self._apis[worker.name] = await self._exits.enter_async_context(Api.of(worker))
            self.live.append(worker)
            # Growth counts from a fresh worker's RSS: a restarted one may have re-read (and
            # held) records before it logged that it was ready.
            rss = read_rss(worker.pid) or 0
            baseline = min([rss, *(series.baseline for series in self.rss)])
            self.rss.append(RssSeries(worker.name, worker.pid, baseline, rss))

    async def settled(self) -> None:
        """The shared workers' group (Faust's: the shared lane's partitions, which the routers
        follow) is stable with every running shared worker as a member."""
        members = sum(worker.running for worker in self.shared)
        group = self.env["LANEWAY_APP_ID"]
        if not await group_settles(self.bootstrap, group, members, SETTLE_TIMEOUT_S):
            raise HarnessError(f"group {group} did not settle with {members} members")

    async def add_shared(self) -> WorkerProcess:
        """One more shared worker (a rebalance), returned once the group has settled."""
        worker = self._new_shared()
        await self._start(worker)
        await self.settled()
        return worker

    async def stop_shared(self, worker: WorkerProcess) -> None:
        """A clean stop (SIGTERM), senders off it first; returns once the group has settled."""
        self._retire(worker)
        await asyncio.to_thread(worker.stop)
        await self.settled()

    async def kill(self, worker: WorkerProcess) -> None:
        """kill -9: no shutdown, no final commit. Senders leave it first."""
        self._retire(worker)
        await asyncio.to_thread(worker.kill)

    async def restart(self, worker: WorkerProcess) -> None:
        """Start a stopped or killed worker again (same ports and data dir), once ready."""
        await self._start(worker)

    def _retire(self, worker: WorkerProcess) -> None:
        if worker in self.live:
            self.live.remove(worker)

    def owner_of(self, tenant: str) -> WorkerProcess:
        """The running shared worker whose router reads the tenant's ingress partition."""
        partition = self.partition_of(tenant)
        for worker in self.shared:
            owned = owned_partitions(worker.log_path.read_bytes()) if worker.running else None
            if owned is not None and partition in owned:
                return worker
        raise HarnessError(f"no running router reads partition {partition} of {tenant}")

    def partition_of(self, tenant: str) -> int:
        partitions = list(range(int(self.env["LANEWAY_INGRESS_PARTITIONS"])))
        return int(self._partitioner(tenant.encode(), partitions, partitions))

    async def _sample_rss(self) -> None:
        while True:
            for series in self.rss:
                rss = read_rss(series.pid)
                if rss is not None:
                    series.peak = max(series.peak, rss)
            await asyncio.sleep(RSS_EVERY_S)

    # ------------------------------------------------------------ the API and tenants

    @property
    def api(self) -> Api:
        """The admin API of a live shared worker."""
        if not self.live:
            raise HarnessError("no live shared worker")
        return self._apis[self.live[0].name]

    async def onboard(
        self, prefix: str, tag: str, tenant_id: str | None = None, **fields: object
    ) -> TenantSender:
        """A new tenant (`tenant_id`, else `prefix` and a random suffix), known to every live
        shared worker once this returns."""
        tenant_id = tenant_id or f"{prefix}-{uuid.uuid4().hex[:6]}"
        answer = await self.api.onboard(tenant_id, **fields)
        for worker in list(self.live):
            await self._until_known(self._apis[worker.name], tenant_id)
        sender = TenantSender(tenant_id, answer["token"], tag)
        self.senders[tenant_id] = sender
        return sender

    async def _until_known(self, api: Api, tenant_id: str) -> None:
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while (await api.call("GET", f"/api/tenants/{tenant_id}", token=api.admin_token))[0] != 200:
            if time.monotonic() > deadline:
                raise HarnessError(f"{api.base_url} never learnt of tenant {tenant_id}")
            await asyncio.sleep(0.1)

    async def admin(self, method: str, path: str, body: object = None) -> object:
        """An admin call on a live worker; fails unless it answers 200."""
        api = self.api
        status, answer = await api.call(method, path, token=api.admin_token, json_body=body)
        if status != 200:
            raise HarnessError(f"{method} {path}: {status} {answer}")
        return answer

    async def pin(self, tenant: str, pinned: str) -> None:
        await self.admin("PATCH", f"/api/tenants/{tenant}", {"lane": {"pinned": pinned}})

    async def stats(self, tenant: str) -> dict[str, Any]:
        answer = await self.admin("GET", f"/api/tenants/{tenant}/stats")
        assert isinstance(answer, dict)
        return answer

    async def configs(self, tenant: str) -> list[dict[str, Any]]:
        """The tenant's config as each live shared worker's registry has it."""
        found = []
        for worker in list(self.live):
            api = self._apis[worker.name]
            status, answer = await api.call("GET", f"/api/tenants/{tenant}", token=api.admin_token)
            found.append(answer if status == 200 else {})
        return found

    async def router_commit(self, partition: int) -> int:
        """The routers' committed ingress offset of `partition` (-1 before the first commit)."""
        group = f"{self.env['LANEWAY_APP_ID']}-router"
        tp = TopicPartition(self.topics.ingress, partition)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(group, partitions=[tp])
        finally:
            await admin.close()
        return offsets[tp].offset if tp in offsets else -1

    # ------------------------------------------------------------ traffic

    def send(self, sender: TenantSender, rate_per_s: float) -> None:
        """Start (or re-pace) the tenant's stream: `rate_per_s` messages per second, in POSTs
        of `sender.batch`; 0 pauses it."""
        first = sender.tenant not in self._rates
        self._rates[sender.tenant] = rate_per_s
        if first:
            self._streams.append(asyncio.create_task(self._stream(sender)))

    async def _stream(self, sender: TenantSender) -> None:
        next_at = time.monotonic()
        while not self._stopping.is_set():
            rate = self._rates[sender.tenant]
            if rate <= 0 or not self.live:
                await asyncio.sleep(0.05)
                next_at = time.monotonic()
                continue
            worker = self.live[next(self._turn) % len(self.live)]
            await sender.post(self._apis[worker.name])
            next_at = max(next_at + sender.batch / rate, time.monotonic() - 1.0)
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def hold(self, sender: TenantSender) -> None:
        """Stop the tenant's stream and return once its POST in flight (if any) is answered."""
        self._rates[sender.tenant] = 0

        async def idle() -> bool:
            return not sender.posting

        await eventually(idle, REQUEST_TIMEOUT_S, f"{sender.tenant}'s POST answered", 0.02)

    async def accepted_more(self, sender: TenantSender, count: int, timeout_s: float) -> None:
        """Return once the tenant has `count` more messages accepted than now."""
        target = len(sender.accepted) + count

        async def enough() -> bool:
            return len(sender.accepted) >= target

        await eventually(enough, timeout_s, f"{count} more of {sender.tenant} accepted")

    @contextlib.asynccontextmanager
    async def ingress_producer(self) -> AsyncIterator[AIOKafkaProducer]:
        """An acks=all producer for `produce`, for callers that produce again and again."""
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            yield producer
        finally:
            await producer.stop()

    async def produce(
        self, sender: TenantSender, count: int, producer: AIOKafkaProducer | None = None
    ) -> None:
        """`count` messages straight into ingress (ingest refuses a paused tenant; another
        producer may not), in chunks each acknowledged (acks=all) before the next: the sender's
        order. With `producer` (from `ingress_producer`), on that one, else on one of its own."""
        if producer is None:
            async with self.ingress_producer() as own:
                await self.produce(sender, count, own)
            return
        messages = sender.next_messages(count)
        for start in range(0, count, PRODUCE_CHUNK):
            chunk = messages[start : start + PRODUCE_CHUNK]
            futures = [
                await producer.send(self.topics.ingress, payload, key=sender.tenant.encode())
                for _, _, payload in chunk
            ]
            written = await asyncio.gather(*futures)
            sender.note_produced(
                [
                    (seq, cid, meta.offset)
                    for (seq, cid, _), meta in zip(chunk, written, strict=True)
                ]
            )

    async def stop_traffic(self) -> None:
        """Every stream ends after its POST in flight; the RSS sampler goes on."""
        self._stopping.set()
        await asyncio.gather(*self._streams)

    # ------------------------------------------------------------ results

    async def deliveries(self, timeout_s: float = DRAIN_TIMEOUT_S) -> list[Delivery]:
        """Every record of the senders' out and DLQ topics, read once every accepted message
        is in one of them (or the deadline passed), then once more up to the end offsets."""
        kinds: dict[str, tuple[str, Kind]] = {}
        for tenant in self.senders:
            kinds[self.topics.out(tenant)] = (tenant, "out")
            kinds[self.topics.dlq(tenant)] = (tenant, "dlq")
        expected = {a.control_id for s in self.senders.values() for a in s.accepted}
        seen: set[str | None] = set()
        parsed = 0

        def all_in(records: list[ConsumerRecord]) -> bool:
            # consume_until asks after every fetch, with the same list grown: parse only what
            # came since (a long run delivers tens of thousands of records).
            nonlocal parsed
            seen.update(json.loads(r.value).get("control_id") for r in records[parsed:])
            parsed = len(records)
            return expected <= seen

        await consume_until(self.bootstrap, kinds, all_in, timeout_s)
        ends = await end_offsets(self.bootstrap, list(kinds))
        records = await consume_until(
            self.bootstrap, kinds, lambda got: len(got) >= sum(ends.values()), timeout_s
        )
        return [delivery_of(r, *kinds[r.topic]) for r in records]

    async def report(self) -> ScaleReport:
        await self.stop_traffic()
        accepted = [a for sender in self.senders.values() for a in sender.accepted]
        return check(accepted, await self.deliveries())

    async def locate(self, control_ids: Iterable[str]) -> Counter[str]:
        """Where messages that never came out got to: the last of ingress, the shared lane and
        the dedicated lanes holding each (`ingress` alone: never forwarded), by topic."""
        wanted = set(control_ids)
        topics = [
            self.topics.ingress,
            self.topics.shared_lane,
            self.topics.dedicated_lanes,
        ]
        ends = await end_offsets(self.bootstrap, topics)
        records = await consume_until(
            self.bootstrap, topics, lambda got: len(got) >= sum(ends.values()), DRAIN_TIMEOUT_S
        )
        found: dict[str, str] = {}
        for record in sorted(records, key=lambda r: topics.index(r.topic)):
            control_id = guess_control_id(record.value or b"")
            if control_id in wanted:
                found[control_id] = f"{record.topic}[{record.partition}]"
        return Counter(found.get(control_id, "nowhere") for control_id in wanted)

    def logs(self, lines: int = 30) -> str:
        """The tail of every worker's current log, for an assertion's message."""
        workers = [*self.shared, *self.lane_workers]
        return "\n".join(f"--- {w.name} ({w.log_path})\n{w.log_tail(lines)}" for w in workers)

    async def close(self) -> None:
        self._stopping.set()
        tasks = [*self._streams, *([self._sampler] if self._sampler else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        workers = [*self.shared, *self.lane_workers]
        await asyncio.gather(*(asyncio.to_thread(worker.stop) for worker in workers))
        await self._exits.aclose()


async def eventually(
    probe: Callable[[], Awaitable[bool]], timeout_s: float, what: str, every_s: float = 0.2
) -> None:
    """Poll `probe` until it holds; HarnessError naming `what` once the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while not await probe():
        if time.monotonic() > deadline:
            raise HarnessError(f"not within {timeout_s:.0f} s: {what}")
        await asyncio.sleep(every_s)


async def end_offsets(bootstrap: str, topics: Iterable[str]) -> dict[str, int]:
    """topic -> the sum of its partitions' end offsets, for the topics that exist."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        # The cluster-wide metadata, as consume_until reads it: the consumer's own knows no topic.
        metadata = await consumer._client.fetch_all_metadata()
        wanted = [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in metadata.partitions_for_topic(topic) or ()
        ]
        totals: Counter[str] = Counter()
        for tp, offset in (await consumer.end_offsets(wanted) if wanted else {}).items():
            totals[tp.topic] += offset
        return dict(totals)
    finally:
        await consumer.stop()
