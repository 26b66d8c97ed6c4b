"""Prometheus metrics at `GET /metrics`: Faust's own sensor plus Laneway's metrics.

Faust's `setup_prometheus_sensors` serves the route; Laneway's `LanewayCollector` is one more
collector in the same registry, read at scrape time (no work on the message path).

Cardinality is bounded and there is no tenant label: `/metrics` answers without a token, as
scrapers expect, so it must not name tenants (invariant 4). Per-tenant detail is behind the
admin token in `/api/stats`. Labels are lanes (`shared` + the dedicated pool), windows, ACK codes,
framing error kinds and flags: tens of series whatever the number of tenants.

Two kinds of values (docs/metrics.md):
- cluster-wide, from the mirrored tenant state and Kafka offsets: every worker reports the same,
  so aggregate them with max(), not sum();
- per process (`laneway_mllp_*`, Faust's, process_*): sum() across workers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from faust.sensors.prometheus import setup_prometheus_sensors
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from agents.state.broker_watch import BrokerWatch
from agents.web.stats import StatsService
from streams.app import LanewayApp
from streams.mllp_limits import Limit
from streams.stats import FLAGS, TenantStats

if TYPE_CHECKING:  # only their types: the web views import nothing of ingest at run time
    from agents.ingest.accept import Ingest
    from agents.ingest.mllp import MllpCounters
    from agents.lanes.processor import DrainPace

WINDOWS = {"10s": "rate_10s", "1m": "rate_1m", "5m": "rate_5m"}


def process_metrics(app: LanewayApp, broker: BrokerWatch) -> Iterator[Metric]:
    """What every worker process reports: its view of Kafka and the DLQ records it wrote."""
    yield GaugeMetricFamily(
        "laneway_kafka_up",
        "1 while this process reaches the Kafka cluster, 0 while it does not.",
        value=int(broker.up),
    )
    yield GaugeMetricFamily(
        "laneway_kafka_brokers",
        "Brokers listed in the cluster metadata at the last probe (0 while unreachable).",
        value=broker.brokers,
    )
    parked = CounterMetricFamily(
        "laneway_dlq_records",
        "DLQ records this process wrote, by reason code (a fixed set of codes).",
        labels=["reason"],
    )
    for reason, value in sorted(app.dlq_reasons.items()):
        parked.add_metric([reason], value)
    yield parked


class LaneWorkerCollector(Collector):
    """The lane worker's metrics: it has no ingest and no stats of its own (the shared workers
    report the lanes' tenants, rates and backlogs cluster-wide)."""

    def __init__(self, app: LanewayApp, broker: BrokerWatch, pace: DrainPace | None) -> None:
        self._app = app
        self._broker = broker
        self._pace = pace

    def collect(self) -> Iterator[Metric]:
        yield from process_metrics(self._app, self._broker)
        if self._pace is not None:
            yield GaugeMetricFamily(
                "laneway_lane_drain_rate_records_per_second",
                "This lane worker's share of the deployment's drain budget "
                "(LANEWAY_LANE_DRAIN_RATE), by the dedicated lanes it holds.",
                value=self._pace.rate_per_s,
            )


class LanewayCollector(Collector):
    """Laneway's metrics, computed at scrape time from the stats service and the ingest and MLLP
    counters."""

    def __init__(
        self, stats: StatsService, ingest: Ingest, mllp: MllpCounters, dedicated_lanes: int
    ) -> None:
        self._stats = stats
        self._ingest = ingest
        self._mllp = mllp
        self._lanes = ["shared", *(str(lane) for lane in range(dedicated_lanes))]

    def collect(self) -> Iterator[Metric]:
        yield from process_metrics(self._stats.app, self._stats.broker)
        yield from self._tenant_metrics(self._stats.rows(time.time()))
        refused = CounterMetricFamily(
            "laneway_ingest_refused",
            "Messages refused at ingest (never written), by path and reason code.",
            labels=["path", "reason"],
        )
        for (path, reason), value in sorted(self._ingest.refusals.items()):
            refused.add_metric([path, reason], value)
        yield refused
        yield CounterMetricFamily(
            "laneway_ingest_ceiling_holds",
            "MLLP frames whose ACKs were held to slow a sender above its rate ceiling.",
            value=self._ingest.ceiling_holds,
        )
        yield from self._mllp_metrics()

    def _tenant_metrics(self, rows: list[TenantStats]) -> Iterator[Metric]:
        offsets = self._stats.probe.offsets
        yield GaugeMetricFamily("laneway_tenants", "Onboarded tenants.", value=len(rows))
        flagged = GaugeMetricFamily(
            "laneway_tenants_flagged", "Tenants showing a flag (see /api/stats).", labels=["flag"]
        )
        for flag in FLAGS:
            flagged.add_metric([flag], sum(1 for row in rows if flag in row.flags))
        yield flagged
        yield CounterMetricFamily(
            "laneway_messages_received",
            "Ingress records counted by the routers, all tenants.",
            value=sum(row.received for row in rows),
        )
        if offsets.read_at:
            for name, text, values in (
                ("processed", "Records written to tenants' out and DLQ topics.", "processed"),
                ("events", "Records written to tenants' out topics.", "events"),
                ("dlq", "Records written to tenants' DLQ topics.", "dlq"),
            ):
                yield CounterMetricFamily(
                    f"laneway_messages_{name}",
                    text,
                    value=sum(getattr(row, values) or 0 for row in rows),
                )
            yield CounterMetricFamily(
                "laneway_lane_moves",
                "Lane moves decided by the routers (records in the control topic).",
                value=offsets.ends.get(self._stats.app.topic_names.control, 0),
            )
            yield GaugeMetricFamily(
                "laneway_stats_offsets_age_seconds",
                "Age of the Kafka offsets behind counts and backlogs.",
                value=max(time.time() - offsets.read_at, 0.0),
            )
        tenants = GaugeMetricFamily("laneway_lane_tenants", "Tenants per lane.", labels=["lane"])
        rates = GaugeMetricFamily(
            "laneway_lane_rate_messages_per_second",
            "Messages per second into each lane, summed over its tenants.",
            labels=["lane", "window"],
        )
        for lane in self._lanes:
            members = [row for row in rows if _lane_label(row) == lane]
            tenants.add_metric([lane], len(members))
            for window, key in WINDOWS.items():
                rates.add_metric([lane, window], sum(row.rates[key] for row in members))
        yield tenants
        yield rates
        backlog = GaugeMetricFamily(
            "laneway_lane_backlog_messages",
            "Consumer lag per lane: shared = the shared group's ingress lag, N = the lane "
            "worker group's lag on dedicated lane N.",
            labels=["lane"],
        )
        if offsets.shared_backlog is not None:
            backlog.add_metric(["shared"], offsets.shared_backlog)
        for lane_index, lag in sorted(offsets.lane_backlog.items()):
            backlog.add_metric([str(lane_index)], lag)
        yield backlog

    def _mllp_metrics(self) -> Iterator[Metric]:
        mllp = self._mllp
        yield GaugeMetricFamily(
            "laneway_mllp_connections_open", "Open MLLP connections.", value=mllp.connections_open
        )
        for name, text, value in (
            ("connections", "MLLP connections accepted.", mllp.connections_total),
            ("frames", "MLLP frames received.", mllp.frames),
            (
                "acks_withheld",
                "Messages answered with no ACK because MSH-15/16 asked for none.",
                mllp.acks_withheld,
            ),
            ("stalled_closed", "Connections closed for no progress.", mllp.stalled_closed),
            ("connection_failures", "Connections closed by an error.", mllp.connection_failures),
        ):
            yield CounterMetricFamily(f"laneway_mllp_{name}", text, value=value)
        for name, text, label, counts in (
            ("acks", "ACKs sent, by MSA-1 code.", "code", mllp.acks),
            ("framing_errors", "MLLP framing errors, by kind.", "kind", mllp.framing_errors),
            (
                "tls_handshake_failures",
                "MLLP TLS handshakes failed on a TLS error, by kind.",
                "kind",
                mllp.tls_handshake_failures,
            ),
            (
                "client_cert_refusals",
                "MLLP messages refused (AE) for their tenant's client-certificate requirement.",
                "reason",
                mllp.client_cert_refusals,
            ),
        ):
            family = CounterMetricFamily(f"laneway_mllp_{name}", text, labels=[label])
            for value_label, value in sorted(counts.items()):
                family.add_metric([str(value_label)], value)
            yield family
        limits = CounterMetricFamily(
            "laneway_mllp_limit_hits",
            "MLLP resource limits hit: connections refused (in total, per source address), "
            "connections closed at the frame deadline, reads paused for buffer room.",
            labels=["limit"],
        )
        for limit in Limit:  # every limit, hit or not, so that alerts see a zero
            limits.add_metric([str(limit)], mllp.limit_hits[limit])
        yield limits
        yield GaugeMetricFamily(
            "laneway_mllp_buffered_bytes",
            "Bytes held by partial MLLP frames (and frames being answered), all connections.",
            value=mllp.buffers.used,
        )


def _lane_label(row: TenantStats) -> str:
    return "shared" if row.lane is None else str(row.lane)


def install(app: LanewayApp, collector: Collector) -> None:
    """Serve `GET /metrics` from a registry of this app's own (several apps may share a process,
    as in tests): Faust's sensor, Laneway's `collector` and the process collectors."""
    # `*_created` timestamps double the series count and tell an operator nothing here. The
    # switch is process-wide, which is the worker process.
    disable_created_metrics()
    registry = CollectorRegistry()
    for process_collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(process_collector)
    registry.register(collector)
    # A fixed prefix: metric names must not change with the app id.
    setup_prometheus_sensors(app, pattern="/metrics", registry=registry, name_prefix="faust")
