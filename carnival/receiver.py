"""A local Alertmanager-style webhook receiver that records every delivery in ClickHouse.

The demo points ``carnival alerts route --webhook`` at it, so the whole path producer -> detector ->
alerts.v1 -> router -> webhook runs, and every notification lands in ``carnival.alert_deliveries``
(one row per alert of a webhook body) where the dashboard and the report read it.

It answers 200 only after the rows are inserted (a synchronous insert: durable when it returns), and
503 when ClickHouse refused them, so the router retries instead of counting the alert as delivered.
A body that is not the Alertmanager shape gets 400 (the router gives it up and logs it).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import structlog

log = structlog.get_logger(__name__)

TABLE = "alert_deliveries"
COLUMNS = [
    "received_at",
    "fingerprint",
    "status",
    "kind",
    "severity",
    "site_id",
    "region",
    "summary",
    "starts_at",
    "incident_id",
    "receiver",
    "group_key",
]
ZERO_TIME_PREFIX = "0001-01-01"


class BadPayload(ValueError):
    """The body is not an Alertmanager webhook payload."""


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value or value.startswith(ZERO_TIME_PREFIX):
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def delivery_rows(body: Any, received_at: datetime) -> list[list[Any]]:
    """The ``alert_deliveries`` rows (in ``COLUMNS`` order) of one webhook body; BadPayload if unusable."""
    if not isinstance(body, dict) or not isinstance(body.get("alerts"), list):
        raise BadPayload("expected an Alertmanager webhook body with an 'alerts' list")
    rows = []
    for alert in body["alerts"]:
        if not isinstance(alert, dict) or not alert.get("fingerprint"):
            raise BadPayload("every alert needs a fingerprint")
        labels = alert.get("labels") or {}
        annotations = alert.get("annotations") or {}
        rows.append(
            [
                received_at,
                str(alert["fingerprint"]),
                str(alert.get("status") or body.get("status") or "").upper(),
                str(labels.get("kind") or labels.get("alertname") or ""),
                str(labels.get("severity") or ""),
                labels.get("site_id"),
                labels.get("region"),
                str(annotations.get("summary") or ""),
                _time(alert.get("startsAt")),
                labels.get("incident_id"),
                str(body.get("receiver") or ""),
                str(body.get("groupKey") or ""),
            ]
        )
    return rows


class DeliveryReceiver:
    """HTTP server on ``host:port`` (0: any free port) inserting each delivery; ``url`` is its address.

    ``insert(rows)`` writes the rows (the demo passes a ClickHouse insert); it is called under a lock,
    since one ClickHouse client must not be used by two threads at once.
    """

    def __init__(self, insert: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self._insert = insert
        self._lock = threading.Lock()
        self.accepted = 0
        self.refused = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                code = owner.handle(raw)
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "text/plain")
                    self.end_headers()
                    self.wfile.write(b"ok" if code == 200 else b"error")
                except (BrokenPipeError, ConnectionResetError):  # the sender gave up: it will retry
                    log.info("alert_receiver_sender_gone", status=code)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}/alerts"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    def handle(self, raw: bytes) -> int:
        """HTTP status for one POSTed body: 200 stored, 400 unusable, 503 storage failed (retry)."""
        try:
            rows = delivery_rows(orjson.loads(raw), datetime.now(UTC))
        except (orjson.JSONDecodeError, BadPayload, ValueError) as exc:
            log.warning("alert_receiver_bad_payload", error=str(exc))
            return 400
        try:
            with self._lock:
                self._insert(rows)
                self.accepted += len(rows)
        except Exception as exc:  # noqa: BLE001 - any storage failure: let the router retry
            self.refused += 1
            log.warning("alert_receiver_store_failed", error=str(exc))
            return 503
        return 200

    def start(self) -> DeliveryReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def clickhouse_insert(settings: Any) -> Any:
    """An ``insert(rows)`` for ``DeliveryReceiver`` writing to ``carnival.alert_deliveries``."""
    from sinks.clickhouse import get_client

    client = get_client(settings)

    def insert(rows: list[list[Any]]) -> None:
        client.insert(TABLE, rows, column_names=COLUMNS)

    return insert
