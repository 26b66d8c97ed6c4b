"""The pure parts of bench/tenants.py: /proc parsing, per-tenant figures, buckets, targets."""

from __future__ import annotations

import os
import resource
from typing import Any

import pytest

from bench.common import BenchError
from bench.tenants import (
    CLOCK_TICKS,
    TARGETS,
    bucket_latencies,
    cpu_pct,
    cpu_seconds,
    open_files_limit,
    per_tenant_kb,
    process_cpu_seconds,
    raise_open_files,
    tenant_body,
    tenant_id,
)
from streams.tenants import TenantSpec


def test_cpu_seconds_counts_fields_after_a_command_name_with_spaces_and_parentheses() -> None:
    # pid (comm) state ppid ... utime(14) stime(15): the name holds ") (" to trip a naive split.
    after_comm = "S 1 2 3 4 5 6 7 8 9 10 250 50 0 0"
    line = f"4242 (faust ) (worker) {after_comm}"
    assert cpu_seconds(line) == pytest.approx(300 / CLOCK_TICKS)


def test_cpu_seconds_of_this_process_grows_with_work() -> None:
    before = process_cpu_seconds(os.getpid())
    sum(i * i for i in range(2_000_000))
    assert process_cpu_seconds(os.getpid()) > before


def test_cpu_pct_is_percent_of_one_core() -> None:
    assert cpu_pct(10.0, 11.5, 30.0) == 5.0
    assert cpu_pct(0.0, 0.0, 30.0) == 0.0


def test_per_tenant_kb_divides_the_growth_in_kilobytes() -> None:
    assert per_tenant_kb(100_000_000, 150_000_000, 10_000) == 5.0
    assert per_tenant_kb(100_000_000, 150_000_000, 0) is None


def test_bucket_latencies_gives_count_p50_and_p99_per_bucket() -> None:
    done = [(n, float(n)) for n in range(1, 11)]
    rows = bucket_latencies(done, 5)
    assert [row[0] for row in rows] == [5, 10]
    assert rows[0][1] == 3.0  # the median of 1..5
    assert rows[1][2] == 10.0  # 9.96, to 0.1 ms
    assert bucket_latencies(done[:3], 5) == [(3, 2.0, 3.0)]


def test_open_files_limit_reads_the_soft_limit() -> None:
    text = (
        "Limit                     Soft Limit           Hard Limit           Units     \n"
        "Max cpu time              unlimited            unlimited            seconds   \n"
        "Max open files            20000                40000                files     \n"
    )
    assert open_files_limit(text) == 20000
    with pytest.raises(BenchError):
        open_files_limit("Limit Soft Hard Units\n")


def test_raise_open_files_never_lowers_and_stays_within_what_is_allowed() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        assert raise_open_files(1) == (soft, hard)
        raised_soft, raised_hard = raise_open_files(soft + 1)
        assert raised_soft >= soft
        assert raised_soft <= raised_hard
    finally:
        now_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, now_hard))


def test_tenant_ids_are_valid_and_sort_like_their_numbers() -> None:
    ids = [tenant_id(n) for n in (0, 9, 10, 9999)]
    assert ids == sorted(ids)
    assert tenant_id(42) == "bt-00042"


def _results(**changes: Any) -> dict[str, Any]:
    met = {
        "tenants": 10_000,
        "tenants_requested": 10_000,
        "rss_per_idle_tenant_kb": 5.0,
        "stats_p99_ms": 999.0,
        "idle_cpu_pct": 4.9,
        "restart_ready_s": 9.9,
    }
    return met | changes


def _missed(results: dict[str, Any]) -> list[str]:
    return [name for name, met in TARGETS.items() if not met(results)]


def test_targets_are_the_acceptance_points() -> None:
    assert _missed(_results()) == []
    assert _missed(_results(rss_per_idle_tenant_kb=5.01)) == ["rss_per_idle_tenant_kb <= 5"]
    assert _missed(_results(rss_per_idle_tenant_kb=None)) == ["rss_per_idle_tenant_kb <= 5"]
    assert _missed(_results(stats_p99_ms=1000.0)) == ["stats_p99_ms < 1000"]
    assert _missed(_results(idle_cpu_pct=5.0)) == ["idle_cpu_pct < 5"]
    assert _missed(_results(restart_ready_s=10.0)) == ["restart_ready_s < 10"]
    assert _missed(_results(tenants=9_830)) == ["every requested tenant onboarded"]


def test_the_bench_tenant_is_a_valid_tenant_spec() -> None:
    spec = TenantSpec.model_validate(tenant_body(tenant_id(7)))
    assert spec.id == "bt-00007"
    assert spec.senders == []
