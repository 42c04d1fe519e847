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
from processors.power.kinds import BY_NAME, SEVERITY, alertname, anchor

__all__ = ["RUNBOOK_BASE", "SEVERITY", "alert_for_incident", "fingerprint", "severity_for"]

RUNBOOK_BASE = "docs/power.md#"


def fingerprint(kind: str, site_id: str, key: str) -> str:
    """Stable id of one underlying problem: the same incident always gives the same fingerprint."""
    return hashlib.sha256(f"power|{kind}|{site_id}|{key}".encode()).hexdigest()[:16]


def severity_for(kind: str, parent_incident_id: str | None) -> str:
    """The declared severity (``processors.power.kinds``); e.g. SITE_SILENT is critical during a failover:
    nobody can see what the site does. Unknown kinds (a newer producer) are warnings."""
    spec = BY_NAME.get(kind)
    return "warning" if spec is None else spec.severity_for(parent_incident_id)


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
        "alertname": alertname(kind),
        "kind": kind,
        "severity": severity,
        "site_id": site_id,
        "incident_id": incident_id,
        "team": "datacenter-power",
        "runbook": RUNBOOK_BASE + anchor(kind),
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
