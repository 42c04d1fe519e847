"""Alerts: what the pipeline fired on alerts.v1 against what reached the webhook receiver."""

from __future__ import annotations

from collections import Counter
from typing import Any

from carnival.report.model import Section


def check_alerts(alerts: list[dict[str, Any]], deliveries: list[dict[str, Any]]) -> Section:
    """``alerts``: alerts.v1 rows (fingerprint, status, kind, severity); ``deliveries``: rows of
    alert_deliveries (fingerprint, status)."""
    section = Section("Alerts: fired and delivered")
    fired = {a["fingerprint"]: a for a in alerts if a["status"] == "FIRING"}
    resolved = {a["fingerprint"] for a in alerts if a["status"] == "RESOLVED"}
    got_firing = {d["fingerprint"] for d in deliveries if d["status"] == "FIRING"}
    got_resolved = {d["fingerprint"] for d in deliveries if d["status"] == "RESOLVED"}
    by_kind = Counter((a["severity"], a["kind"]) for a in fired.values())
    delivered_by_kind = Counter((a["severity"], a["kind"]) for f, a in fired.items() if f in got_firing)
    section.lines.append(
        f"{len(fired)} alerts fired, {len(resolved)} resolved; {len(deliveries)} notifications received"
    )
    for (severity, kind), n in sorted(by_kind.items()):
        section.lines.append(
            f"  {severity:8} {kind:18} fired {n:>4}  delivered {delivered_by_kind[(severity, kind)]:>4}"
        )
    lost = set(fired) - got_firing
    section.check(
        "every FIRING alert reached the receiver",
        not lost,
        f"{len(fired) - len(lost)}/{len(fired)} delivered" + (f"; e.g. {sorted(lost)[0]}" if lost else ""),
    )
    lost_resolved = resolved - got_resolved
    section.check(
        "every RESOLVED alert reached the receiver",
        not lost_resolved,
        f"{len(resolved) - len(lost_resolved)}/{len(resolved)} delivered",
    )
    return section
