"""Entry point of the dedicated-lane worker: `faust -A agents.lane_worker worker -l info`.

It lowers its own CPU priority (`LANEWAY_LANE_NICE`) on import: see `agents.priority`.
"""

from agents import build_lane_worker
from agents.priority import lower_priority

app = build_lane_worker()
lower_priority(app.laneway.lane_nice)
