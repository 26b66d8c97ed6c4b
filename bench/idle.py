"""Idle CPU of one shared worker with no tenant, on the development broker (issue 14: < 5 %).

`make bench-tenants` measures the same with 10,000 tenants on a throwaway broker (~25 min);
this takes a minute, so a fetch change can be measured before and after in one sitting:
`python -m bench.idle --idle-s 30`. bench/results/idle.json.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Kafka, clean_up, git_commit, run_bench
from bench.tenants import IDLE_CPU_PCT, cpu_pct, process_cpu_seconds
from tests.harness import WorkerProcess, default_bootstrap, log, worker_env


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    bootstrap = default_bootstrap()
    app_id = f"lwidle-{secrets.token_hex(3)}"
    kafka = Kafka(bootstrap)
    await kafka.start()
    try:
        with tempfile.TemporaryDirectory(prefix="laneway-idle-") as scratch:
            env = worker_env(bootstrap, app_id, Path(scratch) / "data")
            with WorkerProcess(env, Path(scratch) / "worker.log") as worker:  # ready once entered
                await asyncio.sleep(args.settle_s)  # start-up work (recovery, first commits)
                log(f"worker ready; CPU over {args.idle_s:g} s")
                cpu_before, wall_before = process_cpu_seconds(worker.pid), time.monotonic()
                await asyncio.sleep(args.idle_s)
                worker.check_alive()
                idle_pct = cpu_pct(
                    cpu_before, process_cpu_seconds(worker.pid), time.monotonic() - wall_before
                )
    finally:
        await clean_up(kafka, app_id)
    return {
        "commit": git_commit(),
        "idle_s": args.idle_s,
        "idle_cpu_pct": idle_pct,
        "targets_missed": [] if idle_pct < IDLE_CPU_PCT else [f"idle CPU {idle_pct} %"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--idle-s", type=float, default=30.0, help="measured idle span")
    parser.add_argument("--settle-s", type=float, default=10.0, help="wait after ready")
    run_bench(
        bench,
        parser.parse_args(),
        "idle",
        lambda r: f"idle worker, no tenants: {r['idle_cpu_pct']} % of a core over {r['idle_s']} s",
    )


if __name__ == "__main__":
    main()
