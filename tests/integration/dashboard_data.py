"""Data for the dashboard tests: the sample data set plus what the dashboard shows and it lacks.

``sinks.sample_data`` has no preemption causes, no grid meter or generator events, no dead letters and
one ingest instant. Here: PREEMPTED events get the scheduler's causes; each incident gets the transfer
sequence of a real failover (grid lost, static transfer to battery at the incident's measured transfer
time, generators take over, retransfer to grid at the end); dead letters and ingest times spread over the
last minutes of wall clock, as a sink landing them live would leave them.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from clickhouse_connect.driver.client import Client

from core.settings import Settings
from sinks import sample_data

CAUSES = ("NOT_PLUGGED_IN", "DEPARTURE_SOON", "SOC_TOO_LOW", "LEASE_EXPIRED", "NOT_PARKED")
DEADLETTER_KINDS = (("VALIDATION", "fleet.telemetry.v1"), ("MALFORMED_JSON", "tasks.requests.v1"),
                    ("UNKNOWN_FINGERPRINT", "emulator.actions.v1"))  # fmt: skip
LIVE_MINUTES = 10
UNSUNK = ("alert_deliveries",)  # written by a webhook receiver, not by the sink: no source position


def generate(seed: int = 5) -> sample_data.Rows:
    rng = random.Random(seed)
    data = sample_data.generate(seed=seed)
    for event in data["task_events"]:
        if event["state"] in ("PREEMPTED", "REQUEUED") and event["reason"] is None:  # shed ones keep theirs
            event["reason"] = rng.choice(CAUSES)
    data["power_events"] = _failovers(data["incidents"])
    now = datetime.now(UTC)
    data["deadletter"] = [
        {
            "ts": now - timedelta(seconds=rng.uniform(0, LIVE_MINUTES * 60)),
            "source_topic": topic,
            "source_partition": 0,
            "source_offset": i,
            "key": None,
            "value": "{not json" if kind == "MALFORMED_JSON" else None,
            "error_kind": kind,
            "error": f"{kind.lower()}: sample",
            "line": None,
            "processor": "sink",
        }
        for i in range(40)
        for kind, topic in [DEADLETTER_KINDS[rng.randrange(3) if i % 4 else 0]]
    ]
    # What the alert router's webhook receiver records (migration 0006 of the demo): each alert, delivered.
    data["alert_deliveries"] = [
        {
            "received_at": now - timedelta(seconds=rng.uniform(0, LIVE_MINUTES * 60)),
            **{k: a[k] for k in ("fingerprint", "status", "kind", "severity", "site_id", "summary")},
            "receiver": "alertmanager",
            "group_key": a["kind"],
        }
        for a in data["alerts"]
    ]
    for table, rows in data.items():
        if table in UNSUNK:
            continue
        for offset, row in enumerate(rows):
            row.update({"_topic": sample_data.TOPIC_OF.get(table, table), "_partition": 0, "_offset": offset})
            row["_ingested_at"] = now - timedelta(seconds=rng.uniform(0, LIVE_MINUTES * 60))
    return data


def _failovers(incidents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The device events of every incident, from its RESOLVED record (start, end, transfer time)."""
    rows: list[dict[str, Any]] = []
    seq = 0
    for inc in (r for r in incidents if r["state"] == "RESOLVED"):
        start, end, transfer = inc["started_at"], inc["ended_at"], inc["transfer_ms"]
        steps = [
            (start, "gm-1", "GRID_METER", "SOURCE_LOST", "GRID", None),
            (start + timedelta(milliseconds=transfer), "sts-1", "STS", "TRANSFER", "GRID", "BATTERY"),
            (start + timedelta(seconds=18), "ats-1", "ATS", "TRANSFER", "BATTERY", "GENERATOR"),
            (end - timedelta(minutes=2), "gm-1", "GRID_METER", "SOURCE_RESTORED", None, "GRID"),
            (end, "ats-1", "ATS", "TRANSFER", "GENERATOR", "GRID"),
        ]
        for ts, device, device_type, event, source_from, source_to in steps:
            seq += 1
            rows.append(
                {
                    "site_id": inc["site_id"], "device_id": device, "device_type": device_type, "ts": ts,
                    "seq": seq, "event_type": event, "source_from": source_from, "source_to": source_to,
                    "load_mw": 10.0, "frequency_hz": 60.0, "voltage_pu": 1.0, "battery_soc_pct": 90.0,
                    "gens_online": 2 if source_to == "GENERATOR" else 0, "detail": None,
                }
            )  # fmt: skip
    return rows


def load(settings: Settings, client: Client, data: sample_data.Rows) -> bool:
    """Rows into ClickHouse; alerts and power events also to Kafka, so processors have real lag.

    Alert deliveries go in only where the table exists (it comes with the demo's receiver); returns
    whether they did.
    """
    sample_data.load(client, {t: rows for t, rows in data.items() if t not in UNSUNK})
    sample_data.produce(settings, {t: data[t] for t in ("alerts", "power_events")})
    has_deliveries = bool(int(client.command("EXISTS TABLE alert_deliveries")))
    if has_deliveries:
        sample_data.load(client, {"alert_deliveries": data["alert_deliveries"]})
    return has_deliveries
