"""The dashboard's HTTP server: the page, its assets (all shipped in Python packages: it works offline),
and one JSON endpoint per panel that the page polls.

Routes: ``/`` the page · ``/static/<file>`` assets (``plotly.min.js`` from the installed plotly package) ·
``/api/layout`` charts, titles, refresh · ``/api/panel/<name>`` one panel's rows · ``/healthz``.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from datetime import timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from carnival.dashboard.data import PanelSource
from carnival.dashboard.lag import LagSampler
from carnival.dashboard.panels import (
    LAG_CHART,
    LAG_DESCRIPTION,
    LAG_PANEL,
    LAG_TITLE,
    LAYOUT,
    PANELS,
    THRESHOLDS_MS,
    WIDE,
)
from core.settings import Settings
from sinks.clickhouse import get_client

STATIC = importlib.resources.files("carnival.dashboard") / "static"
ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css", "favicon.svg": "image/svg+xml"}
PLOTLY = "plotly.min.js"


def plotly_js() -> bytes:
    """plotly.js as the PyPI ``plotly`` package ships it (package data, no network)."""
    return (importlib.resources.files("plotly") / "package_data" / PLOTLY).read_bytes()


def layout(refresh_s: float) -> dict[str, Any]:
    """The page's charts in order: title and description of the first panel, every panel's chart spec."""
    charts = []
    for names in LAYOUT:
        first = PANELS.get(names[0])
        charts.append(
            {
                "id": "-".join(names),
                "panels": list(names),
                "wide": names[0] in WIDE,
                "title": first.title if first else LAG_TITLE,
                "description": first.description if first else LAG_DESCRIPTION,
                "charts": [dataclasses.asdict(PANELS[n].chart if n in PANELS else LAG_CHART) for n in names],
            }
        )
    return {"refresh_s": refresh_s, "thresholds_ms": THRESHOLDS_MS, "charts": charts}


class DashboardServer(ThreadingHTTPServer):
    """``DashboardServer(settings, host, port).serve_forever()``; port 0 picks a free one (see ``url``)."""

    daemon_threads = True

    def __init__(
        self,
        settings: Settings,
        host: str = "127.0.0.1",
        port: int = 8050,
        refresh_s: float = 5.0,
        window: timedelta = timedelta(hours=12),
        sample_lag: bool = True,
    ) -> None:
        # Several panels are fetched at once: a client without a session may run queries side by side.
        client = get_client(settings, autogenerate_session_id=False)
        self.lag = LagSampler(settings, client, interval_s=refresh_s) if sample_lag else None
        self.source = PanelSource(client, self.lag, window=window)
        self.layout = orjson.dumps(layout(refresh_s))
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        assert isinstance(host, str)  # an AF_INET server's address
        return f"http://{host}:{port}/"

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        if self.lag is not None:
            self.lag.start()
        try:
            super().serve_forever(poll_interval)
        finally:
            if self.lag is not None:
                self.lag.stop()


class _Handler(BaseHTTPRequestHandler):
    server: DashboardServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send((STATIC / "index.html").read_bytes(), "text/html; charset=utf-8")
        elif path == f"/static/{PLOTLY}":
            self._send(plotly_js(), "text/javascript", cache=True)
        elif path.startswith("/static/") and path[8:] in ASSETS:
            self._send((STATIC / path[8:]).read_bytes(), ASSETS[path[8:]])
        elif path == "/api/layout":
            self._send(self.server.layout, "application/json")
        elif path.startswith("/api/panel/") and (path[11:] in PANELS or path[11:] == LAG_PANEL):
            body = orjson.dumps(self.server.source.panel(path[11:]), option=orjson.OPT_NON_STR_KEYS)
            self._send(body, "application/json")
        elif path == "/healthz":
            self._send(b"ok\n", "text/plain")
        else:
            self._send(b"not found\n", "text/plain", status=HTTPStatus.NOT_FOUND)

    def _send(self, body: bytes, content_type: str, status: int = HTTPStatus.OK, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=86400" if cache else "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        """No access log: the page polls every panel every few seconds."""
