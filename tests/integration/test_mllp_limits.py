"""MLLP resource limits on the real worker and broker: connection caps, the partial-frame
deadline (slowloris) and the buffered-bytes budget, each while a quiet tenant streams over HTTP
and a well-behaved MLLP sender keeps exchanging messages on a connection of its own.

Workers of their own (own app id and topics, no lane worker) carry small limits. Loopback
addresses other than 127.0.0.1 (127.0.0.2, ...) stand for distinct source addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from streams.mllp import frame
from tests.harness import (
    Ack,
    Api,
    MllpClient,
    Sender,
    WorkerProcess,
    connection,
    message,
    own_worker_env,
)
from tests.harness.quiet_tenant import MAX_LATENCY_S, quiet_tenant
from tests.integration.test_mllp import onboard
from tests.integration.test_stats import get, poll, scrape

pytestmark = pytest.mark.integration

PER_SOURCE = 3
TOTAL = 8
FRAME_TIMEOUT_S = 3.0
# The budget worker: a 64 KiB frame limit and room for four partial frames of it.
FRAME_LIMIT = 64 * 1024
BUDGET = 4 * FRAME_LIMIT
PARTIAL_BYTES = 60_000  # most of a frame, under the message limit so that it is accepted
SLOW_CONNECTIONS = 6
# Messages in one frame from a tenant whose ingest ceiling is 20 msg/s with a burst of 20 (a
# contract of 1 msg/s, burst 1, times the ceiling factor 20): its ACKs are held ~4 s.
CEILING_BATCH = 100
WAIT_S = 30.0


def own_worker(
    worker_env: dict, base: Path, name: str, **settings: str
) -> contextlib.AbstractContextManager[WorkerProcess]:
    """A shared worker of its own (own app id, topics, ports; lanes off) with extra settings."""
    env = own_worker_env(worker_env, name, base / "data", lanes_enabled="false", **settings)
    return WorkerProcess(env, base / f"{name}.log")


@pytest.fixture(scope="module")
def limited(worker_env: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """Three connections per source, eight in all, and a 3 s frame deadline."""
    with own_worker(
        worker_env,
        tmp_path_factory.mktemp("limited"),
        "limited",
        mllp_max_connections_per_source=str(PER_SOURCE),
        mllp_max_connections=str(TOTAL),
        mllp_frame_timeout_s=str(FRAME_TIMEOUT_S),
    ) as process:
        yield process


@pytest.fixture(scope="module")
def budgeted(worker_env: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """A 64 KiB frame limit and a buffer budget of four such frames; default deadlines."""
    with own_worker(
        worker_env,
        tmp_path_factory.mktemp("budgeted"),
        "budgeted",
        max_message_bytes=str(FRAME_LIMIT),
        mllp_max_frame_bytes="1024",
        mllp_max_buffered_bytes=str(BUDGET),
    ) as process:
        yield process


class Scene:
    """One worker as a test sees it: its API, topics, MLLP port and /metrics."""

    def __init__(self, worker: WorkerProcess, api: Api) -> None:
        self.worker, self.api = worker, api
        self.topics = worker.topics
        self.port = int(worker.env["LANEWAY_MLLP_PORT"])

    async def metrics(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        answer = await get(self.api.base_url, "/metrics")
        assert answer.status == 200
        return scrape(answer.body.decode())

    async def limit_hits(self) -> dict[str, float]:
        samples = (await self.metrics())["laneway_mllp_limit_hits_total"]
        return {dict(labels)["limit"]: value for labels, value in samples.items()}

    async def gauge(self, name: str) -> float:
        return (await self.metrics())[name][()]

    async def settle(self) -> dict[str, float]:
        """Wait until the listener has let go of every connection (earlier tests' included);
        the limit hits so far."""

        async def drained() -> bool | None:
            return await self.gauge("laneway_mllp_connections_open") == 0 or None

        assert await poll(drained, WAIT_S), "connections stayed open on the listener"
        return await self.limit_hits()


@contextlib.asynccontextmanager
async def scene(worker: WorkerProcess, admin_token: str) -> AsyncIterator[Scene]:
    async with Api.of(worker) as api:
        yield Scene(worker, api)


@contextlib.asynccontextmanager
async def well_behaved_sender(port: int, sender: Sender) -> AsyncIterator[list[float]]:
    """An MLLP sender exchanging one message after another (stop and wait, as interface engines
    do) on a connection of its own while the body runs. Yields the ACK latencies so far; on
    exit checks that every message got AA within MAX_LATENCY_S."""
    latencies: list[float] = []
    acks: list[Ack] = []
    stop = asyncio.Event()

    async def exchange() -> None:
        async with connection(port) as client:
            while not stop.is_set() or len(acks) < 10:
                sent = time.monotonic()
                acks.append(await client.exchange(message(sender, f"STEADY-{len(acks):05d}")))
                latencies.append(time.monotonic() - sent)

    task = asyncio.create_task(exchange())
    try:
        yield latencies
    finally:
        stop.set()
        await task
    assert [ack.code for ack in acks] == ["AA"] * len(acks)
    assert max(latencies) < MAX_LATENCY_S, f"a well-behaved ACK took {max(latencies):.1f}s"


async def test_connections_over_a_limit_are_closed_at_once_and_the_others_keep_their_aa(
    limited: WorkerProcess, admin_token: str, bootstrap: str
) -> None:
    async with scene(limited, admin_token) as lab:
        tenant = await onboard(lab.api, "capped")
        before = await lab.settle()

        async def exchange_all(clients: list[MllpClient], tag: str) -> list[str]:
            return [
                (await client.exchange(message(tenant.sender, f"{tag}-{index}"))).code
                for index, client in enumerate(clients)
            ]

        async with (
            quiet_tenant(lab.api, bootstrap, lab.topics),
            contextlib.AsyncExitStack() as stack,
        ):
            sources = ["127.0.0.2"] * PER_SOURCE
            first = [await stack.enter_async_context(connection(lab.port, s)) for s in sources]
            assert await exchange_all(first, "FIRST") == ["AA"] * PER_SOURCE

            over_source = await stack.enter_async_context(connection(lab.port, "127.0.0.2"))
            assert await over_source.acks_until_closed() == []  # closed, nothing answered
            assert await exchange_all(first, "FIRST-AGAIN") == ["AA"] * PER_SOURCE

            # The limit is per source: other addresses still get in, up to the total.
            sources = ["127.0.0.3"] * PER_SOURCE + ["127.0.0.4"] * (TOTAL - 2 * PER_SOURCE)
            others = [await stack.enter_async_context(connection(lab.port, s)) for s in sources]
            assert await exchange_all(others, "OTHER") == ["AA"] * len(others)

            over_total = await stack.enter_async_context(connection(lab.port, "127.0.0.5"))
            assert await over_total.acks_until_closed() == []
            assert await exchange_all(first + others, "ALL") == ["AA"] * TOTAL

        after = await lab.limit_hits()
        # A place freed is a place to take again.
        await lab.settle()
        async with connection(lab.port, "127.0.0.2") as again:
            assert (await again.exchange(message(tenant.sender, "AGAIN"))).code == "AA"

    assert after["connections_per_source"] == before["connections_per_source"] + 1
    assert after["connections_total"] == before["connections_total"] + 1


async def test_a_frame_trickled_a_byte_a_second_is_closed_at_the_frame_deadline(
    limited: WorkerProcess, admin_token: str, bootstrap: str
) -> None:
    async with scene(limited, admin_token) as lab:
        slow, steady = await onboard(lab.api, "trickle"), await onboard(lab.api, "steady")
        before = await lab.settle()
        unfinished = frame(message(slow.sender, "TRICKLE-1"))[:-2]  # no end block, ever

        async with (
            quiet_tenant(lab.api, bootstrap, lab.topics),
            well_behaved_sender(lab.port, steady.sender),
            connection(lab.port) as trickler,
        ):
            # A frame that takes its time but ends within the deadline is accepted.
            whole = frame(message(slow.sender, "SLOW-BUT-IN-TIME"))
            third = len(whole) // 3
            for piece in (whole[:third], whole[third : 2 * third], whole[2 * third :]):
                await asyncio.sleep(FRAME_TIMEOUT_S / 6)  # the pace of this sender
                await trickler.send_raw(piece)
            assert (await trickler.ack()).code == "AA"

            opened = time.monotonic()
            closed = asyncio.create_task(trickler.acks_until_closed())
            for byte in unfinished:  # a byte a second: never idle, never done
                with contextlib.suppress(ConnectionError):
                    await trickler.send_raw(bytes((byte,)))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(closed), 1.0)
                if closed.done():
                    break
            acks = await closed
            open_for_s = time.monotonic() - opened

        after = await lab.limit_hits()

    assert acks == []
    assert FRAME_TIMEOUT_S * 0.9 <= open_for_s < FRAME_TIMEOUT_S + MAX_LATENCY_S, open_for_s
    # Meanwhile the well-behaved sender's one connection outlived the deadline, unharmed.
    assert after["frame_timeout"] == before["frame_timeout"] + 1


async def test_time_spent_answering_earlier_frames_does_not_count_against_the_next(
    limited: WorkerProcess, admin_token: str, bootstrap: str
) -> None:
    """A frame of 100 messages from a tenant with a 20 msg/s ceiling has its ACKs held ~4 s,
    past the 3 s frame deadline. The next frame, started in the same write and finished once
    those ACKs came, is answered: its deadline runs from when Laneway got to it."""
    sender = Sender("HELD-APP", f"HELD-{uuid.uuid4().hex[:8].upper()}")
    senders = [{"application": sender.application, "facility": sender.facility}]
    async with scene(limited, admin_token) as lab:
        await lab.api.onboard(
            f"held-{uuid.uuid4().hex[:8]}", senders=senders, rate_per_s=1, burst=1
        )
        before = await lab.settle()
        batch = b"".join(message(sender, f"HELD-{index:03d}") for index in range(CEILING_BATCH))
        following = frame(message(sender, "FOLLOWING"))
        async with quiet_tenant(lab.api, bootstrap, lab.topics), connection(lab.port) as client:
            sent = time.monotonic()
            await client.send_raw(frame(batch) + following[:10])
            held = [await client.ack() for _ in range(CEILING_BATCH)]
            held_for_s = time.monotonic() - sent
            await client.send_raw(following[10:])
            after_hold = await client.ack()
        after = await lab.limit_hits()

    assert held_for_s > FRAME_TIMEOUT_S, "the ceiling did not hold the ACKs past the deadline"
    assert [ack.code for ack in held] == ["AA"] * CEILING_BATCH
    assert (after_hold.code, after_hold.acked_id) == ("AA", "FOLLOWING")
    assert after["frame_timeout"] == before["frame_timeout"]


async def test_partial_frames_past_the_buffer_budget_wait_while_small_frames_flow(
    budgeted: WorkerProcess, admin_token: str, bootstrap: str
) -> None:
    async with scene(budgeted, admin_token) as lab:
        big, steady = await onboard(lab.api, "big"), await onboard(lab.api, "steady")
        before = await lab.settle()
        wholes = [
            frame(padded(message(big.sender, f"BIG-{index}"), PARTIAL_BYTES))
            for index in range(SLOW_CONNECTIONS)
        ]

        async def room_was_short() -> bool | None:
            hits = await lab.limit_hits()
            return hits["buffered_bytes"] > before["buffered_bytes"] or None

        async with (
            quiet_tenant(lab.api, bootstrap, lab.topics),
            contextlib.AsyncExitStack() as stack,
        ):
            slow = [
                await stack.enter_async_context(connection(lab.port, "127.0.0.2")) for _ in wholes
            ]
            for client, whole in zip(slow, wholes, strict=True):
                await client.send_raw(whole[:-2])  # all of it but the end block, then stall
            assert await poll(room_was_short, WAIT_S), "no connection ever waited for room"

            async with well_behaved_sender(lab.port, steady.sender):
                # Held bytes stay within the budget while small frames keep flowing beside.
                held = [await lab.gauge("laneway_mllp_buffered_bytes") for _ in range(10)]

            # The stalled senders finish: every frame, paused or not, is answered.
            for client, whole in zip(slow, wholes, strict=True):
                await client.send_raw(whole[-2:])
            acks = [await client.ack() for client in slow]

        async def all_let_go() -> bool | None:
            return await lab.gauge("laneway_mllp_buffered_bytes") == 0 or None

        assert await poll(all_let_go, WAIT_S), "buffered bytes were not given back"
        after = await lab.limit_hits()

    assert max(held) <= BUDGET
    assert min(held) > BUDGET - FRAME_LIMIT  # full: no room for one more frame
    assert [(ack.code, ack.acked_id) for ack in acks] == [
        ("AA", f"BIG-{index}") for index in range(SLOW_CONNECTIONS)
    ]
    assert after["frame_timeout"] == before["frame_timeout"]  # paused, never cut off


def padded(payload: bytes, size: int) -> bytes:
    """`payload` with an NTE segment that brings it to `size` bytes."""
    return payload + b"NTE|1||" + b"x" * (size - len(payload) - len(b"NTE|1||\r")) + b"\r"
