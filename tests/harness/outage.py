"""Broker outages under live traffic, shared by tests/integration/test_broker_outage.py (short
phases) and bench/outage.py (the benchmark).

A scenario runs a throwaway Kafka (its own run dir and ports, 1 or 3 nodes, driven through
scripts/kafka.sh), one worker, and two tenants whose senders run for the whole scenario: an MLLP
sender (stop-and-wait on one persistent connection, reconnecting when it drops) and an HTTP
sender (one message per POST), each paced, each message with a control id of its own. A message
refused (AR, 503, or no answer at all) is resent later, the same bytes, like a real sender, until
it is accepted (AA / 202) or the scenario ends. Every attempt is recorded: send time, answer
time, answer code. Afterwards every tenant's out topic is read and the measures computed (see
`PhaseReport` and `ScenarioReport`). Message bodies are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import secrets
import socket
import time
from collections import Counter, defaultdict, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import aiohttp
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner

from streams.topics import TopicNames
from tests.harness import (
    REPO,
    Api,
    HarnessError,
    MllpClient,
    WorkerProcess,
    broker_answers,
    consume_until,
    free_port,
    log,
    message,
    worker_env,
)
from tests.harness import Sender as SenderIdentity

KAFKA_SCRIPT = REPO / "scripts" / "kafka.sh"
# Throwaway brokers reuse the development broker's jars: nothing is downloaded.
KAFKA_LIBS = REPO / ".run" / "kafka" / "libs"
THROWAWAY_HEAP = "-Xmx512m -Xms256m"

RATE_PER_S = 20.0
# HTTP ingest answers 503 with Retry-After: 1; the MLLP sender waits as long before a resend.
RESEND_AFTER_S = 1.0
REQUEST_TIMEOUT_S = 15.0  # MllpClient's own ACK timeout is the same
CONNECT_TIMEOUT_S = 2.0
READY_TIMEOUT_S = 120.0
INGEST_TIMEOUT_S = 1.0
# Targets: AA/202 again this soon after the broker is back; at most this many worker log lines
# while it is down.
RECOVERY_TARGET_S = 5.0
LOG_LINES_TARGET = 100
PROGRESS_EVERY_S = 5.0

ACCEPTED = frozenset(("AA", "202"))
# No answer at all: could not connect, the connection dropped, or no answer in time.
REFUSED_CONNECTION, CLOSED, TIMEOUT = "no-connection", "closed", "timeout"
NO_ANSWER = frozenset((REFUSED_CONNECTION, CLOSED, TIMEOUT))
# Final answers: the message itself is wrong, resending the same bytes cannot help.
FINAL_REFUSALS = frozenset(("AE", "400", "401", "403", "404", "413", "415", "422"))

FaultKind = Literal["stop", "kill"]
Fault = tuple[str, FaultKind, float]  # phase name, kind, seconds the broker stays down


# ---------------------------------------------------------------- the throwaway cluster


class ThrowawayCluster:
    """A Kafka of its own under `root` (scripts/kafka.sh with its own run dir and free ports).

    `nodes` is 1 or 3 (KAFKA_NODES). Node 1 of a single-node cluster is the whole broker. The
    bootstrap string comes from `kafka.sh bootstrap`, which knows the multi-node port scheme.
    """

    def __init__(self, root: Path, nodes: int = 1) -> None:
        self.nodes = nodes
        self.root = root
        # Node i listens on port + 2(i-1) and its controller on the next port: one free block.
        port = free_port_block(2 * nodes)
        self.env = {
            **os.environ,
            "LANEWAY_RUN_DIR": str(root),
            "LANEWAY_KAFKA_PORT": str(port),
            "LANEWAY_KAFKA_CONTROLLER_PORT": str(port + 1),
            "LANEWAY_KAFKA_LIBS": str(KAFKA_LIBS),
            "KAFKA_NODES": str(nodes),
        }
        self.env.pop("LANEWAY_KAFKA_BOOTSTRAP", None)  # else `up` would start nothing
        self.env.setdefault("KAFKA_HEAP_OPTS", THROWAWAY_HEAP)
        self.bootstrap = ""

    async def run(self, *command: str) -> str:
        """Run `kafka.sh <command>` without blocking the event loop; its output, or HarnessError."""
        process = await asyncio.create_subprocess_exec(
            "bash",
            str(KAFKA_SCRIPT),
            *command,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await process.communicate()
        text = output.decode(errors="replace")
        if process.returncode != 0:
            tail = "\n".join(text.splitlines()[-30:])
            raise HarnessError(f"kafka.sh {' '.join(command)} exited {process.returncode}:\n{tail}")
        return text

    async def up(self) -> None:
        await self.run("up")
        words = (await self.run("bootstrap")).split()
        if not words:
            raise HarnessError("kafka.sh bootstrap printed nothing")
        self.bootstrap = words[-1]

    async def wipe(self) -> None:
        await self.run("wipe")

    async def stop_node(self, node: int) -> None:
        """Graceful stop (SIGTERM, controlled shutdown); returns once the process is gone."""
        await self.run("stop-node", str(node))

    async def kill_node(self, node: int) -> None:
        """kill -9: no shutdown at all; returns once the process is gone."""
        await self.run("kill-node", str(node))

    async def start_node(self, node: int) -> None:
        """Restart on the node's existing data; returns once it answers."""
        output = await self.run("start-node", str(node))
        if not await broker_answers(self.bootstrap, timeout_s=5.0):
            raise HarnessError(f"start-node {node} returned, yet nothing answers:\n{output}")


def free_port_block(count: int) -> int:
    """The first of `count` consecutive ports that nothing listens on now."""
    for _ in range(100):
        first = free_port()
        if all(_bindable(port) for port in range(first + 1, first + count)):
            return first
    raise HarnessError(f"no {count} consecutive free ports found")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


# ---------------------------------------------------------------- senders


@dataclass(frozen=True, slots=True)
class Attempt:
    """One send of one message and what came back."""

    control_id: str
    attempt: int  # 1 for the first send, 2+ for resends of the same bytes
    sent_at: float  # time.monotonic()
    answered_at: float
    code: str  # AA/AE/AR, an HTTP status, or one of NO_ANSWER
    # A refusal as specified: AR/AE with an ERR segment, 503 with Retry-After.
    well_formed: bool = True

    @property
    def accepted(self) -> bool:
        return self.code in ACCEPTED

    @property
    def answered(self) -> bool:
        return self.code not in NO_ANSWER


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    identity: SenderIdentity  # MSH-3 / MSH-4 registered for it
    token: str


class PacedSender:
    """Sends a new message every 1/rate s, one at a time; refused ones are resent later."""

    name = "sender"

    def __init__(self, tenant: Tenant, rate_per_s: float, tag: str) -> None:
        self.tenant = tenant
        self.interval_s = 1.0 / rate_per_s
        self.tag = tag
        self.attempts: list[Attempt] = []
        self._resends: deque[tuple[float, str, bytes, int]] = deque()  # (due, id, bytes, n)
        self._numbers = itertools.count(1)
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self.name} sender")

    async def close(self, settle_s: float) -> None:
        """No new messages; resends go on until none is left or `settle_s` has passed."""
        self._closing = True
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), settle_s)
            if not self._task.done():
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._disconnect()

    def check(self) -> None:
        """Raise what ended the sender's task, if it failed."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            self._task.result()

    def first_accepted_since(self, since: float) -> float | None:
        return next(
            (a.answered_at for a in self.attempts if a.accepted and a.answered_at >= since), None
        )

    @property
    def unsent_resends(self) -> int:
        return len(self._resends)

    async def _run(self) -> None:
        due = time.monotonic()
        while not (self._closing and not self._resends):
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            due = max(due + self.interval_s, time.monotonic())  # late: no catch-up burst
            picked = self._next()
            if picked is None:
                continue
            control_id, payload, number = picked
            sent_at = time.monotonic()
            code, well_formed = await self._exchange(control_id, payload)
            answered_at = time.monotonic()
            self.attempts.append(
                Attempt(control_id, number, sent_at, answered_at, code, well_formed)
            )
            if code not in ACCEPTED and code not in FINAL_REFUSALS:
                self._resends.append(
                    (answered_at + RESEND_AFTER_S, control_id, payload, number + 1)
                )

    def _next(self) -> tuple[str, bytes, int] | None:
        """A resend that is due, else a new message (none once closing)."""
        if self._resends and self._resends[0][0] <= time.monotonic():
            _, control_id, payload, number = self._resends.popleft()
            return control_id, payload, number
        if self._closing:
            return None
        control_id = f"{self.tag}-{next(self._numbers):06d}"
        return control_id, message(self.tenant.identity, control_id), 1

    async def _exchange(self, control_id: str, payload: bytes) -> tuple[str, bool]:
        raise NotImplementedError

    async def _disconnect(self) -> None:
        return None


class MllpSender(PacedSender):
    """Stop-and-wait on one persistent MLLP connection; reconnects when it drops."""

    name = "mllp"

    def __init__(self, port: int, tenant: Tenant, rate_per_s: float, tag: str) -> None:
        super().__init__(tenant, rate_per_s, tag)
        self.port = port
        self._client: MllpClient | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _exchange(self, control_id: str, payload: bytes) -> tuple[str, bool]:
        if self._client is None:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:  # TimeoutError included
                return REFUSED_CONNECTION, True
            self._client = MllpClient(reader, self._writer)
        try:
            ack = await self._client.exchange(payload)
        except TimeoutError:
            await self._disconnect()  # a late ACK would answer the next message
            return TIMEOUT, True
        # MllpClient, written for tests, asserts that the listener answers rather than closes.
        except (OSError, AssertionError, KeyError, IndexError):
            await self._disconnect()
            return CLOSED, True
        if ack.acked_id != control_id:
            await self._disconnect()
            raise HarnessError(f"MLLP ACK for {ack.acked_id!r} where {control_id!r} was due")
        return ack.code, ack.code == "AA" or ack.has_err

    async def _disconnect(self) -> None:
        writer, self._client, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class HttpSender(PacedSender):
    """One message per `POST /api/tenants/{id}/messages` with the tenant's token."""

    name = "http"

    def __init__(self, base_url: str, tenant: Tenant, rate_per_s: float, tag: str) -> None:
        super().__init__(tenant, rate_per_s, tag)
        self.url = f"{base_url}/api/tenants/{tenant.id}/messages"
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            headers={
                "Authorization": f"Bearer {self.tenant.token}",
                "Content-Type": "application/hl7-v2",
            },
        )
        await super().start()

    async def _exchange(self, control_id: str, payload: bytes) -> tuple[str, bool]:
        assert self._session is not None
        try:
            async with self._session.post(self.url, data=payload) as response:
                await response.read()
                retry_after = "Retry-After" in response.headers
                return str(response.status), response.status != 503 or retry_after
        except TimeoutError:
            return TIMEOUT, True
        except aiohttp.ClientConnectorError:
            return REFUSED_CONNECTION, True
        except aiohttp.ClientError:
            return CLOSED, True

    async def _disconnect(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# ---------------------------------------------------------------- phases and measures


@dataclass
class Phase:
    """One fault: a broker stopped or killed, then started again. Times are time.monotonic()."""

    name: str
    kind: FaultKind
    node: int
    whole_cluster: bool  # the only broker: nothing can be accepted meanwhile
    stop_issued: float
    broker_gone: float = math.nan  # the stop/kill command returned: the process is gone
    start_issued: float = math.nan
    broker_back: float = math.nan  # start-node returned: the broker answers again
    log_lines_at_stop: dict[Path, int] = field(default_factory=dict)
    log_lines: int = 0  # the worker's log lines written between stop_issued and broker_back
    first_accepted: dict[str, float | None] = field(default_factory=dict)  # per sender


def log_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@dataclass
class PhaseReport:
    """Measures of one phase; times in seconds, relative to the scenario's start."""

    name: str
    kind: str
    node: int
    whole_cluster: bool
    stop_issued_s: float
    broker_gone_s: float
    start_issued_s: float
    broker_back_s: float
    # Distinct control ids first accepted from this phase's stop to the next phase's (the
    # first phase also counts the traffic before it), and those of them missing from out.
    acked: int
    lost: int
    # AA/202 answered while the only broker was surely down: after the stop/kill command
    # returned (a broker shutting down gracefully may still take writes until its process
    # exits) and before start-node was issued. None when other brokers were still up.
    acked_while_down: int | None
    # Refusals answered while down, per sender: e.g. {"mllp": {"AR": 20}, "http": {"503": 19}}.
    answers_while_down: dict[str, dict[str, int]]
    # From start-node's return to the first AA/202 since start-node was issued; per sender and
    # the max of them; None when a sender got none before the recovery deadline.
    ingest_recovery_s: float | None
    recovery_per_sender_s: dict[str, float | None]
    log_lines_during_outage: int
    # Longest time without any answer on either sender from the stop/kill to start-node's return.
    max_answer_gap_s: float


@dataclass
class ScenarioReport:
    nodes: int
    phases: list[PhaseReport]
    acked: int
    lost: int
    lost_ids: list[str]
    duplicates_without_same_key: int  # control ids in out under 2+ idempotency keys
    order_violations: int
    never_accepted: int  # control ids refused until the scenario ended
    malformed_refusals: int  # AR/AE without ERR, 503 without Retry-After
    workers_exited: list[str]  # workers that ended without being stopped
    answer_codes: dict[str, dict[str, int]]  # per sender
    timeline: str
    worker_log: Path
    worker_log_tail: str

    def phase(self, name: str) -> PhaseReport:
        return next(phase for phase in self.phases if phase.name == name)

    def explain(self) -> str:
        """What a failing assertion shows: the answer timeline and the worker's log tail."""
        return (
            f"\n---- answer timeline ----\n{self.timeline}"
            f"\n---- worker log {self.worker_log} (last lines) ----\n{self.worker_log_tail}"
        )

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("timeline", "worker_log_tail"):
            data.pop(key)
        data["worker_log"] = str(self.worker_log)
        return data


def outage_problems(report: ScenarioReport, phase_name: str) -> list[str]:
    """What the given whole-cluster outage phase got wrong, as readable lines (none: all good)."""
    phase = report.phase(phase_name)
    problems = []
    if phase.acked_while_down:
        problems.append(f"{phase.acked_while_down} AA/202 answered while the broker was down")
    if phase.ingest_recovery_s is None or phase.ingest_recovery_s > RECOVERY_TARGET_S:
        problems.append(
            f"ingest did not answer AA/202 on both senders within {RECOVERY_TARGET_S:g} s of "
            f"the broker's return: {phase.recovery_per_sender_s}"
        )
    if phase.log_lines_during_outage > LOG_LINES_TARGET:
        problems.append(f"{phase.log_lines_during_outage} worker log lines during the outage")
    problems += delivery_problems(report)
    return problems


def delivery_problems(report: ScenarioReport) -> list[str]:
    problems = [f"{name} exited by itself" for name in report.workers_exited]
    if report.lost:
        problems.append(f"{report.lost} AA'd messages missing from out: {report.lost_ids[:10]}")
    if report.duplicates_without_same_key:
        problems.append(
            f"{report.duplicates_without_same_key} control ids in out under 2+ idempotency keys"
        )
    if report.malformed_refusals:
        problems.append(
            f"{report.malformed_refusals} refusals without ERR segment / Retry-After header"
        )
    return problems


# ---------------------------------------------------------------- the scenario


class Scenario:
    """A throwaway cluster, one worker at a time, two tenants and their senders.

    Use as `async with Scenario(root) as scenario:`; leaving it stops the senders and workers
    and wipes the cluster. Worker logs stay under `root`.
    """

    def __init__(
        self,
        root: Path,
        *,
        nodes: int = 1,
        rate_per_s: float = RATE_PER_S,
        ingest_timeout_s: float = INGEST_TIMEOUT_S,
        cluster_root: Path | None = None,
    ) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.cluster = ThrowawayCluster(cluster_root or root / "kafka", nodes)
        self.rate_per_s = rate_per_s
        self.ingest_timeout_s = ingest_timeout_s
        self.run_tag = secrets.token_hex(3)
        self.env: dict[str, str] = {}
        self.topics = TopicNames(f"lwoutage-{self.run_tag}.")
        self.workers: list[WorkerProcess] = []
        self.tenants: dict[str, Tenant] = {}
        self.senders: list[PacedSender] = []
        self.phases: list[Phase] = []
        self.t0 = time.monotonic()
        self._progress: asyncio.Task[None] | None = None
        self._stopped: set[str] = set()  # workers stopped on purpose

    async def __aenter__(self) -> Scenario:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def worker(self) -> WorkerProcess:
        return self.workers[-1]

    def at(self, moment: float) -> float:
        """Seconds since the scenario started."""
        return moment - self.t0

    def say(self, line: str) -> None:
        log(f"  {self.at(time.monotonic()):6.1f}s  {line}")

    async def start(self) -> None:
        """Cluster up, a worker ready, the two tenants onboarded."""
        self.say(f"starting a {self.cluster.nodes}-node throwaway Kafka ({self.cluster.root})")
        await self.cluster.up()
        self.env = self._worker_env()
        await self.start_worker()
        await self.onboard()

    def _worker_env(self) -> dict[str, str]:
        return worker_env(
            self.cluster.bootstrap,
            self.topics.prefix.rstrip("."),
            self.root / "data",
            ingress_partitions="4",
            ingest_timeout_s=str(self.ingest_timeout_s),
            # Explicit either way, so that nothing set in the environment applies.
            topic_replication="3" if self.cluster.nodes >= 3 else "1",
            topic_min_insync_replicas="2" if self.cluster.nodes >= 3 else "1",
        )

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.env['LANEWAY_WEB_PORT']}"

    async def start_worker(self, *, wait_ready: bool = True) -> WorkerProcess:
        """A new worker with the scenario's settings (the same data dir and ports as the last)."""
        name = f"worker-{len(self.workers) + 1}"
        process = WorkerProcess(self.env, self.root / f"{name}.log", name=name)
        process.spawn()
        self.workers.append(process)
        self.say(f"{name} started (log {process.log_path})")
        if wait_ready:
            await process.ready(READY_TIMEOUT_S)
            self.say(f"{name} ready")
        return process

    async def stop_worker(self) -> None:
        self._stopped.add(self.worker.name)
        await asyncio.to_thread(self.worker.stop)
        self.say(f"{self.worker.name} stopped")

    async def onboard(self) -> None:
        """Two tenants with sender identities of their own; contracts far above the pace."""
        async with Api(self.web_url, self.env["LANEWAY_ADMIN_TOKEN"]) as api:
            for kind in ("mllp", "http"):
                suffix = secrets.token_hex(3)
                identity = SenderIdentity(
                    f"OUT-{kind.upper()}-{suffix.upper()}", f"FAC-{suffix.upper()}"
                )
                answer = await api.onboard(
                    f"outage-{kind}-{suffix}",
                    senders=[{"application": identity.application, "facility": identity.facility}],
                    rate_per_s=10_000,
                    burst=20_000,
                )
                self.tenants[kind] = Tenant(answer["id"], identity, answer["token"])

    async def start_traffic(self) -> None:
        mllp_port = int(self.env["LANEWAY_MLLP_PORT"])
        self.senders = [
            MllpSender(mllp_port, self.tenants["mllp"], self.rate_per_s, f"M{self.run_tag}"),
            HttpSender(self.web_url, self.tenants["http"], self.rate_per_s, f"H{self.run_tag}"),
        ]
        for sender in self.senders:
            await sender.start()
        self._progress = asyncio.create_task(self._report_progress())
        self.say(f"senders started, {self.rate_per_s:g} msg/s each")

    async def await_accepted(self, since: float, timeout_s: float) -> dict[str, float | None]:
        """Per sender, its first AA/202 answered at or after `since` (None: none in time)."""
        deadline = time.monotonic() + timeout_s
        while True:
            firsts = {s.name: s.first_accepted_since(since) for s in self.senders}
            done = all(first is not None for first in firsts.values())
            if done or time.monotonic() > deadline or self.worker.name in self.workers_exited:
                return firsts
            for sender in self.senders:
                sender.check()
            await asyncio.sleep(0.05)

    @property
    def workers_exited(self) -> list[str]:
        """Workers that ended without being stopped."""
        return [w.name for w in self.workers if w.name not in self._stopped and not w.running]

    async def await_serving(self, timeout_s: float = 60.0) -> None:
        """Until both senders have had an AA/202; HarnessError if not within the deadline."""
        firsts = await self.await_accepted(self.t0, timeout_s)
        if None in firsts.values():
            raise HarnessError(
                f"the worker did not serve within {timeout_s:.0f}s: {firsts}; "
                f"log {self.worker.log_path}:\n{self.worker.log_tail()}"
            )
        self.say("both senders accepted")

    async def hold(self, seconds: float) -> None:
        """Let the traffic run (the scenario's own pace, not a synchronisation)."""
        await asyncio.sleep(seconds)

    async def break_broker(self, name: str, kind: FaultKind, node: int | None = None) -> Phase:
        """Stop (graceful) or kill -9 a broker; the leader of the tenants' ingress partitions in
        a cluster unless `node` says which."""
        if node is None:
            node = 1 if self.cluster.nodes == 1 else await self.node_leading_the_tenants()
        phase = Phase(name, kind, node, self.cluster.nodes == 1, time.monotonic())
        phase.log_lines_at_stop = {w.log_path: log_lines(w.log_path) for w in self.workers}
        self.phases.append(phase)
        self.say(f"[{name}] {'stopping' if kind == 'stop' else 'kill -9 of'} node {node}")
        if kind == "stop":
            await self.cluster.stop_node(node)
        else:
            await self.cluster.kill_node(node)
        phase.broker_gone = time.monotonic()
        self.say(f"[{name}] broker {node} down")
        return phase

    async def restore(self, phase: Phase, recovery_timeout_s: float = 30.0) -> None:
        """Start the broker again and wait for the first AA/202 on both senders."""
        phase.start_issued = time.monotonic()
        await self.cluster.start_node(phase.node)
        phase.broker_back = time.monotonic()
        worker_log = self.worker.log_path
        phase.log_lines = log_lines(worker_log) - phase.log_lines_at_stop.get(worker_log, 0)
        self.say(f"[{phase.name}] broker {phase.node} back ({phase.log_lines} worker log lines)")
        if self.workers_exited:
            self.say(f"[{phase.name}] workers exited: {', '.join(self.workers_exited)}")
        phase.first_accepted = await self.await_accepted(phase.start_issued, recovery_timeout_s)
        for sender, first in phase.first_accepted.items():
            after = "none" if first is None else f"{max(0.0, first - phase.broker_back):.2f}s"
            self.say(f"[{phase.name}] first {sender} accept after the broker's return: {after}")

    async def outage(
        self,
        name: str,
        kind: FaultKind,
        down_s: float,
        node: int | None = None,
        recovery_timeout_s: float = 30.0,
    ) -> Phase:
        phase = await self.break_broker(name, kind, node)
        await self.hold(down_s)
        await self.restore(phase, recovery_timeout_s)
        return phase

    async def run(
        self, faults: Sequence[Fault], steady_s: float, settle_s: float = 15.0
    ) -> ScenarioReport:
        """The whole scenario: start, traffic, then each fault with steady traffic around it."""
        await self.start()
        await self.start_traffic()
        await self.await_serving()
        await self.hold(steady_s)
        for name, kind, down_s in faults:
            await self.outage(name, kind, down_s)
            await self.hold(steady_s)
        return await self.finish(settle_s=settle_s)

    async def node_leading_the_tenants(self) -> int:
        """The broker leading the MLLP tenant's ingress partition (node 2 if unknown)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.cluster.bootstrap)
        await admin.start()
        try:
            [description] = await admin.describe_topics([self.topics.ingress])
        finally:
            await admin.close()
        leaders = {p["partition"]: p["leader"] for p in description["partitions"]}
        partitions = sorted(leaders)
        if not partitions:
            return 2
        key = self.tenants["mllp"].id.encode()
        leader = leaders[DefaultPartitioner()(key, partitions, partitions)]
        return leader if 1 <= leader <= self.cluster.nodes else 2

    async def finish(self, settle_s: float = 15.0, drain_timeout_s: float = 60.0) -> ScenarioReport:
        """Stop new messages, let resends settle, read every out topic, compute the measures."""
        await asyncio.gather(*(sender.close(settle_s) for sender in self.senders))
        if self._progress is not None:
            self._progress.cancel()
        accepted = {s.name: {a.control_id for a in s.attempts if a.accepted} for s in self.senders}
        topics = {s.name: self.topics.out(s.tenant.id) for s in self.senders}

        reads = itertools.count()

        def all_arrived(records: list[Any]) -> bool:
            # Read at least once: what out holds also counts when nothing was accepted.
            seen = {json.loads(r.value)["control_id"] for r in records}
            return next(reads) > 0 and all(ids <= seen for ids in accepted.values())

        self.say("reading the out topics")
        records = await consume_until(
            self.cluster.bootstrap, topics.values(), all_arrived, drain_timeout_s
        )
        events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in records:  # consume_until keeps each partition's order
            events[record.topic].append(json.loads(record.value))
        report = build_report(self, {name: events[topic] for name, topic in topics.items()})
        self.say(f"done: {report.acked} accepted, {report.lost} lost")
        return report

    async def close(self) -> None:
        if self._progress is not None:
            self._progress.cancel()
        for sender in self.senders:
            await sender.close(0)
        for worker in self.workers:
            await asyncio.to_thread(worker.stop)
        try:
            await self.cluster.wipe()
        except HarnessError as error:
            log(f"could not wipe the throwaway cluster: {error}")

    async def _report_progress(self) -> None:
        reported = {s.name: 0 for s in self.senders}
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            parts = []
            for sender in self.senders:
                recent = sender.attempts[reported[sender.name] :]
                reported[sender.name] += len(recent)
                codes = Counter(a.code for a in recent)
                parts.append(
                    f"{sender.name} "
                    + (" ".join(f"{c}x{n}" for c, n in sorted(codes.items())) or "-")
                )
            self.say("last 5 s: " + " | ".join(parts))


# ---------------------------------------------------------------- measures


def build_report(scenario: Scenario, out_events: dict[str, list[dict[str, Any]]]) -> ScenarioReport:
    senders = scenario.senders
    first_sent: dict[str, float] = {}
    first_accepted: dict[str, float] = {}
    for sender in senders:
        for attempt in sender.attempts:
            first_sent.setdefault(attempt.control_id, attempt.sent_at)
            if attempt.accepted:
                first_accepted.setdefault(attempt.control_id, attempt.answered_at)
    arrived = {event["control_id"] for events in out_events.values() for event in events}
    lost_ids = sorted(set(first_accepted) - arrived, key=first_accepted.__getitem__)
    keys: dict[str, set[str]] = defaultdict(set)
    for events in out_events.values():
        for event in events:
            keys[event["control_id"]].add(event["idempotency_key"])

    phases = scenario.phases
    bounds = [scenario.t0, *(p.stop_issued for p in phases[1:]), math.inf]
    reports = [
        phase_report(scenario, phase, bounds[i], bounds[i + 1], first_accepted, set(lost_ids))
        for i, phase in enumerate(phases)
    ]
    sent_ids = set(first_sent)
    return ScenarioReport(
        nodes=scenario.cluster.nodes,
        phases=reports,
        acked=len(first_accepted),
        lost=len(lost_ids),
        lost_ids=lost_ids,
        duplicates_without_same_key=sum(len(k) > 1 for k in keys.values()),
        order_violations=sum(
            order_violations(out_events[s.name], first_sent, first_accepted) for s in senders
        ),
        never_accepted=len(sent_ids - set(first_accepted)),
        malformed_refusals=sum(not a.well_formed for s in senders for a in s.attempts),
        workers_exited=scenario.workers_exited,
        answer_codes={s.name: dict(Counter(a.code for a in s.attempts)) for s in senders},
        timeline=timeline(scenario),
        worker_log=scenario.worker.log_path,
        worker_log_tail=scenario.worker.log_tail(60),
    )


def phase_report(
    scenario: Scenario,
    phase: Phase,
    window_start: float,
    window_end: float,
    first_accepted: dict[str, float],
    lost: set[str],
) -> PhaseReport:
    in_window = {c for c, t in first_accepted.items() if window_start <= t < window_end}
    down = (phase.broker_gone, phase.start_issued)
    while_down = {
        s.name: [a for a in s.attempts if down[0] <= a.answered_at <= down[1]]
        for s in scenario.senders
    }
    recovery = {
        name: None if first is None else round(max(0.0, first - phase.broker_back), 3)
        for name, first in phase.first_accepted.items()
    }
    known = [r for r in recovery.values() if r is not None]
    return PhaseReport(
        name=phase.name,
        kind=phase.kind,
        node=phase.node,
        whole_cluster=phase.whole_cluster,
        stop_issued_s=round(scenario.at(phase.stop_issued), 3),
        broker_gone_s=round(scenario.at(phase.broker_gone), 3),
        start_issued_s=round(scenario.at(phase.start_issued), 3),
        broker_back_s=round(scenario.at(phase.broker_back), 3),
        acked=len(in_window),
        lost=len(in_window & lost),
        acked_while_down=(
            sum(a.accepted for attempts in while_down.values() for a in attempts)
            if phase.whole_cluster
            else None
        ),
        answers_while_down={
            name: dict(Counter(a.code for a in attempts)) for name, attempts in while_down.items()
        },
        ingest_recovery_s=max(known) if len(known) == len(recovery) and known else None,
        recovery_per_sender_s=recovery,
        log_lines_during_outage=phase.log_lines,
        max_answer_gap_s=round(
            max(
                answer_gap(s.attempts, phase.stop_issued, phase.broker_back)
                for s in scenario.senders
            ),
            3,
        ),
    )


def answer_gap(attempts: Sequence[Attempt], start: float, end: float) -> float:
    """Longest stretch of [start, end] without an answer (any code) to this sender."""
    times = [a.answered_at for a in attempts if a.answered and start <= a.answered_at <= end]
    edges = [start, *times, end]
    return max(b - a for a, b in itertools.pairwise(edges))


def order_violations(
    events: Sequence[dict[str, Any]], first_sent: dict[str, float], first_accepted: dict[str, float]
) -> int:
    """Events of accepted messages that come after an event whose message was first sent only
    after theirs was accepted: out must keep the order in which messages were first AA'd.

    Messages in flight at the same time (one refused but its write later landing, one accepted
    meanwhile) may land in either order; redeliveries and repeats of a control id are skipped.
    """
    violations = 0
    latest_first_send = -math.inf
    seen: set[str] = set()
    for event in events:
        control_id = event["control_id"]
        if control_id in seen or control_id not in first_accepted:
            continue
        seen.add(control_id)
        if first_accepted[control_id] < latest_first_send:
            violations += 1
        latest_first_send = max(latest_first_send, first_sent[control_id])
    return violations


def timeline(scenario: Scenario, max_runs: int = 24) -> str:
    """Phase times, then per sender its answers as runs of one code, e.g. `12.1-33.0s ARx21`."""
    lines = []
    for phase in scenario.phases:
        firsts = ", ".join(
            f"{name} {'-' if t is None else f'{scenario.at(t):.1f}s'}"
            for name, t in phase.first_accepted.items()
        )
        lines.append(
            f"{phase.name}: {phase.kind} node {phase.node} "
            f"issued {scenario.at(phase.stop_issued):.1f}s, "
            f"gone {scenario.at(phase.broker_gone):.1f}s, start issued "
            f"{scenario.at(phase.start_issued):.1f}s, back {scenario.at(phase.broker_back):.1f}s; "
            f"first accepted since: {firsts}; worker log +{phase.log_lines} lines"
        )
    for sender in scenario.senders:
        runs: list[tuple[str, float, float, int]] = []
        for attempt in sender.attempts:
            moment = scenario.at(attempt.answered_at)
            if runs and runs[-1][0] == attempt.code:
                code, start, _, count = runs[-1]
                runs[-1] = (code, start, moment, count + 1)
            else:
                runs.append((attempt.code, moment, moment, 1))
        shown = [f"{start:.1f}-{end:.1f}s {code}x{count}" for code, start, end, count in runs]
        if len(shown) > max_runs:
            half = max_runs // 2
            shown = [*shown[:half], f"... {len(shown) - max_runs} runs ...", *shown[-half:]]
        resends = sum(a.attempt > 1 for a in sender.attempts)
        lines.append(
            f"{sender.name} (tenant {sender.tenant.id}): {len(sender.attempts)} attempts, "
            f"{resends} resends, {sender.unsent_resends} left unsent: " + " | ".join(shown)
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- the benchmark
