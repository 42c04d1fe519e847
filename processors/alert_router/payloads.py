"""Webhook bodies: the Prometheus Alertmanager webhook shape (version 4) and Slack-compatible text.

One ``alerts.v1`` record becomes one notification; ``groupKey`` is per fingerprint, so a receiver that
groups by it sees FIRING and RESOLVED of one problem as one group.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

__all__ = ["ZERO_TIME", "alertmanager_alert", "alertmanager_payload", "iso", "slack_payload"]

ZERO_TIME = "0001-01-01T00:00:00Z"  # what Alertmanager sends as endsAt of a firing alert
_EMOJI = {"critical": ":red_circle:", "warning": ":large_orange_circle:", "info": ":large_blue_circle:"}


def iso(value: Any) -> str:
    """ISO-8601 UTC with milliseconds; ints are epoch milliseconds (Avro timestamp-millis)."""
    if value is None:
        return ZERO_TIME
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(int(value) / 1000, UTC)
    elif value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _labels(alert: dict[str, Any]) -> dict[str, str]:
    labels = {str(k): str(v) for k, v in (alert.get("labels") or {}).items()}
    labels.setdefault("alertname", alert["kind"])
    labels["severity"] = alert["severity"]
    labels["kind"] = alert["kind"]
    for name in ("site_id", "region", "incident_id"):
        if alert.get(name):
            labels[name] = str(alert[name])
    return labels


def alertmanager_alert(alert: dict[str, Any], external_url: str = "") -> dict[str, Any]:
    status = "resolved" if alert["status"] == "RESOLVED" else "firing"
    annotations = {"summary": alert["summary"], "description": alert["summary"]}
    if alert.get("labels", {}).get("runbook"):
        annotations["runbook_url"] = alert["labels"]["runbook"]
    return {
        "status": status,
        "labels": _labels(alert),
        "annotations": annotations,
        "startsAt": iso(alert["starts_at"]),
        "endsAt": iso(alert.get("ends_at")) if status == "resolved" else ZERO_TIME,
        "generatorURL": external_url,
        "fingerprint": alert["fingerprint"],
    }


def alertmanager_payload(alert: dict[str, Any], receiver: str, external_url: str = "") -> dict[str, Any]:
    am = alertmanager_alert(alert, external_url)
    group_labels = {"alertname": am["labels"]["alertname"], "fingerprint": alert["fingerprint"]}
    return {
        "version": "4",
        "groupKey": '{}:{fingerprint="%s"}' % alert["fingerprint"],  # noqa: UP031 - braces in the text
        "truncatedAlerts": 0,
        "status": am["status"],
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": am["labels"],
        "commonAnnotations": am["annotations"],
        "externalURL": external_url,
        "alerts": [am],
    }


def slack_payload(alert: dict[str, Any]) -> dict[str, str]:
    """``{"text": ...}``: accepted by Slack incoming webhooks and most chat tools (Mattermost, ...)."""
    resolved = alert["status"] == "RESOLVED"
    mark = ":white_check_mark:" if resolved else _EMOJI.get(alert["severity"], ":bell:")
    where = alert.get("site_id") or alert.get("region") or "-"
    when = f"ended {iso(alert.get('ends_at'))}" if resolved else f"since {iso(alert['starts_at'])}"
    return {
        "text": f"{mark} *[{alert['status']}:{alert['severity']}] {alert['kind']}* {where}: "
        f"{alert['summary']} ({when}, fingerprint `{alert['fingerprint']}`)"
    }
