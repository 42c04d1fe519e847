"""ClickHouse clients over HTTP: the same code path for the embedded server and a real cluster."""

from __future__ import annotations

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


def is_reachable(settings: Settings, timeout: float = 2.0) -> bool:
    """True when ClickHouse answers ``/ping`` (no credentials needed, no handshake)."""
    try:
        with urllib.request.urlopen(ping_url(settings), timeout=timeout) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


def wait_until_reachable(settings: Settings, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not is_reachable(settings, timeout=1.0):
        if time.monotonic() >= deadline:
            raise ClickHouseUnavailable(
                f"ClickHouse at {settings.clickhouse.display_url} did not answer within {timeout:.0f}s"
            )
        time.sleep(0.2)
