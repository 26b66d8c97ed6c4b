"""Helpers for integration tests: broker probe, worker processes, and polling consumers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench.common import free_port

REPO = Path(__file__).resolve().parents[2]
FAUST = Path(sys.executable).with_name("faust")


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


class WorkerProcess:
    """A real `faust -A <module> worker` subprocess with its own log file."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        web_port: int | None = None,
        module: str = "agents.worker",
    ) -> None:
        self.env = {**os.environ, **env}
        self.module = module
        if web_port is not None:
            self.env["LANEWAY_WEB_PORT"] = str(web_port)
        self.env.setdefault("LANEWAY_WEB_PORT", str(free_port()))
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout_s: float = 90.0) -> None:
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [str(FAUST), "-A", self.module, "worker", "-l", "info"],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"worker exited during start-up:\n{self.log_tail()}")
            if b"Ready" in self.log_path.read_bytes():
                return
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready within {ready_timeout_s}s:\n{self.log_tail()}")

    def __enter__(self) -> WorkerProcess:
        """Started until the `with` block ends, however it ends (a failed start included)."""
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> None:
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
