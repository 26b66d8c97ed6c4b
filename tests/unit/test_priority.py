"""The lane worker lowers its own CPU priority, autogroup included (agents.process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import os
from agents.process import AUTOGROUP, lower_priority
lower_priority(7)
print(os.getpriority(os.PRIO_PROCESS, 0))
print(AUTOGROUP.read_text().strip() if AUTOGROUP.exists() else "no autogroup")
"""


@pytest.mark.parametrize("own_session", [True, False])
def test_lane_worker_priority_is_lowered_for_process_and_session(own_session: bool) -> None:
    # Run in a child: the test process keeps its own priority.
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        check=True,
        start_new_session=own_session,
    )
    nice, autogroup = result.stdout.splitlines()
    assert nice == "7"
    if autogroup != "no autogroup":
        # Either way it ends in a session of its own, whose autogroup carries the nice value.
        assert autogroup.endswith("nice 7"), autogroup
