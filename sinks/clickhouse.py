"""ClickHouse clients over HTTP: the same code path for the embedded server and a real cluster."""

from __future__ import annotations

import ssl
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from core.settings import Settings

CONNECT_TIMEOUT_S = 5
SEND_RECEIVE_TIMEOUT_S = 300
QUERY_RETRIES = 2  # read-only queries only; inserts are retried by sinks with a dedup token
# Synchronous inserts: a returned insert is durable, and insert_deduplication_token keeps its plain
# meaning (the embedded server has async_insert on by default).
DEFAULT_SETTINGS: dict[str, Any] = {"async_insert": 0}


class ClickHouseUnavailable(Exception):
    """ClickHouse did not answer at the configured URL."""


class DatabaseMissing(Exception):
    """The configured database does not exist yet (migrations were not applied)."""


def get_client(settings: Settings, *, use_database: bool = True, **overrides: Any) -> Client:
    """An HTTP client for ``settings.clickhouse_url``.

    ``use_database=False`` gives a client bound to no database, needed before the migrations have
    created it (a client bound to a missing database fails on its handshake). User, password and TLS
    files come from ``settings.clickhouse`` (``CARNIVAL_CLICKHOUSE_USER`` / ``_PASSWORD`` / ``_CA_CERT``
    ...; credentials written in the URL, ``http://user:pass@host:8123``, still work).
    """
    ch = settings.clickhouse
    kwargs: dict[str, Any] = {
        **ch.client_kwargs(),
        "database": ch.database if use_database else None,
        "connect_timeout": CONNECT_TIMEOUT_S,
        "send_receive_timeout": SEND_RECEIVE_TIMEOUT_S,
        "query_retries": QUERY_RETRIES,
        "client_name": "carnival",
        "settings": dict(DEFAULT_SETTINGS),
    }
    kwargs.update(overrides)
    try:
        return clickhouse_connect.get_client(**kwargs)
    except DatabaseError as exc:
        if "UNKNOWN_DATABASE" not in str(exc):
            raise
        raise DatabaseMissing(
            f"database {kwargs['database']!r} does not exist at {ch.display_url}; "
            "`carnival stack up` applies the schema (or use sinks.migrate.migrate)"
        ) from exc


def ping_url(settings: Settings) -> str:
    url = urlparse(settings.clickhouse_url)
    host, port = settings.clickhouse_host_port
    return f"{url.scheme or 'http'}://{host}:{port}/ping"


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """For https: the same certificate checks as the clients (a private CA must not look like "down")."""
    ch = settings.clickhouse
    if not ch.url.startswith("https"):
        return None
    context = ssl.create_default_context(cafile=ch.ca_cert or None)
    if not ch.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if ch.client_cert:
        context.load_cert_chain(ch.client_cert, ch.client_key or None)
    return context


def _ping(settings: Settings, timeout: float) -> str | None:
    """None when ClickHouse answers ``/ping`` (no credentials needed, no handshake), else why not."""
    try:
        context = _ssl_context(settings)
        with urllib.request.urlopen(ping_url(settings), timeout=timeout, context=context) as resp:
            return None if resp.status == 200 else f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except urllib.error.URLError as exc:
        return str(exc.reason)
    except OSError as exc:
        return str(exc) or type(exc).__name__


def is_reachable(settings: Settings, timeout: float = 2.0) -> bool:
    return _ping(settings, timeout) is None


def wait_until_reachable(settings: Settings, timeout: float = 30.0) -> None:
    """Poll ``/ping`` until it answers; raise ClickHouseUnavailable after ``timeout`` seconds, saying what
    was tried, for how long, the last error and which setting to check."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        why = _ping(settings, timeout=max(0.1, min(1.0, deadline - time.monotonic())))
        if why is None:
            return
        if time.monotonic() >= deadline:
            raise ClickHouseUnavailable(
                f"ClickHouse at {settings.clickhouse.display_url} did not answer "
                f"(GET {ping_url(settings)} for {time.monotonic() - started:.0f}s: {why}); "
                "check CARNIVAL_CLICKHOUSE_URL and that the server is up (`carnival stack up` starts "
                "the embedded one); CARNIVAL_CLICKHOUSE_CONNECT_TIMEOUT_S sets how long to wait"
            )
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


def require_reachable(settings: Settings) -> None:
    """``wait_until_reachable`` for ``settings.clickhouse_connect_timeout_s``: what a command or a
    starting worker calls before its first query."""
    wait_until_reachable(settings, timeout=settings.clickhouse_connect_timeout_s)
