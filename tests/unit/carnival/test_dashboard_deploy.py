"""deploy/prometheus and deploy/grafana: the alert rules are valid (promtool, where installed) and name
metrics the code really exports; the Grafana provisioning names the datasources the dashboard uses."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "deploy" / "prometheus" / "carnival-rules.yml"
GRAFANA = ROOT / "deploy" / "grafana"
METRIC_RE = re.compile(r"\b(carnival_[a-z_]+)")
DEFINED_RE = re.compile(r"(?:Counter|Gauge|Histogram)\(\s*\"(carnival_[a-z_]+)\"", re.S)
HISTOGRAM_RE = re.compile(r"Histogram\(\s*\"(carnival_[a-z_]+)\"", re.S)


def exported_metrics() -> set[str]:
    """Every carnival_* metric defined in the package code (histograms with their series suffixes)."""
    names: set[str] = set()
    for pkg in ("core", "streams", "sinks", "processors", "simulator", "carnival"):
        for path in (ROOT / pkg).rglob("*.py"):
            text = path.read_text()
            names.update(DEFINED_RE.findall(text))
            names.update(f"{h}{s}" for h in HISTOGRAM_RE.findall(text) for s in ("_bucket", "_sum", "_count"))
    return names


def rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_rules_have_the_fields_alertmanager_routes_on() -> None:
    found = rules()
    assert {r["alert"] for r in found} >= {
        "CarnivalWorkerDown", "CarnivalSinkLagHigh", "CarnivalSinkBehind", "CarnivalDeadLetterRate",
    }  # fmt: skip
    for rule in found:
        assert rule["expr"].strip() and rule["for"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"]


def test_rules_name_only_metrics_the_code_exports() -> None:
    exported = exported_metrics()
    assert "carnival_sink_lag_records" in exported  # the scan itself works
    for rule in rules():
        expr = rule["expr"]
        for alternatives in re.findall(r"carnival_\(([a-z_|]+)\)_total", expr):  # a __name__ regex
            for middle in alternatives.split("|"):
                assert f"carnival_{middle}_total" in exported, (rule["alert"], middle)
        for name in METRIC_RE.findall(re.sub(r"carnival_\([a-z_|]+\)_total", "", expr)):
            assert name in exported, (rule["alert"], name)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="no promtool (Debian package prometheus)")
def test_promtool_accepts_the_rules_and_the_example_config() -> None:
    for args in (["check", "rules", str(RULES)], ["check", "config", str(RULES.parent / "prometheus.yml")]):
        done = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def test_grafana_provisioning_names_the_dashboards_datasources() -> None:
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "carnival.yaml").read_text())
    by_uid = {d["uid"]: d for d in sources["datasources"]}
    dashboard = json.loads((GRAFANA / "dashboards" / "carnival.json").read_text())
    targets = [t for p in dashboard["panels"] for t in p["targets"]]
    used = {(t["datasource"]["uid"], t["datasource"]["type"]) for t in targets}
    assert used == {(uid, d["type"]) for uid, d in by_uid.items()}
    assert by_uid["carnival-clickhouse"]["type"] == "grafana-clickhouse-datasource"
    assert by_uid["carnival-clickhouse"]["jsonData"]["defaultDatabase"] == "carnival"
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "carnival.yaml").read_text())
    assert providers["providers"][0]["type"] == "file"
