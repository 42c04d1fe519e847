"""Every query in docs/queries.md runs on realistic data that went Kafka -> sink -> ClickHouse, and the
numbers agree with the same figures computed independently in Python from the produced records."""

from __future__ import annotations

import io
import re
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from clickhouse_connect.driver.client import Client

from carnival.report.queries import QUERIES as REPORT_QUERIES
from carnival.report.spillover import spillover_section
from core.settings import Settings
from sinks import sample_data
from sinks.clickhouse import get_client
from sinks.config import SinkConfig
from sinks.kafka_sink import KafkaSink
from sinks.ledger import recompute
from sinks.migrate import migrate
from sinks.query import run_query

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "queries.md"
SECTION_RE = re.compile(r"^## (.+?)$(.*?)(?=^## |\Z)", re.M | re.S)
SQL_RE = re.compile(r"```sql\n(.*?)```", re.S)


def doc_queries() -> dict[str, str]:
    found = {}
    for title, body in SECTION_RE.findall(DOC.read_text()):
        blocks = SQL_RE.findall(body)
        assert len(blocks) == 1, f"section {title!r} must hold exactly one sql block"
        found[title.strip()] = blocks[0].strip()
    return found


QUERIES = doc_queries()


class Loaded:
    def __init__(self, client: Client, data: sample_data.Rows, prefix: str) -> None:
        self.client, self.data, self.prefix = client, data, prefix

    def rows(self, title: str) -> list[dict[str, Any]]:
        out = io.StringIO()
        run_query(self.client, QUERIES[title], "jsonl", out)
        return [orjson.loads(line) for line in out.getvalue().splitlines()]


@pytest.fixture(scope="module")
def loaded(stack: Settings) -> Iterator[Loaded]:
    """The sample data set produced to Kafka and landed by the sink in a database of its own."""
    prefix = "d" + uuid.uuid4().hex[:5] + "-"
    settings = stack.model_copy(update={"clickhouse_database": f"docs_{prefix[:-1]}"})
    migrate(settings)
    data = sample_data.generate(seed=11, prefix=prefix)
    sample_data.produce(settings, data)
    stop = threading.Event()
    sink = KafkaSink(settings, SinkConfig(group_id=f"docs-{prefix}", flush_interval_s=0.3), stop_event=stop)
    thread = threading.Thread(target=sink.run, daemon=True)
    thread.start()
    client = get_client(settings)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            landed = {
                t: int(client.command(f"SELECT count() FROM {t} WHERE {_mine(t, prefix)}")) for t in data
            }
            if all(landed[t] >= len(rows) for t, rows in data.items()):
                break
            time.sleep(0.5)
        assert landed == {t: len(rows) for t, rows in data.items()}
    finally:
        stop.set()
        thread.join(60)
    assert recompute(client, sample_data.T0, sample_data.T0 + timedelta(hours=9)) > 0
    yield Loaded(client, data, prefix)
    client.command(f"DROP DATABASE IF EXISTS {settings.clickhouse_database}")


def _mine(table: str, prefix: str) -> str:
    column = {
        "incidents": "site_id",
        "alerts": "site_id",
        "power_events": "site_id",
        "actions": "task_id",
        "task_events": "task_id",
        "task_requests": "task_id",
        "assignments": "task_id",
        "task_status": "task_id",
        "site_capacity": "site_id",
        "site_power_states": "site_id",
        "spillover_episodes": "site_id",
    }.get(table, "vin")
    return f"startsWith({column}, '{prefix}')"


@pytest.mark.parametrize("title", sorted(QUERIES))
def test_every_doc_query_runs_and_returns_rows(loaded: Loaded, title: str) -> None:
    rows = loaded.rows(title)
    if title.startswith("Dead letters"):
        return  # empty on a clean run: nothing was rejected
    assert rows, title


def test_tasks_by_state(loaded: Loaded) -> None:
    last: dict[str, tuple[Any, str]] = {}
    for e in loaded.data["task_events"]:
        if e["task_id"] not in last or e["ts"] >= last[e["task_id"]][0]:
            last[e["task_id"]] = (e["ts"], e["state"])
    expected = Counter(state for _, state in last.values())
    got = {r["state"]: r["tasks"] for r in loaded.rows("Tasks by state")}
    for state, n in expected.items():
        assert got[state] >= n  # the topic may hold other tests' tasks too
    mine = loaded.client.query(
        f"SELECT state, count() FROM task_latest WHERE startsWith(task_id, '{loaded.prefix}') GROUP BY state"
    ).result_rows
    assert dict(mine) == dict(expected)


def test_failover_incidents_by_site(loaded: Loaded) -> None:
    per_site: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in loaded.data["incidents"]:
        per_site[r["site_id"]][r["incident_id"]] = r
    rows = {r["site_id"]: r for r in loaded.rows("Failover incidents by site with transfer times")}
    for site, incidents in per_site.items():
        assert rows[site]["incidents"] == len(incidents)
        assert rows[site]["transfer_max_ms"] == round(max(i["transfer_ms"] for i in incidents.values()), 2)
        assert rows[site]["slow_transfers"] == sum(i["kind"] == "SLOW_TRANSFER" for i in incidents.values())
        assert rows[site]["open_now"] == 0


def test_alerts_over_time(loaded: Loaded) -> None:
    fired = sum(a["status"] == "FIRING" for a in loaded.data["alerts"])
    mine = loaded.client.query(
        "SELECT sum(fired), sum(resolved) FROM alerts_hourly "
        f"WHERE (hour, kind, severity) IN (SELECT toStartOfHour(starts_at), kind, severity FROM alerts "
        f"WHERE startsWith(site_id, '{loaded.prefix}'))"
    ).result_rows[0]
    assert mine[0] >= fired and mine[1] >= fired
    assert sum(r["fired"] for r in loaded.rows("Alerts over time")) >= fired


def _python_session(actions: list[dict[str, Any]]) -> tuple[int, int, int, str]:
    actions = sorted(actions, key=lambda a: a["seq"])
    loops = 0
    for prev, cur in zip(actions, actions[1:], strict=False):
        if cur["action"] != prev["action"]:
            continue
        if cur["action"] in ("CLICK", "DOUBLE_CLICK", "RIGHT_CLICK", "MOUSE_MOVE", "DRAG", "SCROLL"):
            loops += (cur["x"], cur["y"]) == (prev["x"], prev["y"])
        elif cur["action"] in ("KEY", "TYPE"):
            loops += (cur["keys"], cur["text_len"]) == (prev["keys"], prev["text_len"])
    final = [a["action"] for a in actions if a["action"] in ("DONE", "FAIL")]
    outcome = final[-1] if final else "INCOMPLETE"
    return len(actions), sum(not a["ok"] for a in actions), loops, outcome


def test_session_statistics(loaded: Loaded) -> None:
    by_session: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in loaded.data["actions"]:
        by_session[a["session_id"]].append(a)
    got = {
        r[0]: tuple(r[1:])
        for r in loaded.client.query(
            "SELECT session_id, steps, errors, loop_repeats, outcome FROM session_stats "
            f"WHERE startsWith(task_id, '{loaded.prefix}')"
        ).result_rows
    }
    assert got == {s: _python_session(a) for s, a in by_session.items()}
    assert sum(v[2] for v in got.values()) > 0  # the data set has loops to find
    top = loaded.rows("Emulator sessions: steps, pace, errors, loops and outcome")
    assert top[0]["loop_repeats"] >= max(v[2] for v in got.values())


def test_preemption_rate_by_region(loaded: Loaded) -> None:
    region = {n["vin"]: n["region"] for n in loaded.data["nodes"]}  # sites are no nodes: 'unknown'
    started, preempted = Counter(), Counter()
    for e in loaded.data["task_events"]:
        if e["state"] == "STARTED":
            started[region.get(e["vin"], "unknown")] += 1
        elif e["state"] == "PREEMPTED":
            preempted[region.get(e["vin"], "unknown")] += 1
    rows = loaded.rows("Preemption rate by region and hour of day")
    for reg in started.keys() - {"unknown"}:  # 'unknown' holds other tests' site runs too
        mine = [r for r in rows if r["region"] == reg]
        assert sum(r["runs"] for r in mine) == started[reg]
        assert sum(r["preempted"] for r in mine) == preempted[reg]
    assert sum(preempted.values()) > 0


def test_wait_and_run_percentiles_cover_every_started_task(loaded: Loaded) -> None:
    started = {e["task_id"] for e in loaded.data["task_events"] if e["state"] == "STARTED"}
    rows = loaded.rows("Wait time and run time percentiles by priority")
    assert sum(r["tasks"] for r in rows) >= len(started)
    for r in rows:
        assert 0 <= r["wait_p50_s"] <= r["wait_p90_s"] <= r["wait_p99_s"]
        assert 0 < r["run_p50_s"] <= r["run_p90_s"]


def test_idle_capacity_matches_a_recount(loaded: Loaded) -> None:
    tel = loaded.data["telemetry"]
    bucket = sample_data.T0 + timedelta(hours=2)
    region = loaded.prefix + "r-west"
    last: dict[str, dict[str, Any]] = {}
    for r in tel:
        in_bucket = r["region"] == region and bucket <= r["ts"] < bucket + timedelta(minutes=5)
        if in_bucket and (r["vin"] not in last or r["ts"] > last[r["vin"]]["ts"]):
            last[r["vin"]] = r
    idle = sum(
        r["opted_in"]
        and r["hw"] in ("HW4", "HW5")
        and r["gear"] == "P"
        and r["charge_state"] in ("STARTING", "CHARGING", "COMPLETE", "STOPPED")
        and (r["soc_pct"] or 0) >= 20
        and (r["compute_temp_c"] or 0) < 80
        for r in last.values()
    )
    rows = [r for r in loaded.rows("Idle capacity by region over time") if r["region"] == region]
    at = [r for r in rows if r["bucket"].startswith("2026-03-02T02:00:00")]
    assert at and at[0]["idle_nodes"] == idle and at[0]["reporting_nodes"] == len(last)
    assert idle > 0


def test_owner_ledger_query_totals(loaded: Loaded) -> None:
    rows = [
        r
        for r in loaded.rows("What each owner is owed, per charging session")
        if r["vin"].startswith(loaded.prefix)
    ]
    total = loaded.client.command(
        f"SELECT sum(amount) FROM owner_ledger FINAL WHERE startsWith(vin, '{loaded.prefix}')"
    )
    assert rows and abs(sum(r["amount"] for r in rows) - float(total)) < 1e-4


def _latest(rows: list[dict[str, Any]], key: str, order: str) -> dict[str, dict[str, Any]]:
    """The last record per key by (order, offset), as the *_latest views pick it."""
    out: dict[str, dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: (r[order], r["_offset"])):
        out[r[key]] = r
    return out


def _when(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_spillover_episodes(loaded: Loaded) -> None:
    episodes = _latest(loaded.data["spillover_episodes"], "episode_id", "updated_at")
    rows = {
        (r["site_id"], _when(r["started_at"])): r
        for r in loaded.rows("Spillover episodes")
        if r["site_id"].startswith(loaded.prefix)
    }
    assert len(rows) == len(episodes)
    for e in episodes.values():
        got = rows[(e["site_id"], e["started_at"])]
        assert _when(got["ended_at"]) == e["ended_at"] and got["state"] == e["state"]
        minutes = None if e["ended_at"] is None else (e["ended_at"] - e["started_at"]).total_seconds() / 60
        assert got["duration_min"] == (None if minutes is None else round(minutes, 1))
        assert got["tasks_moved"] == e["tasks_spilled"] + e["sessions_shed"]
        assert (got["tasks_spilled"], got["sessions_shed"]) == (e["tasks_spilled"], e["sessions_shed"])
        assert got["slot_hours_shifted"] == round(e["slot_hours_shifted"], 2)
        assert got["battery_minutes_saved"] == round(e["battery_minutes_saved"] or 0, 1)
        assert got["worst_state"] == e["worst_state"]
    # The data set has what the query must handle: an open episode, one without shedding, and shedding.
    assert any(r["ended_at"] is None and r["duration_min"] is None for r in rows.values())
    assert any(r["sessions_shed"] == 0 < r["tasks_spilled"] for r in rows.values())
    assert any(r["battery_minutes_saved"] > 0 for r in rows.values())


def _moves_by_site(loaded: Loaded) -> dict[tuple[str, str], list[datetime]]:
    """(site, reason) -> the first record time of each task moved for that reason: the site named on
    its records, else the latest episode of its pool's region that started before (the doc's rule)."""
    records: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for e in loaded.data["task_events"]:
        if e["reason"] in ("SPILLOVER_ISLANDED", "SHED_RESERVE", "SHED_LOAD"):
            records[(e["task_id"], e["reason"])].append(e)
    episodes = _latest(loaded.data["spillover_episodes"], "episode_id", "updated_at").values()
    out: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    for (_, reason), rows in records.items():
        moved_at = min(r["ts"] for r in rows)
        site = next((r["site_id"] for r in rows if r["site_id"] is not None), None)
        if site is None:
            started = [e for e in episodes if e["region"] == rows[0]["pool"] and e["started_at"] <= moved_at]
            site = max(started, key=lambda e: e["started_at"])["site_id"] if started else "unknown"
        out[(site, reason)].append(moved_at)
    return out


def test_task_moves_by_reason_agree_with_the_episodes(loaded: Loaded) -> None:
    moved = _moves_by_site(loaded)
    rows = {
        (r["site"], r["reason"]): r
        for r in loaded.rows("Task moves off sites by reason")
        if r["site"].startswith(loaded.prefix)
    }
    assert rows.keys() == moved.keys()
    for key, times in moved.items():
        assert rows[key]["tasks"] == len(times)
        assert (_when(rows[key]["first_move"]), _when(rows[key]["last_move"])) == (min(times), max(times))
    assert {reason for _, reason in moved} == {"SPILLOVER_ISLANDED", "SHED_RESERVE", "SHED_LOAD"}
    # Spilled tasks name no site on their records (they only ever had a car): found by their episode.
    spills = [e for e in loaded.data["task_events"] if e["reason"] == "SPILLOVER_ISLANDED"]
    assert spills and all(e["site_id"] is None for e in spills)
    # Both questions count the same moves: the episodes' totals per site are the lifecycle's.
    final = _latest(loaded.data["spillover_episodes"], "episode_id", "updated_at").values()
    for site in {s for s, _ in moved}:
        spilled = sum(e["tasks_spilled"] for e in final if e["site_id"] == site)
        shed = sum(e["sessions_shed"] for e in final if e["site_id"] == site)
        assert rows[(site, "SPILLOVER_ISLANDED")]["tasks"] == spilled
        assert (
            sum(r["tasks"] for (s, why), r in rows.items() if s == site and why != "SPILLOVER_ISLANDED")
            == shed
        )


def test_latest_site_views_take_the_latest_record_whole(loaded: Loaded) -> None:
    """A value the latest record leaves null is null: a site back on the grid has no battery runtime."""
    for view, table in (
        ("site_power_latest", "site_power_states"),
        ("site_capacity_latest", "site_capacity"),
    ):
        expected = _latest(loaded.data[table], "site_id", "ts")
        result = loaded.client.query(f"SELECT * FROM {view} WHERE startsWith(site_id, '{loaded.prefix}')")
        got = {r[0]: dict(zip(result.column_names, r, strict=True)) for r in result.result_rows}
        assert got.keys() == expected.keys()
        for site, row in got.items():
            want = {c: expected[site][c] for c in row}
            assert {c: _utc(v) for c, v in row.items()} == want, (view, site)
    power = _latest(loaded.data["site_power_states"], "site_id", "ts")
    assert any(r["state"] == "GRID" and r["battery_runtime_min"] is None for r in power.values())
    assert any(r["state"] != "GRID" for r in power.values())


def _utc(value: Any) -> Any:
    return value.replace(tzinfo=UTC) if isinstance(value, datetime) and value.tzinfo is None else value


def test_the_demo_reports_spillover_section_from_landed_rows(loaded: Loaded) -> None:
    """The report's two spillover queries, on rows the sink landed, and the section they make."""
    params = {"since": datetime(2020, 1, 1, tzinfo=UTC), "start": sample_data.T0,
              "end": sample_data.T0 + timedelta(hours=9)}  # fmt: skip
    fetched = {}
    for name, mine in (("spillover", "site_id"), ("task_moves", "task_id")):  # (a spill names no site)
        result = loaded.client.query(REPORT_QUERIES[name], parameters=params)
        fetched[name] = [
            dict(zip(result.column_names, r, strict=True))
            for r in result.result_rows
            if str(r[result.column_names.index(mine)]).startswith(loaded.prefix)
        ]
    final = _latest(loaded.data["spillover_episodes"], "episode_id", "updated_at")
    got = {r["episode_id"]: r for r in fetched["spillover"]}
    assert got.keys() == final.keys()
    for episode_id, e in final.items():
        ended = None if e["ended_at"] is None else int(e["ended_at"].timestamp() * 1000)
        assert got[episode_id]["ended_ms"] == ended
        assert got[episode_id]["tasks_spilled"] == e["tasks_spilled"]
        assert got[episode_id]["sessions_shed"] == e["sessions_shed"]
        assert got[episode_id]["battery_minutes_saved"] == e["battery_minutes_saved"]
    spilled = sum(e["tasks_spilled"] for e in final.values())
    shed = sum(e["sessions_shed"] for e in final.values())
    lines = spillover_section(fetched["spillover"], fetched["task_moves"]).lines
    assert lines[0].startswith(
        f"{len(final)} episodes at 3 sites (1 still open): {spilled + shed} tasks moved ({spilled} spilled"
    )
    assert "(the episodes count" not in lines[-1]  # the lifecycle agrees
