"""Chaos under lanes (issue 14): 3 shared and 2 lane workers on a broker of the bench's own, ≥ 50
tenants, two of them flooding in turns, while workers are killed (-9) and restarted, the broker
restarts, a shared worker joins and one leaves, and tenants are pinned, paused and resumed.

The deployment: `tests.harness.scale.Scene` on a throwaway Kafka (`ThrowawayCluster`, as
bench/outage.py runs one: the bench restarts it, so never the shared development broker).
Tenants, all over HTTP, stop-and-wait (`TenantSender`):
- 2 flooders (contract 10/s): 1 msg/s, but in its turn one floods at 100 msg/s for 30 s, so the
  routers promote it to a dedicated lane and, after the hold-down, demote it. The flood goes
  straight into ingress, as another producer's would (`Scene.produce`: acks=all, in order):
  HTTP ingest writes a body's messages one by one, too slowly for one sender to flood;
- `CHURN_TENANTS` churn tenants (contract 5/s, 1 msg/s): with the flooders, the targets of the
  random pins, pauses and resumes (a flooder in its turn is left alone: resumed and unpinned as
  the turn starts);
- the quiet tenants, all the others (contract 5/s, 1 msg/s: 4x the contract, the promotion
  threshold, is 20/s): never touched; the latency, gap and spurious-promotion measures are theirs.

Faults, one at a time (`plan_faults`): a kill -9 of a random worker (shared or lane) every
`--kill-every-s`, restarted at once; a shared worker added at a quarter of the run, the broker
restarted (graceful stop, start) at 45 %, a shared worker removed (SIGTERM) at 70 %, each half-way
between two kills. A fault due while another runs waits for it, and FAULT_SPACING_S more. Admin
actions come every 8-20 s. At the end every paused tenant is resumed, traffic stops, every out
and DLQ topic is read and checked (`tests.harness.scale.check`).

Measures, besides `check`'s: a quiet message's latency runs from its 202 to the Kafka timestamp of
its first out/DLQ record (`quiet_p99_ms`; `quiet_p99_during_faults_ms` over those accepted from a
fault's start to FAULT_TAIL_S after its end); `max_quiet_gap_s` is `longest_gap` over the quiet
tenants; `spurious_promotions` counts `spurious` moves on the control topic; `rebalances` those
`count_rebalances` sees in the shared and lane worker groups, polled every second;
`router_rss_max_mb` is the highest RSS of a shared worker (the router's process). Traffic runs
for WARMUP_S before the run's clock starts (a tenant's out topic is created on its first
message); the quiet measures count the messages accepted after it.

    python -m bench.chaos [--duration-s 600] [--seed N] [--tenants 50] [--quiet-rate 1]
                          [--kill-every-s 60]

Writes bench/results/chaos.json and chaos.png (quiet-tenant p99 per second, faults marked);
prints PASS/FAIL per target and exits 1 if one fails. Message bodies are never logged.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import json
import logging
import math
import os
import random
import secrets
import shutil
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import aiohttp
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.common import REPO, RESULTS_DIR, git_commit, log, new_run_id, run_bench, targets_verdict
from streams.settings import Settings
from tests.harness import HarnessError, consume_until, worker_env
from tests.harness.outage import ThrowawayCluster
from tests.harness.scale import (
    Accepted,
    Delivery,
    ScaleReport,
    Scene,
    TenantSender,
    check,
    end_offsets,
)

DURATION_S = 600.0
KILL_EVERY_S = 60.0
TENANTS = 50
QUIET_RATE = 1.0
QUIET_CONTRACT = 5  # msgs/s; burst 2x
FLOOD_CONTRACT = 10
FLOOD_RATE = 100.0  # 10x the contract: promoted (above 4x and 20/s), below ingest's 20x ceiling
FLOOD_S = 30.0
FLOODERS = 2
CHURN_TENANTS = 4
ADMIN_EVERY_S = (8.0, 20.0)
STATUS_EVERY_S = 10.0
WARMUP_S = 20.0
REBALANCE_POLL_S = 1.0
# A fault's effects outlast it: the session timeout (10 s) of a killed member, a rebalance and
# the routers' restore. Quiet messages accepted within this long after a fault ended count as
# "during faults".
FAULT_TAIL_S = 20.0
FAULT_SPACING_S = 15.0
CALL_TIMEOUT_S = 15.0
RESUME_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 300.0
INGRESS_PARTITIONS = 6
MAX_QUIET_GAP_S = 15.0
MIB = 1024 * 1024

FaultKind = Literal["kill", "broker_restart", "add", "remove"]
# Where each non-kill fault falls, as a fraction of the run (then moved half-way between kills).
FAULT_FRACTIONS: tuple[tuple[FaultKind, float], ...] = (
    ("add", 0.25),
    ("broker_restart", 0.45),
    ("remove", 0.70),
)

TARGETS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "lost == 0": lambda r: r["lost"] == 0,
    "order_violations == 0": lambda r: r["order_violations"] == 0,
    "duplicates_without_same_key == 0": lambda r: r["duplicates_without_same_key"] == 0,
    "spurious_promotions == 0": lambda r: r["spurious_promotions"] == 0,
    f"max_quiet_gap_s <= {MAX_QUIET_GAP_S:g}": lambda r: (
        r["max_quiet_gap_s"] is not None and r["max_quiet_gap_s"] <= MAX_QUIET_GAP_S
    ),
}


# ---------------------------------------------------------------- measures (pure)


def plan_faults(duration_s: float, kill_every_s: float) -> list[tuple[float, FaultKind]]:
    """(seconds into the run, kind), in order: a kill every `kill_every_s`, and each of
    `FAULT_FRACTIONS` half-way between the two kills around its fraction of the run."""
    planned: list[tuple[float, FaultKind]] = [
        (kill_every_s * n, "kill") for n in range(1, math.ceil(duration_s / kill_every_s))
    ]
    for kind, fraction in FAULT_FRACTIONS:
        planned.append(
            ((math.floor(fraction * duration_s / kill_every_s) + 0.5) * kill_every_s, kind)
        )
    return sorted(planned, key=lambda entry: entry[0])


def flood_turns(duration_s: float, flooders: int = FLOODERS) -> list[tuple[float, float, int]]:
    """(start, end, flooder index): four turns, taken in turn, each starting its quarter of the
    run with a flood of FLOOD_S (shorter in a short run), so the same flooder floods again only
    after half the run (10 min: 300 s, past the 120 s hold-down and the drain)."""
    turn = duration_s / 4
    length = min(FLOOD_S, turn / 3)
    return [(i * turn + 10.0, i * turn + 10.0 + length, i % flooders) for i in range(4)]


def first_arrivals(deliveries: Iterable[Delivery]) -> dict[str, float]:
    """control id -> when (s, the out/DLQ record's Kafka timestamp) it first came out."""
    arrivals: dict[str, float] = {}
    for delivery in deliveries:
        if delivery.control_id is None:
            continue
        at = delivery.timestamp_ms / 1000
        arrivals[delivery.control_id] = min(at, arrivals.get(delivery.control_id, at))
    return arrivals


def latencies(
    accepted: Iterable[Accepted], arrivals: dict[str, float]
) -> list[tuple[float, float]]:
    """(accepted at, seconds from the accept to the first downstream record) of every accepted
    message that came out; an event written before the HTTP answer reached the sender is 0."""
    return [
        (a.accepted_at, max(0.0, arrivals[a.control_id] - a.accepted_at))
        for a in accepted
        if a.control_id in arrivals
    ]


def p99(values: Iterable[float]) -> float | None:
    """Nearest-rank 99th percentile; None without values."""
    ordered = sorted(values)
    return ordered[math.ceil(0.99 * len(ordered)) - 1] if ordered else None


def p99_per_second(samples: Iterable[tuple[float, float]], t0: float) -> list[tuple[int, float]]:
    """(second since t0, p99) of the samples (time, value), by the second their time falls in."""
    by_second: dict[int, list[float]] = defaultdict(list)
    for at, value in samples:
        by_second[math.floor(at - t0)].append(value)
    return [(second, p99(values) or 0.0) for second, values in sorted(by_second.items())]


def longest_gap(
    waits: Iterable[tuple[float, float]], uncounted: Sequence[tuple[float, float]] = ()
) -> tuple[float, float | None]:
    """(seconds, start) of the longest time one tenant had messages accepted and waiting, yet
    nothing of it came out downstream; waits are (accepted at, first out at) of its messages.

    While a message waits (accepted, not yet out) the tenant is sending; every first arrival
    inside such a span ends a gap. Spans where nothing waited (the sender idle, paused or
    refused) are no gap. Time inside the `uncounted` windows is left out of a gap's length."""
    spans = sorted((accepted, max(accepted, out)) for accepted, out in waits)
    outs = sorted(out for _, out in spans)
    longest: tuple[float, float | None] = (0.0, None)
    merged: list[list[float]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    for start, end in merged:
        points = [start, *outs[bisect.bisect_right(outs, start) : bisect.bisect_right(outs, end)]]
        for before, after in itertools.pairwise(points):
            left_out = sum(max(0.0, min(after, e) - max(before, s)) for s, e in uncounted)
            if after - before - left_out > longest[0]:
                longest = (after - before - left_out, before)
    return longest


def spurious(moves: Iterable[dict[str, Any]], bursting: set[str]) -> list[dict[str, Any]]:
    """The promotions for rate (control-topic moves `rate_above_contract`) of tenants that
    never burst, once each (a move re-read after a restart is the same move)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for move in moves:
        if move.get("reason") == "rate_above_contract" and move.get("tenant") not in bursting:
            found.setdefault((str(move.get("tenant")), str(move.get("at"))), move)
    return list(found.values())


def count_rebalances(samples: Iterable[tuple[str, frozenset[str]]]) -> int:
    """Rebalances of one consumer group seen by polling its (state, member ids): each entry into
    PreparingRebalance / CompletingRebalance, and a member set that changed between two Stable
    samples (a rebalance over between two polls)."""
    count = 0
    rebalancing = False
    members: frozenset[str] | None = None
    for state, found in samples:
        if state in ("PreparingRebalance", "CompletingRebalance"):
            count += not rebalancing
            rebalancing = True
        elif state == "Stable":
            count += not rebalancing and members is not None and found != members
            rebalancing = False
            members = found
    return count


def within(at: float, windows: Iterable[tuple[float, float]]) -> bool:
    return any(start <= at <= end for start, end in windows)


def evaluate(results: dict[str, Any]) -> dict[str, bool]:
    """Target -> met."""
    return {name: met(results) for name, met in TARGETS.items()}


# ---------------------------------------------------------------- the run


@dataclass
class Fault:
    kind: FaultKind
    target: str
    start: float  # time.time()
    end: float | None = None
    error: str | None = None

    def window(self) -> tuple[float, float]:
        return self.start, (self.end or self.start) + FAULT_TAIL_S


@dataclass
class AdminAction:
    at: float
    action: str  # pause, resume, pin:<shared|dedicated|auto>
    tenant: str
    ok: bool


@dataclass
class Chaos:
    scene: Scene
    cluster: ThrowawayCluster
    args: argparse.Namespace
    t0: float = field(default_factory=time.time)
    flooders: list[TenantSender] = field(default_factory=list)
    churn: list[TenantSender] = field(default_factory=list)
    quiet: list[TenantSender] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    actions: list[AdminAction] = field(default_factory=list)
    floods: list[tuple[float, float, str]] = field(default_factory=list)  # start, end, tenant
    paused: set[str] = field(default_factory=set)
    pins: dict[str, str] = field(default_factory=dict)
    flooding: str | None = None  # the flooder in its turn
    exits: list[dict[str, Any]] = field(default_factory=list)  # workers that ended on their own
    failures: list[str] = field(default_factory=list)  # the bench's own loops that failed
    group_samples: dict[str, list[tuple[str, frozenset[str]]]] = field(default_factory=dict)
    _removed: set[str] = field(default_factory=set)
    _fault_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _over: asyncio.Event = field(default_factory=asyncio.Event)

    def at(self, moment: float | None = None) -> float:
        return (time.time() if moment is None else moment) - self.t0

    def say(self, line: str) -> None:
        log(f"  {self.at():6.1f}s  {line}")

    # ------------------------------------------------------------ set-up

    async def onboard(self) -> None:
        scene = self.scene
        for index in range(FLOODERS):
            sender = await scene.onboard(
                "flood", f"F{index}", rate_per_s=FLOOD_CONTRACT, burst=2 * FLOOD_CONTRACT
            )
            self.flooders.append(sender)
        quiet_fields = {"rate_per_s": QUIET_CONTRACT, "burst": 2 * QUIET_CONTRACT}
        for index in range(self.args.tenants - FLOODERS):
            churn = index < CHURN_TENANTS
            sender = await scene.onboard(
                "churn" if churn else "quiet", f"T{index:03d}", **quiet_fields
            )
            (self.churn if churn else self.quiet).append(sender)
        self.say(
            f"onboarded {len(self.flooders)} flooders, {len(self.churn)} churn and "
            f"{len(self.quiet)} quiet tenants"
        )

    # ------------------------------------------------------------ the run

    async def run(self) -> None:
        """Traffic, faults, admin actions and status lines for the run's duration; then every
        paused tenant resumed."""
        for sender in self.scene.senders.values():
            self.scene.send(sender, self.args.quiet_rate)
        # Each tenant's first message waits for its out topic to be created: seconds, which
        # are start-up, not a fault. The measures (and the clock) start after this.
        self.say(f"warm-up: {WARMUP_S:g} s of traffic before the run's clock starts")
        await asyncio.sleep(WARMUP_S)
        self.t0 = time.time()
        faults = asyncio.create_task(self._faults(), name="_faults")
        loops = [
            asyncio.create_task(loop(), name=loop.__name__)
            for loop in (self._floods, self._admin, self._status, self._watch_groups)
        ]
        for task in [faults, *loops]:
            task.add_done_callback(self._note_failure)
        try:
            await asyncio.sleep(self.args.duration_s)
            self._over.set()
            self.say("run over: waiting for the fault under way, then resuming paused tenants")
            await faults
        finally:  # and on an interrupt: nothing may restart a worker the scene is stopping
            for task in [faults, *loops]:
                task.cancel()
            await asyncio.gather(faults, *loops, return_exceptions=True)
        await self._resume_all()

    def _note_failure(self, task: asyncio.Task[None]) -> None:
        """A loop that ended by an error: said at once and listed in the results."""
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            self.failures.append(f"{task.get_name()}: {error!r}")
            self.say(f"FAILED: {self.failures[-1]}")

    async def _faults(self) -> None:
        faults_rng = random.Random(self.args.seed)
        last_end = 0.0
        for offset, kind in plan_faults(self.args.duration_s, self.args.kill_every_s):
            # A fault made late by a long one before it (a broker restart took 40-55 s here)
            # still leaves the deployment FAULT_SPACING_S to recover: a kill 0.1 s after the
            # broker's return measured the two at once.
            delay = max(self.t0 + offset, last_end + FAULT_SPACING_S) - time.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._over.wait(), delay)
            if self._over.is_set():
                return
            async with self._fault_lock:
                await self._fault(kind, faults_rng)
            last_end = time.time()

    async def _fault(self, kind: FaultKind, rng: random.Random) -> None:
        scene = self.scene
        running = sorted(
            (w for w in [*scene.shared, *scene.lane_workers] if w.running), key=lambda w: w.name
        )
        shared = [w for w in running if w in scene.shared]
        target = {
            "kill": lambda: rng.choice(running).name,
            "broker_restart": lambda: "broker",
            "add": lambda: "shared",
            "remove": lambda: rng.choice(shared).name,
        }[kind]()
        fault = Fault(kind, target, time.time())
        self.faults.append(fault)
        self.say(f"FAULT {kind} {target}")
        try:
            if kind == "kill":
                [worker] = [w for w in running if w.name == target]
                await scene.kill(worker)
                await scene.restart(worker)
            elif kind == "broker_restart":
                await self.cluster.stop_node(1)
                self.say("broker stopped; starting it again")
                await self.cluster.start_node(1)
            elif kind == "add":
                fault.target = (await scene.add_shared()).name
            else:
                [worker] = [w for w in shared if w.name == target]
                self._removed.add(worker.name)
                await scene.stop_shared(worker)
        except HarnessError as error:  # e.g. the group not settled in time: the run goes on
            fault.error = str(error).splitlines()[0]
            self.say(f"FAULT {kind} {fault.target}: {fault.error}")
        fault.end = time.time()
        self.say(f"FAULT {kind} {fault.target} done in {fault.end - fault.start:.1f} s")

    async def _floods(self) -> None:
        for start, end, index in flood_turns(self.args.duration_s):
            flooder = self.flooders[index]
            await asyncio.sleep(max(0.0, self.t0 + start - time.time()))
            # Its turn is left alone: the routers are to promote it for its rate, then demote it.
            self.flooding = flooder.tenant
            if flooder.tenant in self.paused:
                await self._admin_action(flooder.tenant, "resume")
            if self.pins.get(flooder.tenant, "auto") != "auto":
                await self._admin_action(flooder.tenant, "pin:auto")
            try:
                await self.scene.hold(flooder)  # its HTTP stream, until the flood is written
            except HarnessError:  # a POST still unanswered: a flood now could overtake it
                self.say(f"flood: {flooder.tenant} skips its turn (a POST unanswered)")
                self.scene.send(flooder, self.args.quiet_rate)
                self.flooding = None
                continue
            self.say(f"flood: {flooder.tenant} at {FLOOD_RATE:g} msg/s for {end - start:.0f} s")
            began, before = time.time(), len(flooder.accepted)
            await self._flood(flooder, self.t0 + end)
            self.scene.send(flooder, self.args.quiet_rate)
            self.flooding = None
            self.floods.append((began, time.time(), flooder.tenant))
            took = len(flooder.accepted) - before
            self.say(f"flood: {flooder.tenant} calm again ({took} accepted in its turn)")

    async def _flood(self, flooder: TenantSender, until: float) -> None:
        """FLOOD_RATE messages a second straight into ingress until `until`. Over HTTP, ingest
        writes a body's messages one after the other (acks=all each): one stop-and-wait sender
        got ~12 msg/s on this loaded host, too few to be promoted."""
        while time.time() < until:
            try:
                async with self.scene.ingress_producer() as producer:
                    while time.time() < until:
                        second = time.monotonic()
                        async with asyncio.timeout(CALL_TIMEOUT_S):
                            await self.scene.produce(flooder, round(FLOOD_RATE), producer)
                        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - second)))
            except (KafkaError, TimeoutError) as error:
                # The broker away: what was not acknowledged is not accepted. A new producer
                # once the old one has stopped, so nothing it still held is written after.
                self.say(f"flood: {flooder.tenant}: {type(error).__name__}, again in 1 s")
                await asyncio.sleep(1.0)

    async def _admin(self) -> None:
        rng = random.Random(self.args.seed + 1)
        tenants = [s.tenant for s in [*self.flooders, *self.churn]]
        while True:
            await asyncio.sleep(rng.uniform(*ADMIN_EVERY_S))
            targets = [tenant for tenant in tenants if tenant != self.flooding]
            if self.paused and rng.random() < 0.5:
                tenant, action = rng.choice(sorted(self.paused)), "resume"
            elif rng.random() < 0.5:
                tenant, action = rng.choice(targets), "pause"
                if tenant in self.paused:
                    action = "resume"
            else:
                tenant = rng.choice(targets)
                pin = rng.choice(
                    [
                        p
                        for p in ("shared", "dedicated", "auto")
                        if p != self.pins.get(tenant, "auto")
                    ]
                )
                action = f"pin:{pin}"
            await self._admin_action(tenant, action)

    async def _admin_action(self, tenant: str, action: str) -> bool:
        ok = await self._admin_call(tenant, action)
        self.actions.append(AdminAction(time.time(), action, tenant, ok))
        self.say(f"admin: {action} {tenant} {'ok' if ok else 'FAILED'}")
        return ok

    async def _admin_call(self, tenant: str, action: str) -> bool:
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                if action.startswith("pin:"):
                    pin = action.removeprefix("pin:")
                    await self.scene.pin(tenant, pin)
                    self.pins[tenant] = pin
                else:
                    await self.scene.admin("POST", f"/api/tenants/{tenant}/{action}")
                    (self.paused.add if action == "pause" else self.paused.discard)(tenant)
        except (HarnessError, aiohttp.ClientError, TimeoutError):
            return False
        return True

    async def _resume_all(self) -> None:
        """Every paused tenant resumed, so every accepted message can come out."""
        deadline = time.monotonic() + RESUME_TIMEOUT_S
        while self.paused:
            if not await self._admin_action(min(self.paused), "resume"):
                if time.monotonic() > deadline:
                    raise HarnessError(f"could not resume {sorted(self.paused)}")
                await asyncio.sleep(1.0)
        self.say("no tenant paused")

    async def _status(self) -> None:
        last = 0
        while True:
            await asyncio.sleep(STATUS_EVERY_S)
            if not self._fault_lock.locked():  # a fault under way stops and starts workers
                async with self._fault_lock:
                    await self._restart_exited()
            scene = self.scene
            accepted = sum(len(s.accepted) for s in scene.senders.values())
            refused: Counter[str] = Counter()
            for sender in scene.senders.values():
                refused.update(sender.refused)
            lanes = [f"{f.tenant}:{await self._lane(f.tenant)}" for f in self.flooders]
            peak = max((series.peak for series in scene.rss), default=0) / MIB
            running = (
                sum(w.running for w in scene.shared),
                sum(w.running for w in scene.lane_workers),
            )
            self.say(
                f"accepted {accepted} (+{accepted - last}), refused {dict(refused)}; shared "
                f"{running[0]} lane {running[1]} running; paused {sorted(self.paused)}; "
                f"flooders {' '.join(lanes)}; shared RSS peak {peak:.0f} MiB"
            )
            last = accepted

    async def _lane(self, tenant: str) -> str:
        try:
            async with asyncio.timeout(5.0):
                return str((await self.scene.stats(tenant))["lane"])
        except (HarnessError, aiohttp.ClientError, TimeoutError):
            return "?"

    async def _restart_exited(self) -> None:
        """A worker that ended without being killed or removed is noted and started again."""
        for worker in [*self.scene.shared, *self.scene.lane_workers]:
            if worker.running or worker.name in self._removed:
                continue
            self.exits.append({"at_s": round(self.at(), 1), "worker": worker.name})
            self.say(f"{worker.name} EXITED on its own (log {worker.log_path}); restarting it")
            try:
                await self.scene.restart(worker)
            except HarnessError as error:
                self.say(f"{worker.name} did not come back: {str(error).splitlines()[0]}")

    async def _watch_groups(self) -> None:
        """Sample the shared and lane worker groups' state and members, for `count_rebalances`."""
        app_id = self.scene.env["LANEWAY_APP_ID"]
        groups = [app_id, Settings(app_id=app_id).lane_worker_app_id]
        for group in groups:
            self.group_samples[group] = []
        admin = AIOKafkaAdminClient(bootstrap_servers=self.scene.bootstrap, request_timeout_ms=3000)
        await admin.start()
        try:
            while True:
                for group in groups:
                    # One group per request: aiokafka cannot decode an answer about two.
                    try:
                        [response] = await admin.describe_consumer_groups([group])
                    except Exception:  # the broker restarting: that second goes unsampled
                        continue
                    [(_, _, state, _, _, members)] = response.groups
                    found = frozenset(member[0] for member in members)
                    self.group_samples[group].append((state, found))
                await asyncio.sleep(REBALANCE_POLL_S)
        finally:
            await admin.close()

    # ------------------------------------------------------------ results

    async def moves(self) -> list[dict[str, Any]]:
        """Every lane move on the control topic."""
        topic = self.scene.topics.control
        end = (await end_offsets(self.scene.bootstrap, [topic])).get(topic, 0)
        records = await consume_until(
            self.scene.bootstrap, [topic], lambda got: len(got) >= end, DRAIN_TIMEOUT_S
        )
        return [json.loads(record.value) for record in records]

    def measure(
        self, report: ScaleReport, deliveries: Sequence[Delivery], moves: list[dict[str, Any]]
    ) -> dict[str, Any]:
        arrivals = first_arrivals(deliveries)
        quiet_accepted = [a for s in self.quiet for a in s.accepted if a.accepted_at >= self.t0]
        samples = latencies(quiet_accepted, arrivals)
        windows = [fault.window() for fault in self.faults]
        end = time.time()
        broker_down = [(f.start, f.end or end) for f in self.faults if f.kind == "broker_restart"]
        gap, gap_tenant, gap_at, gap_outside_broker = 0.0, None, None, 0.0
        for sender in self.quiet:
            waits = [
                (a.accepted_at, arrivals.get(a.control_id, end))
                for a in sender.accepted
                if a.accepted_at >= self.t0
            ]
            length, start = longest_gap(waits)
            if length > gap:
                gap, gap_tenant, gap_at = length, sender.tenant, start
            gap_outside_broker = max(gap_outside_broker, longest_gap(waits, broker_down)[0])
        bursting = {s.tenant for s in self.flooders}
        found = spurious(moves, bursting)
        quiet_p99 = p99(latency for _, latency in samples)
        quiet_p50 = statistics.median(latency for _, latency in samples) if samples else None
        faulty_p99 = p99(latency for at, latency in samples if within(at, windows))
        rebalances = {group: count_rebalances(s) for group, s in self.group_samples.items()}
        refused: Counter[str] = Counter()
        for sender in self.scene.senders.values():
            refused.update(sender.refused)

        def ms(seconds: float | None) -> float | None:
            return None if seconds is None else round(seconds * 1000, 1)

        return {
            "acked": report.accepted,
            "lost": len(report.lost),
            "order_violations": len(report.order_violations),
            "duplicates": len(report.duplicates),
            "duplicates_without_same_key": len(report.duplicates_without_same_key),
            "kills": sum(f.kind == "kill" and f.error is None for f in self.faults),
            "broker_restarts": sum(
                f.kind == "broker_restart" and f.error is None for f in self.faults
            ),
            "rebalances": sum(rebalances.values()),
            "quiet_p99_ms": ms(quiet_p99),
            "quiet_p99_during_faults_ms": ms(faulty_p99),
            "max_quiet_gap_s": round(gap, 2),
            "spurious_promotions": len(found),
            "router_rss_max_mb": round(max((r.peak for r in self.scene.rss), default=0) / MIB, 1),
            # What explains the figures above.
            "quiet_p50_ms": ms(quiet_p50),
            "quiet_messages": len(samples),
            "max_quiet_gap_tenant": gap_tenant,
            # The same, with the broker's restart (stop issued until it answers) left out:
            # nothing can come out while it is down, however Laneway behaves.
            "max_quiet_gap_outside_broker_restart_s": round(gap_outside_broker, 2),
            "max_quiet_gap_at_s": None if gap_at is None else round(self.at(gap_at), 1),
            "rebalances_by_group": rebalances,
            "spurious_promotion_moves": found,
            "moves_by_reason": dict(Counter(str(m.get("reason")) for m in moves)),
            "lost_control_ids": list(report.lost[:20]),
            "order_violation_examples": [str(v) for v in report.order_violations[:20]],
            "unaccepted_delivered": report.unaccepted,
            "refused": dict(refused),
            "workers_exited": self.exits,
            "bench_failures": self.failures,
            "rss": [str(series) for series in self.scene.rss],
            "timeline": [
                {
                    "at_s": round(self.at(f.start), 1),
                    "end_s": round(self.at(f.end or f.start), 1),
                    **{k: v for k, v in asdict(f).items() if k in ("kind", "target", "error")},
                }
                for f in self.faults
            ],
            "floods": [
                {"tenant": t, "at_s": round(self.at(s), 1), "end_s": round(self.at(e), 1)}
                for s, e, t in self.floods
            ],
            "admin_actions": [
                {
                    "at_s": round(self.at(a.at), 1),
                    "action": a.action,
                    "tenant": a.tenant,
                    "ok": a.ok,
                }
                for a in self.actions
            ],
            # Every `at_s` counts from here (worker logs carry wall-clock times).
            "clock_started_at": datetime.fromtimestamp(self.t0, UTC).isoformat(
                timespec="milliseconds"
            ),
            "tenants": {
                "flooders": [s.tenant for s in self.flooders],
                "churn": [s.tenant for s in self.churn],
                "quiet": len(self.quiet),
            },
            "quiet_p99_per_s": p99_per_second(samples, self.t0),
        }


def plot(results: dict[str, Any], path: Path) -> None:
    """Quiet-tenant p99 per second (by accept second), faults as labelled vertical lines, flood
    turns shaded."""
    figure = Figure(figsize=(14, 5), layout="constrained")
    FigureCanvasAgg(figure)  # render with Agg: no display needed
    axes = figure.subplots()
    p99_by_second = dict(results["quiet_p99_per_s"])
    # A second without an accepted quiet message (the broker away) is a break in the line.
    seconds = range(max(p99_by_second, default=0) + 1)
    axes.plot(
        seconds,
        [max(1.0, p99_by_second[s] * 1000) if s in p99_by_second else math.nan for s in seconds],
        linewidth=0.8,
        marker=".",
        markersize=2,
        color="tab:blue",
        label="quiet tenants: p99 accept → downstream event",
    )
    for flood in results["floods"]:
        axes.axvspan(flood["at_s"], flood["end_s"], color="0.9", linewidth=0)
    colours = {
        "kill": "tab:red",
        "broker_restart": "black",
        "add": "tab:green",
        "remove": "tab:orange",
    }
    labels = {"kill": "kill", "broker_restart": "broker restart", "add": "add", "remove": "remove"}
    for fault in results["timeline"]:
        axes.axvline(fault["at_s"], color=colours[fault["kind"]], linewidth=1, alpha=0.8)
        axes.text(
            fault["at_s"],
            1.0,
            f" {labels[fault['kind']]} {fault['target']}",
            rotation=90,
            va="top",
            fontsize=7,
            transform=axes.get_xaxis_transform(),
        )
    axes.axhline(MAX_QUIET_GAP_S * 1000, color="0.5", linestyle=":", linewidth=1)
    axes.set(
        title=(
            f"chaos: {results['acked']} accepted, {results['lost']} lost, "
            f"{results['kills']} kills, p99 {results['quiet_p99_ms']} ms "
            f"(during faults {results['quiet_p99_during_faults_ms']} ms); floods shaded"
        ),
        xlabel="seconds since the run started (accept time)",
        ylabel="quiet p99 (ms)",
        yscale="log",
    )
    axes.legend(loc="upper left", fontsize=8)
    axes.grid(True, alpha=0.3)
    figure.savefig(path, dpi=90)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    run_id = new_run_id()
    logs = REPO / ".run" / "bench" / f"chaos-{run_id}"
    log(f"chaos: seed {args.seed}, {args.duration_s:g} s, logs in {logs}")
    cluster = ThrowawayCluster(logs / "kafka")
    await cluster.up()
    try:
        env = worker_env(
            cluster.bootstrap,
            f"lwchaos-{secrets.token_hex(3)}",
            logs / "data",
            ingress_partitions=str(INGRESS_PARTITIONS),
            # The lane workers at nice 0: at 10, on a 2-core host other engineers load, they get
            # so little CPU that their Kafka requests time out. CPU priority is not measured here.
            lane_nice="0",
        )
        async with Scene.running(env, logs, shared=3, lane_workers=2) as scene:
            chaos = Chaos(scene, cluster, args)
            await chaos.onboard()
            await chaos.run()
            log("draining: reading every out and DLQ topic")
            await scene.stop_traffic()
            accepted = [a for sender in scene.senders.values() for a in sender.accepted]
            deliveries = await scene.deliveries(DRAIN_TIMEOUT_S)
            report = check(accepted, deliveries)
            results = chaos.measure(report, deliveries, await chaos.moves())
            if report.lost:
                results["lost_located"] = dict(await scene.locate(report.lost))
    finally:
        with contextlib.suppress(HarnessError):
            await cluster.wipe()
    results["targets"] = evaluate(results)
    results["targets_missed"] = [name for name, met in results["targets"].items() if not met]
    for name, met in results["targets"].items():
        log(f"{'PASS' if met else 'FAIL'}  {name}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    plot(results, RESULTS_DIR / "chaos.png")
    shutil.rmtree(logs / "kafka", ignore_errors=True)
    results |= {
        "seed": args.seed,
        "duration_s": args.duration_s,
        "kill_every_s": args.kill_every_s,
        "tenant_count": args.tenants,
        "quiet_rate_per_s": args.quiet_rate,
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "worker_logs": str(logs),
        "wall_time_s": round(time.monotonic() - started, 1),
    }
    return results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=DURATION_S)
    parser.add_argument("--seed", type=int, default=None, help="random unless given")
    parser.add_argument("--tenants", type=int, default=TENANTS)
    parser.add_argument("--quiet-rate", type=float, default=QUIET_RATE, help="msg/s per tenant")
    parser.add_argument("--kill-every-s", type=float, default=KILL_EVERY_S)
    args = parser.parse_args()
    if args.tenants < FLOODERS + CHURN_TENANTS + 1:
        parser.error(f"--tenants must be at least {FLOODERS + CHURN_TENANTS + 1}")
    if args.duration_s <= 0 or args.kill_every_s <= 0 or args.quiet_rate <= 0:
        parser.error("--duration-s, --kill-every-s and --quiet-rate must be positive")
    if args.seed is None:
        args.seed = random.randrange(2**31)
    return args


def _summary(results: dict[str, Any]) -> str:
    return (
        f"chaos: {results['acked']} accepted, {results['lost']} lost, "
        f"{results['order_violations']} order violations, {results['duplicates']} duplicates "
        f"({results['duplicates_without_same_key']} without the same key), {results['kills']} "
        f"kills, {results['broker_restarts']} broker restarts, {results['rebalances']} "
        f"rebalances, quiet p99 {results['quiet_p99_ms']} ms (during faults "
        f"{results['quiet_p99_during_faults_ms']} ms), longest quiet gap "
        f"{results['max_quiet_gap_s']} s, {results['spurious_promotions']} spurious promotions, "
        f"router RSS max {results['router_rss_max_mb']} MB; {targets_verdict('chaos', results)}"
    )


def main() -> None:
    # The bench's own clients see the broker restart it causes; their warnings would bury the
    # progress lines (what the workers did is in their logs).
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    run_bench(bench, parse_args(), "chaos", _summary)


if __name__ == "__main__":
    main()
