"""Entry point of the dedicated-lane worker: `faust -A agents.lane_worker worker -l info`.

It lowers its own CPU priority (`LANEWAY_LANE_NICE`) on import (see `agents.priority`), and its
processor agent drains at most `LANEWAY_LANE_DRAIN_RATE` records/s. Priority alone did not keep
a flood's drain from slowing the shared lane: the broker serves both lanes and does not know
whose work it does.
"""

from agents import build_lane_worker
from agents.event_loop import use_uvloop_by_default
from agents.priority import lower_priority

use_uvloop_by_default()
app = build_lane_worker()
lower_priority(app.laneway.lane_nice)
