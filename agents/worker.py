"""Entry point for the faust CLI: `faust -A agents.worker worker -l info`."""

from agents import build_worker

app = build_worker()
