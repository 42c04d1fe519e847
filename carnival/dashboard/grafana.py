"""The Grafana dashboard, generated from the same panel SQL as the web dashboard.

``python -m carnival.dashboard.grafana`` rewrites ``deploy/grafana/dashboards/carnival.json``; a unit test
fails when the file and ``panels.SQL`` disagree. ClickHouse panels use the official plugin
(grafana-clickhouse-datasource); consumer lag comes from Prometheus (``carnival_sink_lag_records``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

from carnival.dashboard.panels import (
    LAG_DESCRIPTION,
    LAG_PANEL,
    LAYOUT,
    PANELS,
    SQL,
    THRESHOLDS_MS,
    WIDE,
    Panel,
)

OUTPUT = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "carnival.json"
CLICKHOUSE = {"type": "grafana-clickhouse-datasource", "uid": "carnival-clickhouse"}
PROMETHEUS = {"type": "prometheus", "uid": "carnival-prometheus"}
FORMAT_TIMESERIES, FORMAT_TABLE = 0, 1  # the plugin's query formats
SOURCE_COLORS = {"GRID": "green", "BATTERY": "blue", "GENERATOR": "yellow", "NONE": "red"}
UNITS = {"transfer_times": "ms", "task_wait": "s", "trace_activity": "short"}
HEIGHT = 9


def _target(name: str, fmt: int) -> dict[str, Any]:
    return {
        "refId": "A",
        "datasource": CLICKHOUSE,
        "editorType": "sql",
        "format": fmt,
        "queryType": "table" if fmt == FORMAT_TABLE else "timeseries",
        "rawSql": SQL[name].strip(),
    }


def _timeseries(panel: Panel) -> dict[str, Any]:
    chart = panel.chart
    custom: dict[str, Any] = {
        "drawStyle": {"bar": "bars", "scatter": "points"}.get(chart.kind, "line"),
        "fillOpacity": 60 if chart.kind in ("area", "bar") else 0,
        "stacking": {"mode": "normal" if chart.kind in ("area", "bar") else "none"},
        "axisLabel": chart.y_title,
        "pointSize": 8 if chart.kind == "scatter" else 4,
        "showPoints": "always" if chart.kind == "scatter" else "auto",
    }
    defaults: dict[str, Any] = {"custom": custom, "unit": UNITS.get(panel.name, "short")}
    if chart.log_y:
        custom["scaleDistribution"] = {"type": "log", "log": 10}
        custom["thresholdsStyle"] = {"mode": "dashed"}
        steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
        colors = ("yellow", "orange", "red")
        steps += [{"color": c, "value": v} for c, v in zip(colors, THRESHOLDS_MS.values(), strict=True)]
        defaults["thresholds"] = {"mode": "absolute", "steps": steps}
    overrides = [
        {
            "matcher": {"id": "byName", "options": column},
            "properties": [
                {"id": "custom.axisPlacement", "value": "right"},
                {"id": "custom.axisLabel", "value": chart.y2_title},
                {"id": "custom.drawStyle", "value": "line"},
                {"id": "custom.fillOpacity", "value": 0},
                {"id": "custom.stacking", "value": {"mode": "none"}},
            ],
        }
        for column in chart.y2
    ]
    return {
        "type": "timeseries",
        "targets": [_target(panel.name, FORMAT_TIMESERIES)],
        "fieldConfig": {"defaults": defaults, "overrides": overrides},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }  # fmt: skip


def _state_timeline(panel: Panel) -> dict[str, Any]:
    mappings = [{"type": "value", "options": {s: {"color": c, "text": s} for s, c in SOURCE_COLORS.items()}}]
    return {
        "type": "state-timeline",
        "targets": [_target(panel.name, FORMAT_TABLE)],
        "transformations": [
            {"id": "partitionByValues", "options": {"fields": [panel.chart.series], "keepFields": False}}
        ],
        "fieldConfig": {"defaults": {"mappings": mappings, "color": {"mode": "thresholds"}}, "overrides": []},
        "options": {"mergeValues": True, "showValue": "never", "rowHeight": 0.8,
                    "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
    }  # fmt: skip


def _barchart(panel: Panel) -> dict[str, Any]:
    chart = panel.chart
    return {
        "type": "barchart",
        "targets": [_target(panel.name, FORMAT_TABLE)],
        "transformations": [
            {
                "id": "groupingToMatrix",
                "options": {"columnField": chart.series, "rowField": chart.x, "valueField": chart.y[0]},
            }
        ],
        "fieldConfig": {
            "defaults": {"custom": {"axisLabel": chart.y_title, "fillOpacity": 80}},
            "overrides": [],
        },
        "options": {"stacking": "normal", "xField": chart.x, "showValue": "never",
                    "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
    }  # fmt: skip


def _lag_panel() -> dict[str, Any]:
    return {
        "type": "timeseries",
        "title": "Sink lag per topic",
        "description": LAG_DESCRIPTION + " Prometheus: the sink's carnival_sink_lag_records gauge.",
        "datasource": PROMETHEUS,
        "targets": [
            {
                "refId": "A",
                "datasource": PROMETHEUS,
                "expr": "sum by (topic) (carnival_sink_lag_records)",
                "legendFormat": "{{topic}}",
            }
        ],
        "fieldConfig": {
            "defaults": {"unit": "short", "custom": {"axisLabel": "records behind"}},
            "overrides": [],
        },
    }


def panel_json(name: str) -> dict[str, Any]:
    if name == LAG_PANEL:
        return _lag_panel()
    panel = PANELS[name]
    kind = panel.grafana.get("type", "timeseries")
    body = {"state-timeline": _state_timeline, "barchart": _barchart}.get(kind, _timeseries)(panel)
    return {"title": panel.title, "description": panel.description, "datasource": CLICKHOUSE, **body}


def dashboard() -> dict[str, Any]:
    """The dashboard JSON: the page's charts in the page's order (a two-panel chart is two panels)."""
    panels: list[dict[str, Any]] = []
    x = y = 0
    for names in LAYOUT:
        for name in names:
            width = 16 if name in WIDE else 8
            if x + width > 24:
                x, y = 0, y + HEIGHT
            panels.append({"id": len(panels) + 1, "gridPos": {"h": HEIGHT, "w": width, "x": x, "y": y},
                           **panel_json(name)})  # fmt: skip
            x += width
    return {
        "uid": "carnival-live",
        "title": "Carnival · live operations",
        "description": "Fleet capacity, tasks, failovers, alerts, emulator traces and pipeline health.",
        "tags": ["carnival"],
        "timezone": "utc",
        "schemaVersion": 39,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-12h", "to": "now"},
        "templating": {"list": []},
        "annotations": {"list": []},
        "panels": panels,
    }


def render_json() -> bytes:
    return orjson.dumps(dashboard(), option=orjson.OPT_INDENT_2) + b"\n"


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else OUTPUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(render_json())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
