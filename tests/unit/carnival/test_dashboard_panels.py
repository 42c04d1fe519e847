"""The dashboard's panels: one SQL per panel, macros expanded as Grafana's ClickHouse plugin does, the
committed Grafana dashboard generated from the same SQL, the page's assets shipped in packages."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from carnival.dashboard import grafana
from carnival.dashboard.panels import LAG_PANEL, LAYOUT, PANELS, SQL, Window, render
from carnival.dashboard.server import ASSETS, STATIC, layout, plotly_js

END = datetime(2026, 3, 2, 8, tzinfo=UTC)


def test_every_panel_has_one_sql_and_the_layout_names_only_known_panels() -> None:
    assert set(SQL) == set(PANELS)
    drawn = [name for names in LAYOUT for name in names]
    assert sorted(drawn) == sorted([*PANELS, LAG_PANEL])  # every panel drawn exactly once


@pytest.mark.parametrize("name", sorted(SQL))
def test_render_expands_every_macro(name: str) -> None:
    sql = render(SQL[name], Window(END - timedelta(hours=12), END))
    assert "$__" not in sql
    if "$__timeFilter" in SQL[name]:
        assert f"toDateTime({int(END.timestamp())}, 'UTC')" in sql


def test_render_matches_the_plugin_macros() -> None:
    window = Window(END - timedelta(hours=1), END)
    macros = "SELECT $__timeInterval(ts) AS t, $__interval_s FROM x WHERE $__timeFilter(ts) AND a < $__toTime"
    sql = render(macros, window)
    start, end = int((END - timedelta(hours=1)).timestamp()), int(END.timestamp())
    assert sql == (
        "SELECT toStartOfInterval(toDateTime(ts), INTERVAL 30 second) AS t, 30 FROM x WHERE "
        f"(ts >= toDateTime({start}, 'UTC') AND ts <= toDateTime({end}, 'UTC')) "
        f"AND a < toDateTime({end}, 'UTC')"
    )
    # nested parentheses inside the macro argument survive
    assert "toDateTime(assumeNotNull(a))" in render("$__timeInterval(assumeNotNull(a))", window)


@pytest.mark.parametrize(("hours", "step"), [(0.25, 10), (1, 30), (12, 300), (24 * 7, 7200)])
def test_bucket_size_keeps_charts_under_150_points(hours: float, step: int) -> None:
    window = Window(END - timedelta(hours=hours), END)
    assert window.interval_s == step
    assert hours * 3600 / step <= 150


def test_committed_grafana_dashboard_is_generated_from_the_panel_sql() -> None:
    committed = grafana.OUTPUT.read_bytes()
    assert committed == grafana.render_json(), "run: python -m carnival.dashboard.grafana"
    sqls = [t["rawSql"] for p in json.loads(committed)["panels"] for t in p["targets"] if "rawSql" in t]
    assert sorted(sqls) == sorted(s.strip() for s in SQL.values())


def test_grafana_failover_panel_is_a_state_timeline_per_site() -> None:
    panels = {p["title"]: p for p in grafana.dashboard()["panels"]}
    timeline = panels[PANELS["power_sources"].title]
    assert timeline["type"] == "state-timeline"
    assert timeline["transformations"][0]["options"]["fields"] == ["site_id"]
    transfers = panels[PANELS["transfer_times"].title]["fieldConfig"]["defaults"]
    assert transfers["custom"]["scaleDistribution"] == {"type": "log", "log": 10}
    assert [s["value"] for s in transfers["thresholds"]["steps"]] == [None, 4.0, 20.0, 10_000.0]


def test_page_assets_ship_with_the_packages() -> None:
    js = plotly_js()
    assert len(js) > 1_000_000 and b"plotly.js" in js[:2000]
    index = (STATIC / "index.html").read_text()
    for src in re.findall(r'(?:src|href)="(/static/[^"]+)"', index):
        name = src.removeprefix("/static/")
        assert name == "plotly.min.js" or name in ASSETS, src
    for name in ASSETS:
        assert (STATIC / name).read_bytes()
    assert "http" not in re.sub(r"<!--.*?-->", "", index), "no external URLs: the page works offline"


def test_layout_lists_every_chart_with_its_chart_specs() -> None:
    charts = layout(5.0)["charts"]
    assert [c["panels"] for c in charts] == [list(n) for n in LAYOUT]
    assert all(c["title"] and len(c["charts"]) == len(c["panels"]) for c in charts)


def test_lag_groups_are_the_processors_own() -> None:
    from carnival.dashboard.lag import GROUPS
    from processors.alert_router.router import RouterConfig
    from processors.runtime.app import APP_PREFIX
    from processors.scheduler.wiring_router import ROUTER_GROUP

    groups = {name: group for name, (group, _) in GROUPS.items()}
    assert groups == {
        "scheduler-router": ROUTER_GROUP,
        "scheduler": f"{APP_PREFIX}-scheduler",
        "power": f"{APP_PREFIX}-power",
        "alert-router": RouterConfig().group_id,
    }
