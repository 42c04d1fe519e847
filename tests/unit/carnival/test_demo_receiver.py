"""The demo's webhook receiver: Alertmanager bodies become alert_deliveries rows; it answers 200 only
once they are stored, 503 when storing failed (the router retries), 400 for a body it cannot use."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

import pytest

from carnival.receiver import COLUMNS, BadPayload, DeliveryReceiver, delivery_rows
from processors.alert_router.payloads import alertmanager_payload

ALERT = {
    "fingerprint": "abc123",
    "status": "FIRING",
    "severity": "critical",
    "kind": "FAILED_TRANSFER",
    "site_id": "dc-us-east-01",
    "region": None,
    "summary": "no alternate source",
    "starts_at": 1_736_172_000_000,
    "ends_at": None,
    "labels": {"team": "datacenter-power", "incident_id": "dc-us-east-01/FAILED_TRANSFER/1"},
    "incident_id": "dc-us-east-01/FAILED_TRANSFER/1",
}
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_rows_from_the_router_payload() -> None:
    [row] = delivery_rows(alertmanager_payload(ALERT, "webhook-1"), NOW)
    got = dict(zip(COLUMNS, row, strict=True))
    assert got["fingerprint"] == "abc123" and got["status"] == "FIRING"
    assert (got["kind"], got["severity"], got["site_id"]) == ("FAILED_TRANSFER", "critical", "dc-us-east-01")
    assert got["starts_at"] == datetime(2025, 1, 6, 14, tzinfo=UTC)
    assert got["receiver"] == "webhook-1" and got["incident_id"] == ALERT["incident_id"]
    resolved = alertmanager_payload({**ALERT, "status": "RESOLVED", "ends_at": 1_736_175_600_000}, "w")
    assert delivery_rows(resolved, NOW)[0][2] == "RESOLVED"


def test_not_an_alertmanager_body() -> None:
    with pytest.raises(BadPayload):
        delivery_rows({"text": "slack shape"}, NOW)
    with pytest.raises(BadPayload):
        delivery_rows({"alerts": [{"status": "firing"}]}, NOW)


def _post(url: str, body: Any) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_answers_after_storing_and_asks_for_a_retry_when_storing_fails() -> None:
    stored: list[list[Any]] = []
    failing = {"on": False}

    def insert(rows: list[list[Any]]) -> None:
        if failing["on"]:
            raise ConnectionError("clickhouse down")
        stored.extend(rows)

    receiver = DeliveryReceiver(insert).start()
    try:
        assert _post(receiver.url, alertmanager_payload(ALERT, "w")) == 200
        assert [r[1] for r in stored] == ["abc123"]
        failing["on"] = True
        assert _post(receiver.url, alertmanager_payload(ALERT, "w")) == 503
        assert _post(receiver.url, {"nope": 1}) == 400
        assert len(stored) == 1
    finally:
        receiver.stop()
