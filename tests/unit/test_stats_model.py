"""The stats model (streams/stats.py): flags at their boundaries, rates of fresh and stale
documents, sparkline sampling, `GET /api/stats` query parsing and totals. Pure: no app, no broker.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from streams.stats import (
    ERRORING_WINDOW_S,
    FLAGS,
    FRESH_S,
    MAX_LIMIT,
    RATE_KEYS,
    SILENT_AFTER_S,
    InvalidQuery,
    Offsets,
    RateHistory,
    StatsQuery,
    TenantStats,
    current_rate_10s,
    current_rates,
    iso_time,
    tenant_stats,
    totals,
)
from streams.tenants import LaneSettings, TenantRecord, TenantSpec, TenantSummary
from streams.topics import TopicNames
from streams.volume import TenantVolume

NOW = 1_700_000_000.0
NAMES = TopicNames()
TOKEN_SHA256 = "0" * 64
NOT_READ = Offsets()


def record(
    tenant_id: str = "alpha",
    *,
    name: str | None = None,
    rate_per_s: float = 10,
    paused: bool = False,
    pinned: str = "auto",
) -> TenantRecord:
    spec = TenantSpec(
        id=tenant_id,
        name=name or tenant_id,
        rate_per_s=rate_per_s,
        paused=paused,
        lane=LaneSettings.model_validate({"pinned": pinned}),
    )
    return TenantRecord.create(spec, TOKEN_SHA256, datetime.fromtimestamp(NOW, UTC))


def published(rate_10s: float = 0.0, **values: Any) -> dict[str, Any]:
    """A router's `rates` snapshot: every window at `rate_10s` unless given."""
    rates: dict[str, Any] = {key: rate_10s for key in RATE_KEYS}
    rates |= {key.replace("rate", "bytes"): rate_10s * 100 for key in RATE_KEYS}
    return rates | values


def document(
    rate_10s: float = 0.0, *, lane: int | None = None, updated_at: float = NOW, **rates: Any
) -> dict[str, Any]:
    return {
        "lane": lane,
        "rates": published(rate_10s, **rates),
        "updated_at": updated_at,
        "moved_at": None,
        "moves": [],
    }


def stats(
    tenant: TenantRecord | None = None,
    doc: dict[str, Any] | None = None,
    *,
    offsets: Offsets = NOT_READ,
    dlq_grew_at: float | None = None,
    history: list[float] | None = None,
) -> TenantStats:
    summary = TenantSummary.of(tenant or record())
    return tenant_stats(summary, doc, offsets, dlq_grew_at, history or [], NAMES, NOW)


def row(tenant: str, **values: Any) -> TenantStats:
    """A row built directly, for queries and totals."""
    fields: dict[str, Any] = {
        "tenant": tenant,
        "name": tenant,
        "paused": False,
        "rate_per_s": 10.0,
        "pinned": "auto",
        "received": 0,
        "events": 0,
        "dlq": 0,
        "rates": dict.fromkeys(RATE_KEYS, 0.0),
        "lane": None,
        "moved_at": None,
        "moves": [],
        "backlog": None,
        "last_message_at": None,
        "updated_at": None,
        "flags": (),
        "sparkline": [],
    }
    return TenantStats(**(fields | values))


# ---------------------------------------------------------------- flags


def test_noisy_only_above_the_contract_rate() -> None:
    tenant = record(rate_per_s=10)

    assert "noisy" not in stats(tenant, document(10.0, last_message_at=NOW)).flags
    assert "noisy" in stats(tenant, document(10.01, last_message_at=NOW)).flags


def test_noisy_in_a_dedicated_lane_unless_the_operator_pinned_it_there() -> None:
    quiet = document(1.0, lane=0, last_message_at=NOW)

    assert "noisy" in stats(record(pinned="auto"), quiet).flags
    assert "noisy" not in stats(record(pinned="dedicated"), quiet).flags
    assert "noisy" not in stats(record(pinned="auto"), document(1.0, lane=None)).flags


def test_paused_follows_the_registry() -> None:
    assert "paused" in stats(record(paused=True)).flags
    assert "paused" not in stats(record(paused=False)).flags


def test_silent_after_five_minutes_without_a_message_or_never() -> None:
    assert "silent" in stats(record(), None).flags
    assert "silent" in stats(record(), document(last_message_at=None)).flags
    at_limit = document(last_message_at=NOW - SILENT_AFTER_S)
    assert "silent" not in stats(record(), at_limit).flags
    past = document(last_message_at=NOW - SILENT_AFTER_S - 0.001)
    assert "silent" in stats(record(), past).flags


def test_erroring_while_the_dlq_grew_within_the_last_minute() -> None:
    assert "erroring" not in stats(dlq_grew_at=None).flags
    assert "erroring" in stats(dlq_grew_at=NOW - ERRORING_WINDOW_S + 0.001).flags
    assert "erroring" not in stats(dlq_grew_at=NOW - ERRORING_WINDOW_S).flags


def test_flags_come_in_a_fixed_order() -> None:
    tenant = record(rate_per_s=1, paused=True)

    flags = stats(tenant, document(5.0, last_message_at=None), dlq_grew_at=NOW).flags

    assert flags == FLAGS


# ---------------------------------------------------------------- rates and rows


def steady_then_stopped() -> tuple[TenantVolume, dict[str, Any]]:
    """1 msg/s of 100 bytes for two minutes, up to NOW, published as the router would."""
    volume = TenantVolume()
    for second in range(120):
        volume.record(NOW - 119 + second, 1, 100)
    return volume, {
        "rates": volume.rates(NOW).as_dict(),
        "volume": volume.to_state(),
        "updated_at": NOW,
    }


def test_a_fresh_document_is_taken_as_published() -> None:
    _, doc = steady_then_stopped()

    rates = current_rates(doc, NOW + FRESH_S)

    assert rates == {key: float(doc["rates"][key]) for key in rates}
    assert rates["rate_10s"] > 0.9


def test_a_stale_document_fades_the_short_windows_and_recomputes_the_long_ones() -> None:
    volume, doc = steady_then_stopped()
    rate_10s, rate_1m = doc["rates"]["rate_10s"], doc["rates"]["rate_1m"]

    halfway = current_rates(doc, NOW + 5)
    later = current_rates(doc, NOW + 90)

    assert halfway["rate_10s"] == pytest.approx(rate_10s * 0.5)
    assert halfway["rate_1m"] == pytest.approx(rate_1m * (1 - 5 / 60))
    assert halfway["bytes_10s"] == pytest.approx(doc["rates"]["bytes_10s"] * 0.5)
    assert (later["rate_10s"], later["rate_1m"], later["bytes_1m"]) == (0.0, 0.0, 0.0)
    assert later["rate_5m"] == pytest.approx(volume.rates(NOW + 90).rate_5m)
    assert later["rate_1h"] == pytest.approx(volume.rates(NOW + 90).rate_1h)
    assert later["bytes_1h"] == pytest.approx(volume.rates(NOW + 90).bytes_1h)


@pytest.mark.parametrize("age_s", [0.0, FRESH_S, 5.0, 9.0, 90.0])
def test_the_sparklines_10s_rate_is_current_rates_without_the_long_windows(age_s: float) -> None:
    _, doc = steady_then_stopped()

    assert current_rate_10s(doc, NOW + age_s) == current_rates(doc, NOW + age_s)["rate_10s"]
    assert current_rate_10s(None, NOW) == 0.0


def test_no_document_or_no_volume_means_no_traffic() -> None:
    _, doc = steady_then_stopped()
    without_volume = {key: value for key, value in doc.items() if key != "volume"}

    assert set(current_rates(None, NOW).values()) == {0.0}
    assert current_rates(without_volume, NOW + 90)["rate_1h"] == 0.0


def test_counts_are_unknown_until_kafka_offsets_are_read() -> None:
    tenant = record()
    read = Offsets(read_at=NOW, ends={NAMES.out("alpha"): 7, NAMES.dlq("alpha"): 2})

    before = stats(tenant, document(received=12))
    after = stats(tenant, document(received=12), offsets=read)

    assert (before.received, before.events, before.dlq, before.processed) == (12, None, None, None)
    assert (after.events, after.dlq, after.processed) == (7, 2, 9)
    assert stats(tenant, None, offsets=Offsets(read_at=NOW)).processed == 0


def test_backlog_is_the_backlog_of_the_tenants_lane() -> None:
    offsets = Offsets(read_at=NOW, lane_backlog={1: 40}, shared_backlog=5)

    shared = stats(record(), document(lane=None), offsets=offsets)
    dedicated = stats(record(), document(lane=1), offsets=offsets)

    assert (shared.lane, shared.backlog) == (None, 5)
    assert (dedicated.lane, dedicated.backlog) == (1, 40)
    assert shared.as_json()["backlog"] == {"messages": 5, "scope": "shared_lane"}
    assert dedicated.as_json()["backlog"] == {"messages": 40, "scope": "dedicated_lane"}
    assert dedicated.as_json()["lane"] == "dedicated"


def test_the_sparkline_ends_with_the_live_rate() -> None:
    assert stats(record(), document(3.456), history=[1.0, 2.0]).sparkline == [1.0, 2.0, 3.46]


def test_times_are_shown_in_utc_with_milliseconds() -> None:
    assert iso_time(None) is None
    assert iso_time(0.25) == "1970-01-01T00:00:00.250+00:00"


# ---------------------------------------------------------------- sparkline history


def test_history_holds_only_tenants_with_traffic() -> None:
    history = RateHistory(points=3)

    history.sample({"quiet": 0.0, "busy": 1.234})

    assert history.series("quiet") == []
    assert history.series("busy") == [1.23]


def test_history_keeps_the_last_points_only() -> None:
    history = RateHistory(points=3)

    for rate in (1.0, 2.0, 3.0, 4.0):
        history.sample({"busy": rate})

    assert history.series("busy") == [2.0, 3.0, 4.0]


def test_history_forgets_a_tenant_quiet_for_the_whole_span_or_gone() -> None:
    history = RateHistory(points=2)
    history.sample({"fading": 1.0, "gone": 1.0})

    history.sample({"fading": 0.0})
    assert history.series("fading") == [1.0, 0.0]
    assert history.series("gone") == []

    history.sample({"fading": 0.0})
    assert history.series("fading") == []


# ---------------------------------------------------------------- queries


def parse(flags: list[str] | None = None, **params: str) -> StatsQuery:
    return StatsQuery.parse(params, flags or [])


def test_the_default_query_shows_the_busiest_first() -> None:
    assert parse() == StatsQuery(sort="rate_1m", descending=True)


@pytest.mark.parametrize(
    ("sort", "descending"),
    [("tenant", False), ("name", False), ("lane", False), ("dlq", True), ("rate_10s", True)],
)
def test_the_default_order_depends_on_the_sort_key(sort: str, descending: bool) -> None:
    assert parse(sort=sort).descending is descending
    assert parse(sort=sort, order="asc").descending is False
    assert parse(sort=sort, order="desc").descending is True


@pytest.mark.parametrize(
    ("params", "flags", "parameter"),
    [
        ({"sort": "token"}, [], "sort"),
        ({"order": "up"}, [], "order"),
        ({"lane": "fast"}, [], "lane"),
        ({"lane": "-1"}, [], "lane"),
        ({}, ["noisy,loud"], "flag"),
        ({"limit": "0"}, [], "limit"),
        ({"limit": str(MAX_LIMIT + 1)}, [], "limit"),
        ({"limit": "ten"}, [], "limit"),
        ({"limit": "-5"}, [], "limit"),
    ],
)
def test_a_bad_parameter_is_named(params: dict[str, str], flags: list[str], parameter: str) -> None:
    with pytest.raises(InvalidQuery) as raised:
        StatsQuery.parse(params, flags)

    assert raised.value.parameter == parameter
    assert parameter in str(raised.value)
    assert raised.value.allowed


def test_good_parameters_are_kept() -> None:
    query = parse(["noisy,silent", "paused"], lane="3", q="St Mary", limit=str(MAX_LIMIT))

    assert query.lane == "3"
    assert query.flags == ("noisy", "silent", "paused")
    assert query.text == "st mary"
    assert query.limit == MAX_LIMIT
    assert parse(limit="1").limit == 1
    assert parse(lane="").lane is None


def test_lane_filters() -> None:
    rows = [row("a"), row("b", lane=0), row("c", lane=1)]

    def shown(lane: str) -> list[str]:
        return [r.tenant for r in parse(lane=lane, sort="tenant").apply(rows)]

    assert shown("shared") == ["a"]
    assert shown("dedicated") == ["b", "c"]
    assert shown("1") == ["c"]


def test_text_matches_the_id_or_the_name_case_blind() -> None:
    rows = [row("st-marys", name="St Mary's"), row("northside", name="Northside Lab")]

    assert [r.tenant for r in parse(q="MARY").apply(rows)] == ["st-marys"]
    assert [r.tenant for r in parse(q="lab").apply(rows)] == ["northside"]


def test_flags_filter_needs_every_flag() -> None:
    rows = [row("a", flags=("noisy",)), row("b", flags=("noisy", "erroring")), row("c")]

    assert [r.tenant for r in parse(["noisy"], sort="tenant").apply(rows)] == ["a", "b"]
    assert [r.tenant for r in parse(["noisy", "erroring"]).apply(rows)] == ["b"]


def test_sorting_keeps_ties_in_tenant_order_and_puts_unknown_counts_below_zero() -> None:
    rows = [row("a", dlq=1), row("b", dlq=None), row("c", dlq=3), row("d", dlq=0), row("e", dlq=1)]

    assert [r.tenant for r in parse(sort="dlq").apply(rows)] == ["c", "a", "e", "d", "b"]
    ascending = parse(sort="dlq", order="asc").apply(rows)
    assert [r.tenant for r in ascending] == ["b", "d", "a", "e", "c"]


# ---------------------------------------------------------------- totals


def test_totals_sum_every_tenant() -> None:
    rows = [
        row(
            "a", received=5, events=4, dlq=1, flags=("noisy",), rates=dict.fromkeys(RATE_KEYS, 1.5)
        ),
        row("b", received=2, events=2, dlq=0, lane=0, rates=dict.fromkeys(RATE_KEYS, 0.25)),
    ]
    offsets = Offsets(read_at=NOW, ends={NAMES.control: 3}, lane_backlog={0: 8}, shared_backlog=4)

    result = totals(rows, offsets, NAMES)

    assert result["tenants"] == 2
    assert (result["shared"], result["dedicated"]) == (1, 1)
    assert (result["received"], result["processed"], result["events"], result["dlq"]) == (
        7,
        7,
        6,
        1,
    )
    assert result["rate_1m"] == 1.75
    assert result["flags"] == {"noisy": 1, "paused": 0, "silent": 0, "erroring": 0}
    assert result["lane_moves"] == 3
    assert result["backlog"] == {"shared_lane": 4, "dedicated_lanes": {"0": 8}}


def test_totals_of_kafka_counts_are_unknown_until_offsets_are_read() -> None:
    result = totals([row("a", received=5, events=None, dlq=None)], NOT_READ, NAMES)

    assert result["received"] == 5
    assert (result["processed"], result["events"], result["dlq"], result["lane_moves"]) == (
        None,
        None,
        None,
        None,
    )
