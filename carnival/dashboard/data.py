"""Runs the panels' SQL on ClickHouse and shapes each result for the page: columns, rows, a status.

The event-time window ends at the newest event in the data (a demo runs in simulated time, often far from
now), so the page follows the data as it arrives; the wall-clock window ends now.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from carnival.dashboard.lag import LagSampler
from carnival.dashboard.panels import LAG_PANEL, PANELS, SQL, Panel, Window, render
from sinks.query import one_line_error

# The tables whose newest event time moves the event-time window.
EVENT_CLOCK_SQL = """
SELECT max(t) FROM
(
    SELECT toDateTime64(max(ts), 3, 'UTC') AS t FROM telemetry
    UNION ALL SELECT max(ts) FROM task_events
    UNION ALL SELECT toDateTime64(max(ts), 3, 'UTC') FROM power_events
    UNION ALL SELECT max(ts) FROM actions
    UNION ALL SELECT max(starts_at) FROM alerts
)"""
# ClickHouse's codes for a table or column that does not exist (an optional panel's "no data").
MISSING_CODES = ("Code: 60.", "Code: 47.", "UNKNOWN_TABLE", "UNKNOWN_IDENTIFIER")


def utc(value: datetime) -> datetime:
    """clickhouse-connect gives naive datetimes for UTC columns: make them aware."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def cell(value: Any) -> Any:
    """One value as JSON: datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff' UTC (what plotly parses as is)."""
    if isinstance(value, datetime):
        return utc(value).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, float) and value != value:  # NaN: quantiles of nothing
        return None
    return value


class PanelSource:
    """What the HTTP handlers ask: the layout's data, one panel at a time."""

    def __init__(
        self,
        client: Client,
        lag: LagSampler | None,
        window: timedelta = timedelta(hours=12),
        live_window: timedelta = timedelta(minutes=15),
        clock_ttl_s: float = 2.0,
    ) -> None:
        self.client, self.lag = client, lag
        self.window, self.live_window, self.clock_ttl_s = window, live_window, clock_ttl_s
        self._clock: tuple[float, datetime] | None = None
        self._lock = threading.Lock()

    def latest_event(self) -> datetime:
        """The newest event time in the data (now if there is none), cached for ``clock_ttl_s``."""
        with self._lock:
            if self._clock and time.monotonic() - self._clock[0] < self.clock_ttl_s:
                return self._clock[1]
        try:
            newest = self.client.query(EVENT_CLOCK_SQL).result_rows[0][0]
        except ClickHouseError:
            newest = None
        latest = utc(newest) if isinstance(newest, datetime) and newest.year > 1971 else datetime.now(UTC)
        with self._lock:
            self._clock = (time.monotonic(), latest)
        return latest

    def window_for(self, panel: Panel) -> Window:
        if panel.clock == "wall":
            end = datetime.now(UTC)
            return Window(end - self.live_window, end)
        end = self.latest_event()
        return Window(end - self.window, end)

    def panel(self, name: str) -> dict[str, Any]:
        """``{status: ok | no_data | error, columns, rows, window, message}`` for panel ``name``."""
        if name == LAG_PANEL:
            return self._lag()
        panel = PANELS[name]
        window = self.window_for(panel)
        out: dict[str, Any] = {
            "panel": name,
            "window": {
                "start": cell(window.start),
                "end": cell(window.end),
                "interval_s": window.interval_s,
                "clock": panel.clock,
            },
            "columns": [],
            "rows": [],
        }
        try:
            result = self.client.query(render(SQL[name], window))
        except ClickHouseError as exc:
            message = one_line_error(exc)
            if panel.optional and any(code in message for code in MISSING_CODES):
                note = "its table does not exist in this database (yet)"
                return {**out, "status": "no_data", "message": note, "detail": message}
            return {**out, "status": "error", "message": message}
        rows = [[cell(v) for v in row] for row in result.result_rows]
        status = "ok" if rows else "no_data"
        return {**out, "status": status, "columns": list(result.column_names), "rows": rows}

    def _lag(self) -> dict[str, Any]:
        out: dict[str, Any] = {"panel": LAG_PANEL, "columns": ["time", "processor", "lag"], "window": None}
        if self.lag is None:
            return {**out, "status": "no_data", "rows": [], "message": "lag sampling is off"}
        rows = [[cell(ts), name, n] for ts, name, n in self.lag.rows()]
        if not rows and self.lag.error:
            return {**out, "status": "error", "rows": [], "message": self.lag.error}
        return {**out, "status": "ok" if rows else "no_data", "rows": rows, "message": self.lag.error}
