"""Incidents -> ``alerts.v1`` records: stable fingerprint, severity, an actionable summary, labels.

An incident's OPEN becomes a FIRING alert and its RESOLVED a RESOLVED alert with the same fingerprint;
UPDATE records stay on ``power.incidents.v1`` (the router would deduplicate a repeated FIRING anyway).
Works on ``Incident`` objects and on decoded ``power.incidents.v1`` records alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from processors.power.events import Incident, to_datetime

__all__ = ["RUNBOOK_BASE", "SEVERITY", "alert_for_incident", "fingerprint", "severity_for"]

SEVERITY: dict[str, str] = {
    "FAILED_TRANSFER": "critical",
    "GEN_START_FAILURE": "critical",
    "BATTERY_RESERVE": "critical",
    "SITE_SILENT": "warning",  # critical while a failover is open, see severity_for
    "SLOW_TRANSFER": "warning",
    "FLAPPING": "warning",
    "PQ_EXCURSION": "warning",
    "LOAD_SHED": "warning",
    "SEQUENCE_GAP": "warning",
    "FAILOVER": "info",
}
RUNBOOK_BASE = "docs/power.md#"


def fingerprint(kind: str, site_id: str, key: str) -> str:
    """Stable id of one underlying problem: the same incident always gives the same fingerprint."""
    return hashlib.sha256(f"power|{kind}|{site_id}|{key}".encode()).hexdigest()[:16]


def severity_for(kind: str, parent_incident_id: str | None) -> str:
    if kind == "SITE_SILENT" and parent_incident_id:
        return "critical"  # silent in the middle of a failover: nobody can see what the site does
    return SEVERITY.get(kind, "warning")


def _ms(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return to_datetime(int(value) * 1000)  # ints are timestamp-millis in the Avro records


def alert_for_incident(incident: Incident | Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``alerts.v1`` record for an incident record, or None for UPDATE records."""
    rec = incident.to_record() if isinstance(incident, Incident) else incident
    state = rec["state"]
    if state == "UPDATE":
        return None
    kind, site_id, incident_id = rec["kind"], rec["site_id"], rec["incident_id"]
    parent = rec.get("parent_incident_id")
    severity = severity_for(kind, parent)
    labels = {
        "alertname": "Power" + "".join(w.capitalize() for w in kind.split("_")),
        "kind": kind,
        "severity": severity,
        "site_id": site_id,
        "incident_id": incident_id,
        "team": "datacenter-power",
        "runbook": RUNBOOK_BASE + kind.lower().replace("_", "-"),
    }
    for name in ("source_from", "source_to", "device_id", "parent_incident_id"):
        if rec.get(name):
            labels[name] = str(rec[name])
    for name in ("transfer_ms", "min_battery_soc_pct", "load_mw", "gens_online", "time_on_alternate_ms"):
        if rec.get(name) is not None:
            labels[name] = f"{rec[name]:g}"
    resolved = state == "RESOLVED"
    summary = rec["summary"]
    if not resolved and severity == "critical":
        summary = "[CRITICAL] " + summary
    return {
        "fingerprint": fingerprint(kind, site_id, incident_id),
        "status": "RESOLVED" if resolved else "FIRING",
        "severity": severity,
        "kind": kind,
        "site_id": site_id,
        "region": None,
        "summary": summary,
        "starts_at": _ms(rec["started_at"]),
        "ends_at": _ms(rec.get("ended_at") or rec.get("updated_at")) if resolved else None,
        "labels": labels,
        "incident_id": incident_id,
    }
