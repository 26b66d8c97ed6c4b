"""Run the workers on uvloop, Faust's documented fast event loop, unless `-L`/FAUST_LOOP says
otherwise. Imported by the worker entry points before anything creates a loop."""

from __future__ import annotations

import os

import mode.loop


def use_uvloop_by_default() -> None:
    if "FAUST_LOOP" not in os.environ:  # `faust -L <loop>` sets it before this runs
        mode.loop.use("uvloop")
