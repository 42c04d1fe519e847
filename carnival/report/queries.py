"""Every SQL statement of the demo report, in one place, and the code that runs them.

Each query reads only rows that landed since the demo started (``{since}``: ``_ingested_at``, or the
ledger's computation time) and, where rows carry an event time of their own, whose event time lies in
the simulated window (``{start}``..``{end}``): another run's or another test's rows on the same stack do
not blur this run's checks. Times come back as epoch milliseconds (``*_ms``), the truth's unit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from clickhouse_connect.driver.client import Client

SINCE = "{since:DateTime64(3)}"
IN_RUN = "BETWEEN {start:DateTime64(3)} AND {end:DateTime64(3)}"

QUERIES: dict[str, str] = {
    "requests": f"""
        SELECT task_id, any(priority) AS priority, toUnixTimestamp64Milli(min(ts)) AS requested_ms
        FROM task_requests WHERE _ingested_at >= {SINCE} AND ts {IN_RUN} GROUP BY task_id""",
    "task_states": f"""
        SELECT task_id, argMax(state, (ts, _offset)) AS latest,
               toUnixTimestamp64Milli(minIf(ts, state = 'ASSIGNED')) AS assigned_ms,
               countIf(state = 'ASSIGNED') AS assignments
        FROM task_events WHERE _ingested_at >= {SINCE} GROUP BY task_id""",
    "lifecycle_runs": f"""
        SELECT assignment_id, task_id, vin, state, reason, toUnixTimestamp64Milli(ts) AS ts_ms
        FROM task_events
        WHERE _ingested_at >= {SINCE} AND assignment_id IS NOT NULL
          AND state IN ('STARTED', 'COMPLETED', 'FAILED', 'PREEMPTED', 'REQUEUED', 'EXPIRED')""",
    "assigns": f"""
        SELECT assignment_id, vin, task_id, toUnixTimestamp64Milli(min(ts)) AS ts_ms
        FROM assignments WHERE _ingested_at >= {SINCE} AND command = 'ASSIGN'
        GROUP BY assignment_id, vin, task_id""",
    "status": f"""
        SELECT assignment_id, task_id, vin, status, toUnixTimestamp64Milli(ts) AS ts_ms
        FROM task_status WHERE _ingested_at >= {SINCE}""",
    "ledger": f"""
        SELECT vin, assignment_id, toUnixTimestamp64Milli(started_at) AS started_ms,
               toUnixTimestamp64Milli(ended_at) AS ended_ms, compute_seconds, energy_kwh, amount
        FROM owner_ledger FINAL WHERE ts >= {SINCE}""",
    "incidents": f"""
        SELECT incident_id, argMax(site_id, v) AS site_id, argMax(kind, v) AS kind,
               toUnixTimestamp64Milli(min(started_at)) AS started_at_ms,
               argMaxIf(transfer_ms, v, transfer_ms IS NOT NULL) AS transfer_ms,
               argMaxIf(device_id, v, device_id IS NOT NULL) AS device_id,
               arrayMap(x -> x.2, arraySort(groupArray((v, summary)))) AS summaries
        FROM (SELECT *, (coalesce(updated_at, ended_at, started_at), _offset) AS v FROM incidents
              WHERE _ingested_at >= {SINCE} AND started_at {IN_RUN})
        GROUP BY incident_id""",
    "late_dead_letters": f"""
        SELECT hex(value) AS value_hex, key FROM deadletter
        WHERE _ingested_at >= {SINCE} AND source_topic = 'power.events.v1' AND error_kind = 'LATE'""",
    "alerts": f"""
        SELECT fingerprint, status, any(kind) AS kind, any(severity) AS severity
        FROM alerts WHERE _ingested_at >= {SINCE} AND starts_at {IN_RUN} GROUP BY fingerprint, status""",
    # The latest record of each episode of the run (as view spillover_episodes_latest, kept to the run).
    "spillover": f"""
        SELECT episode_id, site_id, state, worst_state, toUnixTimestamp64Milli(started_at) AS started_ms,
               toUnixTimestamp64Milli(ended_at) AS ended_ms, tasks_spilled, sessions_shed,
               slot_hours_shifted, battery_minutes_saved
        FROM spillover_episodes WHERE _ingested_at >= {SINCE} AND started_at {IN_RUN}
        ORDER BY episode_id, updated_at DESC, _offset DESC LIMIT 1 BY episode_id""",
    "task_moves": f"""
        SELECT DISTINCT task_id, site_id, reason FROM task_events
        WHERE _ingested_at >= {SINCE} AND reason IN ('SPILLOVER_ISLANDED', 'SHED_RESERVE', 'SHED_LOAD')""",
    "deliveries": f"""
        SELECT fingerprint, status, count() AS n
        FROM alert_deliveries WHERE received_at >= {SINCE} GROUP BY fingerprint, status""",
}

# Tables for analysts, printed as they are (whole store, not only this run).
ANALYST_TABLES: list[tuple[str, str]] = [
    (
        # Over the run, from telemetry: once the simulator stops, the silent fleet's leases expire and
        # the scheduler's latest node states are all LEASE_EXPIRED, which says nothing about the run.
        "Idle compute nodes by region (5-minute buckets over the run)",
        "SELECT region, round(avg(idle_nodes), 1) AS avg_idle, max(idle_nodes) AS peak_idle, "
        "round(avg(reporting_nodes), 1) AS avg_reporting FROM carnival.idle_capacity_5m "
        "GROUP BY region ORDER BY region",
    ),
    (
        "Emulator actions",
        "SELECT action, count() AS actions, countIf(NOT ok) AS errors "
        "FROM carnival.actions GROUP BY action ORDER BY actions DESC",
    ),
    (
        "Dead-lettered records",
        "SELECT source_topic, error_kind, count() AS records FROM carnival.deadletter "
        "GROUP BY source_topic, error_kind ORDER BY records DESC",
    ),
]


def fetch(client: Client, since: datetime, start: datetime, end: datetime) -> dict[str, list[dict[str, Any]]]:
    """name -> rows (dicts by column name) of every query in ``QUERIES``."""
    out = {}
    for name, sql in QUERIES.items():
        result = client.query(sql, parameters={"since": since, "start": start, "end": end})
        out[name] = [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]
    return out


def decode_late(
    rows: list[dict[str, Any]], decode: Any, start_ms: int, end_ms: int
) -> list[tuple[str, str, int]]:
    """(site_id, device_id, seq) of the LATE dead letters whose event time is in the run;
    ``decode(bytes)`` is the power topic's decoder. An undecodable record becomes (key, "?", -1), which
    no truth row matches."""
    out = []
    for row in rows:
        try:
            event = decode(bytes.fromhex(row["value_hex"]))
            ts = event["ts"]
            ts_ms = int(ts.timestamp() * 1000) if isinstance(ts, datetime) else int(ts) // 1000
            if start_ms <= ts_ms <= end_ms:
                out.append((str(event["site_id"]), str(event["device_id"]), int(event["seq"])))
        except Exception:  # noqa: BLE001 - counted as unmatched, never hidden
            out.append((str(row.get("key") or "?"), "?", -1))
    return out
