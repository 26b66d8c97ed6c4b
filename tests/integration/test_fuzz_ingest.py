"""Fuzzed ingest on the real worker and broker: hypothesis-generated MLLP traffic and HTTP bodies
of every fault class (tests/harness/faults.py: oversize, multi-message, mixed identities, binary
junk, encodings, malformed segments, short MSH, partial frames, slow writes) sent to one tenant
while a quiet tenant on the same ingress partition streams beside it.

Every fault input is accounted for (refused with a reason or the connection closed for its
framing, or accepted and then in the tenant's out or DLQ exactly once; nothing in any other
tenant's topics), nothing is lost, and the quiet tenant's p99 (202 -> arrival on its out topic)
with faults stays within 2x of its p99 without them.

The worker runs with a 64 KiB size contract so oversize inputs stay cheap. The worker is a real
process, so hypothesis drives it from a thread: each example (one input of every class, drawn
by hypothesis) runs as one async session on the test's event loop, where the quiet tenant
streams all along. Examples are derandomized and not shrunk, so the run is reproducible and
bounded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.harness import Api, WorkerProcess
from tests.harness.faults import (
    FAULT_CLASSES,
    MAX_MESSAGE_BYTES,
    P99_RATIO_TARGET,
    WARMUP_S,
    FaultScene,
    Outcome,
    p99_ms,
)
from tests.harness.quiet_tenant import quiet_tenant
from tests.integration.test_mllp import own_worker  # noqa: F401  (a fixture, used by name)

pytestmark = pytest.mark.integration

T = TypeVar("T")

# Long enough for a stable p99 of the quiet tenant (~20 messages/s) on a busy 2-core machine.
STEADY_S = 15.0
EXAMPLES = 8  # each sends one input of every class: 72 fault inputs
AT_ONCE = 4  # fault inputs in flight at a time
EXAMPLE_TIMEOUT_S = 60.0


class HypothesisDraw:
    """The harness's fault `Draw` over hypothesis' `data()`: hypothesis makes the choices."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def integer(self, low: int, high: int) -> int:
        return self.data.draw(st.integers(low, high))

    def choice(self, options: Sequence[T]) -> T:
        return self.data.draw(st.sampled_from(options))

    def binary(self, min_size: int, max_size: int) -> bytes:
        return self.data.draw(st.binary(min_size=min_size, max_size=max_size))


@pytest.fixture
async def small_api(
    own_worker: Callable[..., WorkerProcess],  # noqa: F811
    admin_token: str,
) -> AsyncIterator[tuple[Api, WorkerProcess]]:
    """A worker of its own with a 64 KiB size contract (no lane worker: lanes off)."""
    worker = own_worker(max_message_bytes=str(MAX_MESSAGE_BYTES), lanes_enabled="false")
    async with Api.of(worker) as api:
        yield api, worker


def run_examples(scene: FaultScene, loop: asyncio.AbstractEventLoop) -> list[Outcome]:
    """Hypothesis' examples, each sent on `loop` (run from a thread; the loop keeps serving)."""
    outcomes: list[Outcome] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],  # no shrinking: a bounded budget against a real worker
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def example(data: st.DataObject) -> None:
        draw = HypothesisDraw(data)
        cases = [scene.build(kind, draw) for kind in FAULT_CLASSES]
        sent = asyncio.run_coroutine_threadsafe(scene.send_all(cases, AT_ONCE), loop)
        outcomes.extend(sent.result(EXAMPLE_TIMEOUT_S))

    example()
    return outcomes


async def test_fuzzed_faults_are_accounted_for_and_the_quiet_tenant_keeps_its_pace(
    small_api: tuple[Api, WorkerProcess], bootstrap: str
) -> None:
    api, worker = small_api
    topics = worker.topics
    async with quiet_tenant(api, bootstrap, topics) as quiet:
        scene = await FaultScene.onboard(
            api,
            beside=quiet.tenant_id,
            mllp_port=int(worker.env["LANEWAY_MLLP_PORT"]),
            bootstrap=bootstrap,
            topics=topics,
            partitions=int(worker.env["LANEWAY_INGRESS_PARTITIONS"]),
            max_message_bytes=MAX_MESSAGE_BYTES,
            frame_limit=4 * 1024 * 1024,  # the default MLLP frame limit, above the contract
        )
        await asyncio.sleep(WARMUP_S)  # outside both measurement windows
        steady_start = time.monotonic()
        await asyncio.sleep(STEADY_S)  # the steady measurement window, not a synchronisation
        faults_start = time.monotonic()
        outcomes = await asyncio.to_thread(run_examples, scene, asyncio.get_running_loop())
        faults_end = time.monotonic()
    # quiet_tenant has checked that every quiet message arrived, each within a few seconds.

    accounting = await scene.account(outcomes)
    classes = accounting.by_class()
    assert accounting.problems() == [], (classes, worker.log_tail())
    assert accounting.faults_accounted == accounting.faults_sent == EXAMPLES * len(FAULT_CLASSES)
    assert accounting.lost == 0
    # Every class ran; the ones that must reach Kafka did.
    assert all(found["sent"] == EXAMPLES for found in classes.values()), classes
    assert classes["bad_segment"]["fates"].get("dlq", 0) == EXAMPLES, classes
    steady = p99_ms(quiet, steady_start, faults_start)
    with_faults = p99_ms(quiet, faults_start, faults_end)
    assert steady is not None and with_faults is not None
    assert with_faults <= P99_RATIO_TARGET * steady, (
        f"quiet p99 {with_faults} ms with faults vs {steady} ms steady"
    )
