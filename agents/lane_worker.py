"""Entry point of the dedicated-lane worker: `faust -A agents.lane_worker worker -l info`."""

from agents import build_lane_worker

app = build_lane_worker()
