"""The sink's ClickHouse side: insert a batch atomically, and read back where each partition stands.

The data in ClickHouse is the sink's state. Every row carries ``_topic, _partition, _offset``; each
insert is one part (the sink cuts batches at the table's partition key), so after any crash
``max(_offset)`` per partition is exactly what landed.
Every insert carries a query id naming its topic and partitions, so a new owner of a partition can kill
an insert a previous owner (a zombie) still has in flight before it reads the positions.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError, OperationalError

from core.settings import Settings
from sinks import metrics
from sinks.avro_container import SINK_FIELDS
from sinks.batches import TopicBatch
from sinks.clickhouse import get_client
from sinks.config import SinkConfig
from sinks.errors import Verdict, classify, error_code

log = structlog.get_logger(__name__)

QUERY_ID_PREFIX = "carnival-sink"
_F = TypeVar("_F", bound=Callable[..., Any])


def _one_at_a_time(method: _F) -> _F:
    """One client, one query at a time (its HTTP session refuses concurrent queries): the pipelined insert
    thread and the sink's loop (positions, fencing, partition keys) take turns."""

    @functools.wraps(method)
    def serialized(self: ClickHouseWriter, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return serialized  # type: ignore[return-value]


class InsertFailed(Exception):
    """ClickHouse did not take the insert; ``reason`` is a metric label; ``verdict`` what it means for the
    rows (``sinks/errors.py``)."""

    def __init__(self, reason: str, message: str, verdict: Verdict = Verdict.TRANSIENT) -> None:
        super().__init__(message)
        self.reason = reason
        self.verdict = verdict


def quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class ClickHouseWriter:
    """One HTTP client, rebuilt after connection failures; all calls are blocking."""

    def __init__(self, settings: Settings, config: SinkConfig) -> None:
        self.settings = settings
        self.config = config
        self._client: Client | None = None
        self._columns: dict[str, set[str]] = {}
        self._partition_keys: dict[str, str] = {}
        self._instance = uuid.uuid4().hex[:8]
        self._lock = threading.RLock()

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = get_client(
                self.settings,
                send_receive_timeout=self.config.insert_timeout_s,
                query_retries=0,
            )
        return self._client

    @_one_at_a_time
    def reset(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):  # closing a broken client
                self._client.close()
        self._client = None

    def close(self) -> None:
        self.reset()

    # ------------------------------------------------------------------------------- inserting
    @_one_at_a_time
    def table_columns(self, table: str) -> set[str]:
        cols = self._columns.get(table)
        if cols is None:
            rows = self.client.query(
                "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = {t:String}",
                parameters={"t": table},
            ).result_rows
            cols = {str(r[0]) for r in rows}
            if not cols:
                raise InsertFailed("missing_table", f"table {table} does not exist (migrations not applied?)")
            self._columns[table] = cols
        return cols

    @_one_at_a_time
    def partition_key(self, table: str) -> str:
        """The table's PARTITION BY expression ('' for none); on a cluster, that of its local table."""
        key = self._partition_keys.get(table)
        if key is None:
            try:
                rows = self.client.query(
                    "SELECT name, engine, partition_key FROM system.tables "
                    "WHERE database = currentDatabase() AND name IN ({t:String}, {l:String})",
                    parameters={"t": table, "l": f"{table}_local"},
                ).result_rows
            except (ClickHouseError, OSError) as exc:
                self.reset()
                raise InsertFailed("unavailable", str(exc)) from exc
            found = {str(name): (str(engine), str(expr)) for name, engine, expr in rows}
            if table not in found:
                raise InsertFailed("missing_table", f"table {table} does not exist (migrations not applied?)")
            engine, key = found[table]
            if engine == "Distributed" and f"{table}_local" in found:
                key = found[f"{table}_local"][1]
            self._partition_keys[table] = key
        return key

    @_one_at_a_time
    def insert(self, batch: TopicBatch) -> int:
        """Insert the batch as one Avro container; return rows inserted. Raises InsertFailed."""
        assert batch.schema is not None
        started = time.monotonic()
        try:
            table_cols = self.table_columns(batch.table)
            names = [n for n in (*SINK_FIELDS, *batch.schema.fields) if n in table_cols]
            missing = [n for n in batch.schema.fields if n not in table_cols]
            if missing:
                log.warning("sink_fields_without_column", table=batch.table, fields=missing)
            parts = ",".join(str(p) for p in batch.partitions_with_rows())
            query_id = f"{QUERY_ID_PREFIX}|{batch.topic}|{parts}|{self._instance}-{uuid.uuid4().hex[:8]}"
            self.client.raw_insert(
                batch.table,
                names,
                batch.container(),
                fmt="Avro",
                settings={
                    "insert_deduplication_token": batch.token(),
                    "insert_deduplicate": 1,
                    "query_id": query_id,
                },
            )
        except InsertFailed:
            raise
        except OperationalError as exc:  # connection refused/reset, timeout
            self.reset()
            raise InsertFailed("unavailable", str(exc)) from exc
        except DatabaseError as exc:
            code = error_code(str(exc))
            raise InsertFailed(f"code_{code}", str(exc), classify(code, str(exc))) from exc
        except (ClickHouseError, OSError) as exc:
            self.reset()
            raise InsertFailed("unavailable", str(exc)) from exc
        seconds = time.monotonic() - started
        metrics.INSERT_SECONDS.labels(table=batch.table).observe(seconds)
        metrics.INSERTS.labels(table=batch.table).inc()
        metrics.ROWS_INSERTED.labels(table=batch.table).inc(batch.rows)
        return batch.rows

    # ------------------------------------------------------------------------------- positions
    @_one_at_a_time
    def fence(self, topic: str, partitions: list[int]) -> int:
        """Kill in-flight inserts into ``partitions`` of ``topic`` (a previous owner's); return the count."""
        rows = self.client.query(
            "SELECT query_id FROM system.processes WHERE startsWith(query_id, {p:String})",
            parameters={"p": f"{QUERY_ID_PREFIX}|{topic}|"},
        ).result_rows
        mine = set(partitions)
        killed = 0
        for (query_id,) in rows:
            parts = str(query_id).split("|")
            if len(parts) < 4 or not mine.intersection(int(p) for p in parts[2].split(",") if p):
                continue
            self.client.command(f"KILL QUERY WHERE query_id = {quote(str(query_id))} SYNC")
            killed += 1
        if killed:
            metrics.FENCED.labels(topic=topic).inc(killed)
            log.warning("sink_fenced_inflight_inserts", topic=topic, killed=killed)
        return killed

    @_one_at_a_time
    def max_offsets(self, topic: str, table: str, partitions: list[int]) -> dict[int, int]:
        """partition -> highest offset of ``topic`` stored in ``table`` (absent: none stored)."""
        if not partitions:
            return {}
        result = self.client.query(
            f"SELECT _partition, max(_offset) FROM {table} "
            "WHERE _topic = {t:String} AND _partition IN {ps:Array(UInt32)} GROUP BY _partition",
            parameters={"t": topic, "ps": sorted(partitions)},
        )
        return {int(p): int(o) for p, o in result.result_rows}
