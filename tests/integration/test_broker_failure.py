"""With the broker down, senders are never told AA/202; after it is back, resends land once.

Runs its own throwaway broker (second port, own data) so stopping it disturbs no other test.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.hl7.synthetic import SyntheticFeed
from streams.processing import guess_control_id
from streams.topics import TopicNames
from tests.harness import REPO, Api, WorkerProcess, consume_until, free_port, own_worker_env

pytestmark = pytest.mark.integration

KAFKA_SCRIPT = REPO / "scripts" / "kafka.sh"


class ThrowawayBroker:
    def __init__(self, run_dir: Path) -> None:
        port = free_port()
        self.bootstrap = f"127.0.0.1:{port}"
        self.env = {
            **os.environ,
            "LANEWAY_RUN_DIR": str(run_dir),
            "LANEWAY_KAFKA_PORT": str(port),
            "LANEWAY_KAFKA_CONTROLLER_PORT": str(free_port()),
            "LANEWAY_KAFKA_LIBS": str(REPO / ".run" / "kafka" / "libs"),
        }
        self.env.pop("LANEWAY_KAFKA_BOOTSTRAP", None)

    def run(self, command: str) -> None:
        subprocess.run(["bash", str(KAFKA_SCRIPT), command], env=self.env, check=True)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[ThrowawayBroker]:
    broker = ThrowawayBroker(tmp_path / "run")
    broker.run("up")
    try:
        yield broker
    finally:
        broker.run("wipe")


async def test_no_positive_ack_while_the_broker_is_down_and_resends_land_once(
    broker: ThrowawayBroker, worker_env: dict, tmp_path: Path
) -> None:
    env = own_worker_env(
        worker_env,
        "outage",
        tmp_path / "data",
        kafka_bootstrap=broker.bootstrap,
        ingest_timeout_s="1",
    )
    topics = TopicNames(env["LANEWAY_TOPIC_PREFIX"])
    worker = WorkerProcess(env, tmp_path / "worker.log")
    worker.start()
    feed = SyntheticFeed(seed=42, control_id_prefix="OUTAGE-", escape_rate=0)
    before, during = feed.messages(20), feed.messages(10)
    try:
        async with Api.of(worker) as api:
            tenant = await api.onboard("outage")
            for payload in before:
                status, _ = await api.send("outage", tenant["token"], payload)
                assert status == 202
            await consume_until(
                broker.bootstrap, [topics.out("outage")], lambda got: len(got) >= 20, 30
            )

            broker.run("down")
            outage_statuses = [
                (await api.send("outage", tenant["token"], payload))[0] for payload in during
            ]
            broker.run("up")

            # Resend until the worker writes again, then everything that was refused.
            deadline = time.monotonic() + 60
            while (await api.send("outage", tenant["token"], during[0]))[0] != 202:
                assert time.monotonic() < deadline, worker.log_tail()
            for payload in during[1:]:
                status, answer = await api.send("outage", tenant["token"], payload)
                assert status == 202, answer
        expected = {guess_control_id(m) for m in before + during}
        records = await consume_until(
            broker.bootstrap,
            [topics.out("outage")],
            lambda got: expected <= {json.loads(r.value)["control_id"] for r in got},
            60,
        )
    finally:
        worker.stop()

    assert set(outage_statuses) == {503}, "a sender was told 202 while the broker was down"
    keys_per_control_id: dict[str, set[str]] = defaultdict(set)
    for record in records:
        event = json.loads(record.value)
        keys_per_control_id[event["control_id"]].add(event["idempotency_key"])
    assert set(keys_per_control_id) == expected, worker.log_tail()
    # Each message was accepted exactly once, so it carries one idempotency key; redelivered
    # copies (at least once) repeat that key and consumers drop them.
    assert {c: k for c, k in keys_per_control_id.items() if len(k) > 1} == {}
