"""The one harness of the tests and the benchmarks: worker settings, worker processes, free ports,
the broker probe and a polling consumer, the HTTP API client and an MLLP client.

Tests and benches both import it from here; tests never import `bench`. What is bench-only
(results dir, progress log, targets) lives in bench/common.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import aiohttp
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.mllp import Frame, MllpDecoder, frame
from streams.topics import TopicNames

REPO = Path(__file__).resolve().parents[2]
FAUST = Path(sys.executable).with_name("faust")
READY = b"Ready"  # what a Faust worker (and bench.passthrough) logs once it has its partitions


class HarnessError(RuntimeError):
    """A process, port or scenario the harness manages cannot go on; the message says why."""


def log(line: str) -> None:
    """Progress goes to stderr (a bench's stdout carries its one-line summary)."""
    print(line, file=sys.stderr, flush=True)


# Below Linux's ephemeral range (32768-60999): a port picked there can be taken as the source
# port of some outgoing connection before (or while) the worker binds it, e.g. on a restart.
_LISTEN_PORTS = range(20000, 32000)


def free_port() -> int:
    """A port nothing listens on now, outside the range the kernel hands to client sockets."""
    for port in random.sample(_LISTEN_PORTS, 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise HarnessError("no free port found between 20000 and 32000")


def default_bootstrap() -> str:
    """The broker `make kafka-up` starts, unless LANEWAY_KAFKA_BOOTSTRAP names another."""
    return os.environ.get("LANEWAY_KAFKA_BOOTSTRAP", "localhost:9092")


def fresh_ports() -> dict[str, str]:
    """Web, lane-web and MLLP ports of a worker of its own, so it clashes with no other."""
    return {
        "LANEWAY_WEB_PORT": str(free_port()),
        "LANEWAY_LANE_WEB_PORT": str(free_port()),
        "LANEWAY_MLLP_PORT": str(free_port()),
    }


def worker_env(
    bootstrap: str,
    app_id: str,
    data_dir: Path,
    *,
    topic_prefix: str | None = None,
    admin_token: str | None = None,
    **settings: str,
) -> dict[str, str]:
    """The LANEWAY_* settings of a worker that shares nothing with other workers on the host:
    its own app id (Kafka group), topic prefix (`<app id>.` unless given), data dir, ports and
    admin token (a random one unless given). `settings` are further ones by Settings field name
    (`lanes_enabled="false"` is LANEWAY_LANES_ENABLED)."""
    return {
        "LANEWAY_KAFKA_BOOTSTRAP": bootstrap,
        "LANEWAY_APP_ID": app_id,
        "LANEWAY_TOPIC_PREFIX": f"{app_id}." if topic_prefix is None else topic_prefix,
        "LANEWAY_DATA_DIR": str(data_dir),
        "LANEWAY_ADMIN_TOKEN": secrets.token_urlsafe(24) if admin_token is None else admin_token,
        **fresh_ports(),
        **laneway_names(settings),
    }


def own_worker_env(
    base: dict[str, str], name: str, data_dir: Path, **settings: str
) -> dict[str, str]:
    """A worker of its own beside the one `base` configures: its app id and topic prefix sit
    under base's (so a clean-up of base's prefix removes its topics too), so it neither takes
    partitions from that worker nor reads its ingress; own data dir and ports, the rest from
    base, then `settings` (by Settings field name, as for `worker_env`)."""
    return {
        **base,
        "LANEWAY_APP_ID": f"{base['LANEWAY_APP_ID']}-{name}",
        "LANEWAY_TOPIC_PREFIX": f"{base['LANEWAY_TOPIC_PREFIX']}{name}.",
        "LANEWAY_DATA_DIR": str(data_dir),
        **fresh_ports(),
        **laneway_names(settings),
    }


@contextlib.contextmanager
def suite_env(
    suite: str, data_dir: Path, admin_token: str, **settings: str
) -> Iterator[dict[str, str]]:
    """Settings of one test suite's workers on the default broker, with 4 ingress partitions:
    app id `laneway-<suite>-<run>` and topics `lw<suite>-<run>.`, so runs never see each other's
    data; the topics are deleted on the way out.

    A broker that does not answer is a set-up error, not a reason to skip: `make test` starts one.
    """
    bootstrap = default_bootstrap()
    if not asyncio.run(broker_answers(bootstrap, timeout_s=20.0)):
        raise HarnessError(f"no Kafka broker answers at {bootstrap}; run `make kafka-up`")
    run = uuid.uuid4().hex[:8]
    env = worker_env(
        bootstrap,
        f"laneway-{suite}-{run}",
        data_dir,
        topic_prefix=f"lw{suite}-{run}.",
        admin_token=admin_token,
        ingress_partitions="4",
        **settings,
    )
    try:
        yield env
    finally:
        # Faust's own topics start with the app id, Laneway's with the topic prefix.
        prefixes = env["LANEWAY_TOPIC_PREFIX"], env["LANEWAY_APP_ID"]
        asyncio.run(delete_topics_with_prefix(bootstrap, *prefixes))


def laneway_names(settings: dict[str, str]) -> dict[str, str]:
    """Settings by field name as the environment names them (`hold_down_s`: LANEWAY_HOLD_DOWN_S)."""
    return {f"LANEWAY_{name.upper()}": value for name, value in settings.items()}


class ChildProcess:
    """A subprocess (a Faust worker, the bench's pass-through) writing to its own log file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.command = command
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        """Start it and return at once; `start` or `ready` wait until it is ready."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            # A session of its own keeps the terminal's Ctrl-C away from it: its owner stops it.
            self._process = subprocess.Popen(
                self.command,
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start(self, ready_timeout_s: float = 90.0) -> None:
        """Start it and block until it is ready (for sync callers, e.g. fixtures)."""
        self.spawn()
        deadline = time.monotonic() + ready_timeout_s
        while not self._is_ready():
            if time.monotonic() > deadline:
                raise self._not_ready(ready_timeout_s)
            time.sleep(0.2)

    async def ready(self, timeout_s: float) -> None:
        """Return once a spawned process is ready, without blocking the event loop."""
        deadline = time.monotonic() + timeout_s
        while not self._is_ready():
            if time.monotonic() > deadline:
                raise self._not_ready(timeout_s)
            await asyncio.sleep(0.2)

    def _is_ready(self) -> bool:
        if not self.running:
            raise HarnessError(f"{self.name} exited during start-up:\n{self.log_tail()}")
        return READY in self.log_path.read_bytes()

    def _not_ready(self, timeout_s: float) -> HarnessError:
        return HarnessError(
            f"{self.name} not ready within {timeout_s:.0f}s; log {self.log_path}:\n"
            f"{self.log_tail()}"
        )

    def __enter__(self) -> Self:
        """Started until the `with` block ends, however it ends (a failed start included)."""
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        if self._process is None:
            raise HarnessError(f"{self.name} was not started")
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def check_alive(self) -> None:
        if not self.running:
            raise HarnessError(
                f"{self.name} is not running; log {self.log_path}:\n{self.log_tail()}"
            )

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> None:
        """SIGTERM for a clean shutdown, SIGKILL if it does not come in time."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(sig)
        try:
            self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def kill(self) -> None:
        """Hard crash: no shutdown, no final commit."""
        self.stop(signal.SIGKILL)

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class WorkerProcess(ChildProcess):
    """A real `faust -A <module> worker` subprocess; a web port of its own unless env sets one."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        *,
        module: str = "agents.worker",
        name: str = "worker",
    ) -> None:
        command = [str(FAUST), "-A", module, "worker", "-l", "info"]
        super().__init__(name, command, {"LANEWAY_WEB_PORT": str(free_port()), **env}, log_path)

    @property
    def topics(self) -> TopicNames:
        return TopicNames(self.env["LANEWAY_TOPIC_PREFIX"])

    @classmethod
    def lane(cls, env: dict[str, str], log_path: Path, name: str = "lane worker") -> WorkerProcess:
        """The dedicated-lane worker beside the shared worker `env` configures: its web server
        on that env's lane web port."""
        lane_env = {**env, "LANEWAY_WEB_PORT": env["LANEWAY_LANE_WEB_PORT"]}
        return cls(lane_env, log_path, module="agents.lane_worker", name=name)


async def broker_answers(bootstrap: str, timeout_s: float) -> bool:
    """True once the broker answers a metadata request, polling until the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        client = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        try:
            await client.start()
            await client.list_topics()
            return True
        except Exception:
            await asyncio.sleep(0.5)
        finally:
            await client.close()
    return False


async def delete_topics_with_prefix(bootstrap: str, *prefixes: str) -> None:
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await client.start()
    try:
        doomed = [topic for topic in await client.list_topics() if topic.startswith(prefixes)]
        if doomed:
            await client.delete_topics(doomed)
    finally:
        await client.close()


async def group_settles(bootstrap: str, group: str, members: int, timeout_s: float) -> bool:
    """True once the consumer group is stable (no rebalance under way) with `members` members."""
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await client.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            [response] = await client.describe_consumer_groups([group])
            [(_, _, state, _, _, found)] = response.groups
            if state == "Stable" and len(found) == members:
                return True
            await asyncio.sleep(0.2)
        return False
    finally:
        await client.close()


async def consume_until(
    bootstrap: str,
    topics: Iterable[str],
    done: Callable[[list[ConsumerRecord]], bool],
    timeout_s: float,
) -> list[ConsumerRecord]:
    """Read the topics from the beginning until `done(records)` holds or the deadline passes.

    Topics that do not exist yet are picked up as soon as they appear.
    """
    wanted = list(topics)
    records: list[ConsumerRecord] = []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        metadata_max_age_ms=500,
    )
    await consumer.start()
    try:
        assigned: set[TopicPartition] = set()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not done(records):
            # The cluster-wide metadata: the consumer's own only covers topics it already has,
            # so a topic created after the first assignment would never be picked up.
            metadata = await consumer._client.fetch_all_metadata()
            partitions = {
                TopicPartition(topic, partition)
                for topic in set(metadata.topics()) & set(wanted)
                for partition in metadata.partitions_for_topic(topic) or ()
            }
            if partitions - assigned:
                # Keep the read position of partitions already assigned; new ones start at 0.
                positions = {tp: await consumer.position(tp) for tp in assigned}
                consumer.assign(sorted(partitions))
                for tp in partitions:
                    consumer.seek(tp, positions.get(tp, 0))
                assigned = partitions
            if not assigned:
                await asyncio.sleep(0.2)
                continue
            batch = await consumer.getmany(timeout_ms=200)
            for tp in sorted(batch, key=lambda tp: (tp.topic, tp.partition)):
                records.extend(batch[tp])
        return records
    finally:
        await consumer.stop()


class Api:
    """A small client for the worker's HTTP API; `token=None` sends no Authorization header."""

    def __init__(self, base_url: str, admin_token: str) -> None:
        self.base_url = base_url
        self.admin_token = admin_token
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def of(cls, worker: ChildProcess) -> Api:
        """The API of a worker process, as its admin."""
        env = worker.env
        return cls(f"http://127.0.0.1:{env['LANEWAY_WEB_PORT']}", env["LANEWAY_ADMIN_TOKEN"])

    async def __aenter__(self) -> Api:
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None,
        json_body: object = None,
        data: bytes | None = None,
        content_type: str = "application/hl7-v2",
    ) -> tuple[int, Any]:
        """(status, parsed JSON body or None)."""
        assert self._session is not None
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        if data is not None:
            headers["Content-Type"] = content_type
        async with self._session.request(
            method, self.base_url + path, headers=headers, json=json_body, data=data
        ) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    async def onboard(self, tenant_id: str, **fields: Any) -> dict[str, Any]:
        """Create a tenant as admin; the answer includes its one-time `token`."""
        body = {"id": tenant_id, "name": f"Test {tenant_id}", "senders": [], **fields}
        status, answer = await self.call(
            "POST", "/api/tenants", token=self.admin_token, json_body=body
        )
        assert status == 201, answer
        return answer

    async def send(self, tenant_id: str, token: str | None, payload: bytes) -> tuple[int, Any]:
        return await self.call(
            "POST", f"/api/tenants/{tenant_id}/messages", token=token, data=payload
        )


ACK_TIMEOUT_S = 15.0
READ_BYTES = 64 * 1024


@dataclass(frozen=True)
class Sender:
    application: str  # MSH-3.1
    facility: str  # MSH-4.1


UNKNOWN_SENDER = Sender("NOBODY", "NOWHERE")


def message(
    sender: Sender,
    control_id: str,
    *,
    version: str = "2.5",
    accept_ack: str = "",
    application_ack: str = "",
    message_type: str = "ADT^A01^ADT_A01",
    encoding_characters: str = "^~\\&",
) -> bytes:
    """A small synthetic ADT with the MSH fields a test varies; segments end with CR."""
    msh = [
        "MSH",
        encoding_characters,
        sender.application,
        sender.facility,
        "LANEWAY",
        "LANEWAY_HUB",
        "20240101120000",
        "",
        message_type,
        control_id,
        "P",
        version,
        "",
        "",
        accept_ack,
        application_ack,
    ]
    segments = [
        "|".join(msh),
        "EVN|A01|20240101120000",
        "PID|1||MRN0000001^^^SIM^MR||TESTPATIENT^ALPHA||19800101|F",
        "PV1|1|I|WARD3^101^A^SIMHOSP",
    ]
    return ("\r".join(segments) + "\r").encode()


@dataclass(frozen=True)
class Ack:
    msh: list[str]  # MSH-n at index n
    msa: list[str]  # MSA-n at index n
    has_err: bool

    @property
    def code(self) -> str:
        return self.msa[1]

    @property
    def acked_id(self) -> str:
        return self.msa[2]


def parse_ack(payload: bytes) -> Ack:
    segments = payload.decode("utf-8", "replace").rstrip("\r").split("\r")
    assert segments[0].startswith("MSH"), segments[0][:3]
    separator = segments[0][3]
    msh = segments[0].split(separator)
    msh.insert(1, separator)
    others = {segment[:3]: segment.split(separator) for segment in segments[1:]}
    return Ack(msh, others["MSA"], "ERR" in others)


class MllpClient:
    """A plain asyncio MLLP sender: frames out, ACKs in, and a view of how the connection ends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = MllpDecoder(1024 * 1024)
        self._received: deque[bytes] = deque()

    async def send(self, *messages: bytes) -> None:
        await self.send_raw(b"".join(frame(m) for m in messages))

    async def send_raw(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def ack(self) -> Ack:
        """The next ACK; fails if the listener closes the connection instead."""
        async with asyncio.timeout(ACK_TIMEOUT_S):
            while not self._received:
                data = await self._reader.read(READ_BYTES)
                assert data, "the listener closed the connection instead of answering"
                self._take(data)
        return parse_ack(self._received.popleft())

    async def exchange(self, payload: bytes) -> Ack:
        await self.send(payload)
        return await self.ack()

    async def acks_until_closed(self) -> list[Ack]:
        """Every ACK still to come, until the listener closes; fails if it keeps it open."""
        async with asyncio.timeout(ACK_TIMEOUT_S):
            with contextlib.suppress(ConnectionResetError):  # a close with our bytes unread
                while data := await self._reader.read(READ_BYTES):
                    self._take(data)
        acks = [parse_ack(payload) for payload in self._received]
        self._received.clear()
        return acks

    def finish_sending(self) -> None:
        """Half-close: the listener reads EOF, while we can still read its answers."""
        self._writer.write_eof()

    def _take(self, data: bytes) -> None:
        for event in self._decoder.feed(data):
            assert isinstance(event, Frame), f"the listener broke MLLP framing: {event.kind}"
            self._received.append(event.payload)


@contextlib.asynccontextmanager
async def connection(port: int, source: str | None = None) -> AsyncIterator[MllpClient]:
    """A connection to the listener, from `source` (another loopback address, e.g. 127.0.0.2,
    for a distinct source address) if given."""
    local_addr = None if source is None else (source, 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=local_addr)
    try:
        yield MllpClient(reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
