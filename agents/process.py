"""Process-level tuning of a worker, applied by the entry points: event loop, heap, CPU priority."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from pathlib import Path

import faust
import mode.loop

log = logging.getLogger(__name__)

AUTOGROUP = Path("/proc/self/autogroup")


def use_uvloop_by_default() -> None:
    """Run on uvloop, Faust's documented fast event loop, unless `-L`/FAUST_LOOP says otherwise.

    Called by the entry points before anything creates a loop.
    """
    if "FAUST_LOOP" not in os.environ:  # `faust -L <loop>` sets it before this runs
        mode.loop.use("uvloop")


def freeze_after_start(app: faust.App, *ready: asyncio.Event) -> None:
    """Once every `ready` event is set: collect once, then freeze what survives.

    Faust, aiokafka and hl7apy leave a large heap of long-lived objects behind at start-up
    (module tables, HL7 structure definitions, tenant configs). Every full (generation 2)
    collection walks all of them: measured at ~35 ms every ~4 s under 1,000 msg/s, which is the
    whole MLLP ACK p99. `gc.freeze()` moves them out of the collector's reach; later garbage is
    collected as before.
    """

    @app.task
    async def freeze_startup_heap() -> None:
        for event in ready:
            await event.wait()
        gc.collect()
        gc.freeze()
        log.info("start-up heap frozen: %d objects skip full collections", gc.get_freeze_count())


def lower_priority(nice: int) -> None:
    """Raise this process's nice value to `nice` (never lower it), autogroup included.

    The lane worker calls it so that the shared lane wins when both want a core. A plain `nice`
    is not enough on Linux with autogroup scheduling (`sched_autogroup_enabled`, the default on
    most distributions): the CPU is first shared fairly between sessions, and nice values only
    order the processes inside one session. A lane worker in a session of its own (a service
    unit, `setsid`, a test harness) then competes with the shared worker as an equal. Measured in
    `make bench-isolation` with `nice -n 10` alone: lane worker 70 % of a core, shared worker
    65 %, quiet tenants' p99 above 1 s. So the lane worker moves into a session of its own when
    it can and lowers that session's autogroup priority too.
    """
    if not hasattr(os, "setpriority"):
        return
    if os.getpriority(os.PRIO_PROCESS, 0) < nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    if not AUTOGROUP.exists():
        return  # no autogroup scheduling: the process nice value is all there is
    if os.getsid(0) != os.getpid():
        try:
            os.setsid()  # an autogroup of its own, so its priority touches no other process
        except OSError:
            # A process-group leader (a shell's foreground job) cannot; it shares the shell's
            # session, where the process nice value already orders it after its siblings.
            log.info("lane worker nice %d (process only: it shares a session)", nice)
            return
    try:
        AUTOGROUP.write_text(str(nice))
    except OSError as error:
        log.warning("autogroup priority not lowered: %s", error)
        return
    log.info("lane worker nice %d, its session's autogroup too", nice)
