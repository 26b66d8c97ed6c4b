"""The lane worker's lower CPU priority, so that the shared lane wins when both want a core.

A plain `nice` is not enough on Linux with autogroup scheduling (`sched_autogroup_enabled`, the
default on most distributions): the CPU is first shared fairly between sessions, and nice values
only order the processes inside one session. A lane worker in a session of its own (a service
unit, `setsid`, a test harness) then competes with the shared worker as an equal. Measured in
`make bench-isolation` with `nice -n 10` alone: lane worker 70 % of a core, shared worker 65 %,
quiet tenants' p99 above 1 s. So the lane worker moves into a session of its own when it can and
lowers that session's autogroup priority too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

AUTOGROUP = Path("/proc/self/autogroup")


def lower_priority(nice: int) -> None:
    """Raise this process's nice value to `nice` (never lower it), autogroup included."""
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
