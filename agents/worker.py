"""Entry point for the faust CLI: `faust -A agents.worker worker -l info`."""

from agents import build_worker
from agents.event_loop import use_uvloop_by_default

use_uvloop_by_default()
app = build_worker()
