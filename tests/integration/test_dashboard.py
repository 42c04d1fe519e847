"""`carnival dashboard` against the real stack: every panel's SQL (the page's and Grafana's) returns what
the loaded data says, the server serves the page, its assets and the panels, and headless Chromium draws
every chart with data and no console error (screenshot: .artifacts/dashboard.png)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dashboard_data
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError
from headless_chromium import CHROMIUM, Browser

from carnival.dashboard import grafana
from carnival.dashboard.data import PanelSource
from carnival.dashboard.panels import LAG_PANEL, LAYOUT, PANELS, Window, render
from carnival.dashboard.server import DashboardServer
from core.settings import Settings
from sinks import sample_data
from sinks.clickhouse import get_client
from sinks.migrate import migrate

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ARTIFACT = ROOT / ".artifacts" / "dashboard.png"
WINDOW = timedelta(hours=9)  # the sample data spans 8 hours
OPTIONAL = {name for name, panel in PANELS.items() if panel.optional}  # a table other code may not create


@dataclass
class Loaded:
    settings: Settings
    client: Client
    data: sample_data.Rows
    server: DashboardServer
    has_deliveries: bool  # the alert_deliveries table exists in this build (the demo's webhook receiver)

    def panel(self, name: str) -> dict[str, Any]:
        return self.server.source.panel(name)

    def get(self, path: str) -> tuple[int, str, bytes]:
        try:
            with urllib.request.urlopen(self.server.url.rstrip("/") + path, timeout=30) as resp:
                return resp.status, resp.headers["Content-Type"], resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers["Content-Type"], exc.read()


@pytest.fixture(scope="module")
def loaded(stack: Settings) -> Iterator[Loaded]:
    """The dashboard's data set in a database of its own, and a dashboard server on a free port."""
    settings = stack.model_copy(update={"clickhouse_database": f"dash_{uuid.uuid4().hex[:8]}"})
    migrate(settings)
    client = get_client(settings)
    data = dashboard_data.generate()
    has_deliveries = dashboard_data.load(settings, client, data)
    server = DashboardServer(settings, "127.0.0.1", 0, refresh_s=1.0, window=WINDOW)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    assert server.lag is not None
    deadline = time.monotonic() + 60  # a fresh broker's group coordinator takes a few seconds to come up
    while not server.lag.rows() and time.monotonic() < deadline:
        time.sleep(0.5)
    try:
        yield Loaded(settings, client, data, server, has_deliveries)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        client.command(f"DROP DATABASE IF EXISTS {settings.clickhouse_database}")


def rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(zip(result["columns"], r, strict=True)) for r in result["rows"]]


# ------------------------------------------------------------------------------------------- panel SQL
def expected_status(loaded: Loaded, name: str) -> str:
    return "no_data" if name in OPTIONAL and not loaded.has_deliveries else "ok"


@pytest.mark.parametrize("name", sorted(PANELS))
def test_every_panel_returns_rows(loaded: Loaded, name: str) -> None:
    if expected_status(loaded, name) == "no_data":
        pytest.skip(f"no table for {name} in this build")
    result = loaded.panel(name)
    assert result["status"] == "ok", result.get("message")
    assert result["rows"]
    assert set(PANELS[name].chart.y) <= set(result["columns"])


def test_a_missing_optional_table_is_no_data_not_an_error(loaded: Loaded) -> None:
    empty = f"dash_empty_{uuid.uuid4().hex[:6]}"
    loaded.client.command(f"CREATE DATABASE {empty}")
    try:
        settings = loaded.settings.model_copy(update={"clickhouse_database": empty})
        source = PanelSource(get_client(settings), None)
        for name in OPTIONAL:
            result = source.panel(name)
            assert result["status"] == "no_data" and result["rows"] == []
            assert "does not exist" in result["message"]
        assert source.panel("alerts")["status"] == "error"  # a contract table missing is an error
    finally:
        loaded.client.command(f"DROP DATABASE {empty}")


def test_panels_count_what_was_loaded(loaded: Loaded) -> None:
    data = loaded.data
    causes = Counter(e["reason"] for e in data["task_events"] if e["state"] == "PREEMPTED")
    got: Counter[str] = Counter()
    for r in rows(loaded.panel("preemptions")):
        got[r["cause"]] += r["preemptions"]
    assert got == causes
    incidents = {r["incident_id"]: r for r in data["incidents"]}
    transfers = rows(loaded.panel("transfer_times"))
    measured = sorted(round(i["transfer_ms"], 3) for i in incidents.values())
    assert sorted(r["transfer_ms"] for r in transfers) == measured
    fired = {(a["fingerprint"], a["starts_at"]) for a in data["alerts"] if a["status"] == "FIRING"}
    assert sum(r["fired"] for r in rows(loaded.panel("alerts"))) == len(fired)
    assert sum(r["records"] for r in rows(loaded.panel("deadletters"))) == len(data["deadletter"])
    if loaded.has_deliveries:
        assert sum(r["deliveries"] for r in rows(loaded.panel("alert_deliveries"))) == len(data["alerts"])
    traced = {a["task_id"] for a in data["actions"]}
    assert sum(r["tasks"] for r in rows(loaded.panel("trace_steps"))) == len(traced)
    final: dict[str, dict[str, Any]] = {}  # each episode's latest record: its totals
    for e in sorted(data["spillover_episodes"], key=lambda e: (e["updated_at"], e["_offset"])):
        final[e["episode_id"]] = e
    spillover = rows(loaded.panel("spillover"))
    assert sum(r["tasks_moved"] for r in spillover) == sum(
        e["tasks_spilled"] + e["sessions_shed"] for e in final.values()
    )
    slot_hours = sum(e["slot_hours_shifted"] for e in final.values())
    assert sum(r["slot_hours_shifted"] for r in spillover) == pytest.approx(slot_hours, abs=0.01)
    battery = sum(e["battery_minutes_saved"] or 0 for e in final.values())
    assert (
        sum(r["battery_minutes_saved"] for r in spillover) == pytest.approx(battery, abs=0.01) and battery > 0
    )


CHANGES = {("TRANSFER", d) for d in ("STS", "ATS")} | {("SOURCE_LOST", "GRID_METER")}


def test_failover_timeline_follows_each_transfer(loaded: Loaded) -> None:
    bands = rows(loaded.panel("power_sources"))
    events = sorted(loaded.data["power_events"], key=lambda e: (e["site_id"], e["ts"]))
    expected = []
    for site in sorted({e["site_id"] for e in events}):
        expected.append((site, "GRID"))  # the window opens before the first event: on the grid
        expected += [
            (site, e["source_to"] if e["event_type"] == "TRANSFER" else "NONE")
            for e in events
            if e["site_id"] == site and (e["event_type"], e["device_type"]) in CHANGES
        ]
    assert [(b["site_id"], b["source"]) for b in bands] == expected
    assert {b["source"] for b in bands} == {"NONE", "BATTERY", "GENERATOR", "GRID"}


def test_queue_depth_never_negative_and_ends_empty(loaded: Loaded) -> None:
    depth = [r["queued"] for r in rows(loaded.panel("task_queue"))]
    assert min(depth) >= 0 and max(depth) > 0
    assert depth[-1] == 0  # every sample task was started in the end
    arrivals = sum(r["arrivals"] for r in rows(loaded.panel("task_queue")))
    assert arrivals == len(loaded.data["task_requests"])


def test_idle_capacity_is_the_views_rows(loaded: Loaded) -> None:
    got = rows(loaded.panel("idle_capacity"))
    total = loaded.client.query("SELECT sum(idle_nodes), count() FROM idle_capacity_5m").first_row
    assert (sum(r["idle_nodes"] for r in got), len(got)) == tuple(total)


def test_consumer_lag_per_processor(loaded: Loaded) -> None:
    result = loaded.panel(LAG_PANEL)
    assert result["status"] == "ok", result.get("message")
    latest = {r["processor"]: r["lag"] for r in rows(result)}
    assert set(latest) == {"scheduler-router", "scheduler", "power", "alert-router", "sink"}
    # Alerts and power events went to Kafka and no processor ran: the whole topic is their lag.
    assert latest["power"] >= len(loaded.data["power_events"])
    assert latest["alert-router"] >= len(loaded.data["alerts"])


def test_every_grafana_panel_sql_runs(loaded: Loaded) -> None:
    """The committed Grafana dashboard's SQL, macros expanded, against the embedded ClickHouse."""
    dashboard = json.loads(grafana.OUTPUT.read_text())
    end = loaded.server.source.latest_event()
    window = Window(end - WINDOW, end)
    live = Window(datetime.now(UTC) - timedelta(minutes=15), datetime.now(UTC))
    titles = {p.title: p for p in PANELS.values()}
    ran = 0
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            if "rawSql" not in target:
                continue
            meta = titles[panel["title"]]
            sql = render(target["rawSql"], live if meta.clock == "wall" else window)
            if meta.optional and not loaded.has_deliveries:
                with pytest.raises(ClickHouseError, match="alert_deliveries"):
                    loaded.client.query(sql)
                continue
            assert loaded.client.query(sql).result_rows, panel["title"]
            ran += 1
    assert ran == len(PANELS) - (0 if loaded.has_deliveries else len(OPTIONAL))


# ---------------------------------------------------------------------------------------------- server
def test_server_serves_page_assets_and_panels(loaded: Loaded) -> None:
    status, ctype, body = loaded.get("/")
    assert status == 200 and ctype.startswith("text/html") and b"/static/plotly.min.js" in body
    status, ctype, body = loaded.get("/static/plotly.min.js")
    assert status == 200 and ctype == "text/javascript" and len(body) > 1_000_000
    status, _, body = loaded.get("/api/layout")
    assert [c["panels"] for c in json.loads(body)["charts"]] == [list(n) for n in LAYOUT]
    status, ctype, body = loaded.get("/api/panel/alerts")
    assert status == 200 and ctype == "application/json" and json.loads(body)["rows"]
    assert loaded.get("/api/panel/nope")[0] == 404
    assert loaded.get("/static/../pyproject.toml")[0] == 404


def test_cli_prints_the_url_and_serves(stack: Settings, stack_env: dict[str, str]) -> None:
    env = {**os.environ, **stack_env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "carnival.cli", "dashboard", "--port", "0", "--no-lag"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("carnival dashboard: http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split()[2]
        with urllib.request.urlopen(url + "healthz", timeout=30) as resp:
            assert resp.read() == b"ok\n"
    finally:
        proc.terminate()
        proc.wait(30)


# --------------------------------------------------------------------------------------------- browser
def test_browser_draws_every_chart_with_data(loaded: Loaded, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (make install: apt-get install chromium)")
    browser = Browser(tmp_path / "profile")
    try:
        browser.goto(loaded.server.url)
        page = "(window.carnivalDashboard || {})"
        state = browser.wait_for(f"{page}.refreshes >= 1 && {page}.charts")
        assert state, "the page never finished its first refresh"
        assert set(state) == {"-".join(n) for n in LAYOUT}
        for chart_id, chart in state.items():
            if expected_status(loaded, chart_id.split("-")[0]) == "no_data":
                assert chart["status"] == "no_data" and "does not exist" in chart["message"], chart
            else:
                assert chart["status"] == "ok" and chart["points"] > 0, (chart_id, chart)
        # Live: a dead letter landing now shows up at the next refresh (the page polls every second).
        before = state["deadletters"]["points"]
        extra = dict(loaded.data["deadletter"][0], ts=datetime.now(UTC), _offset=10_000,
                     error_kind="DECODE", _ingested_at=datetime.now(UTC))  # fmt: skip
        sample_data.load(loaded.client, {"deadletter": [extra]})
        grown = browser.wait_for(f"window.carnivalDashboard.charts.deadletters.points > {before}")
        assert grown, "the dead-letter chart did not pick up the new row"
        shot = browser.screenshot(tmp_path / "dashboard.png")
        assert browser.errors == []
    finally:
        browser.close()
    ARTIFACT.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACT)
    assert shot.stat().st_size > 50_000


def test_group_lag_counts_what_a_group_committed(loaded: Loaded) -> None:
    """streams.lag.group_lag, as the lag panel uses it: a group that never committed owes the whole topic."""
    from streams.kafka import make_consumer
    from streams.lag import group_lag

    group = f"dash-lag-{uuid.uuid4().hex[:6]}"
    total = group_lag(loaded.settings, group, ["alerts.v1"])["alerts.v1"]
    assert total >= len(loaded.data["alerts"])
    consumer = make_consumer(loaded.settings, group)
    consumer.subscribe(["alerts.v1"])
    taken, deadline = 0, time.monotonic() + 60
    try:
        while taken < 5 and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is not None and not msg.error():
                consumer.commit(message=msg, asynchronous=False)
                taken += 1
    finally:
        consumer.close()
    assert taken == 5
    # A commit covers its partition up to that record, and records arrive in order within a partition.
    assert group_lag(loaded.settings, group, ["alerts.v1"])["alerts.v1"] == total - 5
