"""The embedded ClickHouse server end to end: start/stop, migrations, dedup, concurrent use, restarts."""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from clickhouse_connect.driver.client import Client

from carnival.stack.clickhouse_server import clickhouse_status, paths, start_clickhouse, stop_clickhouse
from carnival.stack.errors import StackError
from core.settings import Settings
from sinks.clickhouse import DatabaseMissing, get_client, is_reachable
from sinks.migrate import MIGRATIONS_DIR, MigrationError, apply_migrations, load_migrations, migrate
from sinks.query import QueryError, run_query

pytestmark = pytest.mark.integration

HTTP_PORT, NATIVE_PORT = 18223, 19200
CONTRACT_TABLES = {
    "telemetry",
    "nodes",
    "task_events",
    "assignments",
    "actions",
    "power_events",
    "incidents",
    "alerts",
    "owner_ledger",
    "deadletter",
    "site_capacity",
    "site_power_states",
    "spillover_episodes",
    "schema_migrations",
}
TELEMETRY_COLS = [
    "vin",
    "ts",
    "hw",
    "region",
    "charge_state",
    "gear",
    "opted_in",
    "_topic",
    "_partition",
    "_offset",
]
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _settings(data_dir: Path, http_port: int = HTTP_PORT, native_port: int = NATIVE_PORT) -> Settings:
    return Settings(
        clickhouse_url=f"http://127.0.0.1:{http_port}", clickhouse_native_port=native_port, data_dir=data_dir
    )


@pytest.fixture(scope="module")
def ch_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    settings = _settings(tmp_path_factory.mktemp("carnival"))
    start_clickhouse(settings)
    try:
        yield settings
    finally:
        stop_clickhouse(settings)


@pytest.fixture(scope="module")
def client(ch_settings: Settings) -> Iterator[Client]:
    migrate(ch_settings)
    c = get_client(ch_settings)
    yield c
    c.close()


def _telemetry_rows(n: int, offset0: int = 0, vin_prefix: str = "VIN") -> list[list[object]]:
    return [
        [
            f"{vin_prefix}{i % 50:04d}",
            T0 + timedelta(seconds=i),
            "HW4",
            "us-west",
            "CHARGING",
            "P",
            True,
            "fleet.telemetry.v1",
            0,
            offset0 + i,
        ]
        for i in range(n)
    ]


def _count(client: Client, where: str = "1") -> int:
    return int(client.command(f"SELECT count() FROM carnival.telemetry WHERE {where}"))


def test_server_answers_and_reports_status(ch_settings: Settings) -> None:
    assert is_reachable(ch_settings)
    status = clickhouse_status(ch_settings)
    assert status["running"] and status["answering"] and str(status["version"]).startswith("26.")
    server_path = get_client(ch_settings, use_database=False).command(
        "SELECT value FROM system.server_settings WHERE name = 'tmp_path'"
    )
    assert str(server_path).startswith(str(paths(ch_settings.data_dir).root))


def test_migrations_are_idempotent(ch_settings: Settings, client: Client, tmp_path: Path) -> None:
    admin = get_client(ch_settings, use_database=False)
    assert apply_migrations(admin, ch_settings) == []  # the fixture applied them already
    assert apply_migrations(admin, ch_settings) == []
    tables = {
        r[0] for r in client.query("SELECT name FROM system.tables WHERE database = 'carnival'").result_rows
    }
    assert tables >= CONTRACT_TABLES
    versions = client.query("SELECT version, checksum FROM carnival.schema_migrations FINAL").result_rows
    assert sorted(v for v, _ in versions) == [m.version for m in load_migrations()]

    changed = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, changed)
    core = changed / "0001_core_tables.sql"
    core.write_text(core.read_text() + "\n-- edited after it was applied\n")
    with pytest.raises(MigrationError, match="0001_core_tables.sql was changed after it was applied"):
        apply_migrations(admin, ch_settings, changed)


def test_new_migration_is_applied_once(ch_settings: Settings, tmp_path: Path) -> None:
    migs = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, migs)
    (migs / "9999_probe.sql").write_text(
        "CREATE TABLE IF NOT EXISTS {table:probe} {on_cluster} (a UInt8)\n"
        "ENGINE = {engine:MergeTree} ORDER BY a;\n{distributed:probe:rand()};\n"
    )
    admin = get_client(ch_settings, use_database=False)
    try:
        assert apply_migrations(admin, ch_settings, migs) == ["9999_probe.sql"]
        assert apply_migrations(admin, ch_settings, migs) == []
    finally:
        admin.command("DROP TABLE IF EXISTS carnival.probe")
        admin.command(
            "ALTER TABLE carnival.schema_migrations DELETE WHERE version = '9999' SETTINGS mutations_sync = 1"
        )


def test_insert_deduplication_token_keeps_one_copy(client: Client) -> None:
    rows = _telemetry_rows(100, vin_prefix="DEDUP")
    for _ in range(2):  # a retried batch: same token, same rows
        client.insert(
            "carnival.telemetry",
            rows,
            column_names=TELEMETRY_COLS,
            settings={"insert_deduplication_token": "fleet.telemetry.v1:0:0-99"},
        )
    assert _count(client, "vin LIKE 'DEDUP%'") == 100


def test_queries_work_during_a_concurrent_insert(ch_settings: Settings, client: Client) -> None:
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            c = get_client(ch_settings)
            for batch in range(20):
                c.insert(
                    "carnival.telemetry",
                    _telemetry_rows(5000, batch * 5000, "CONC"),
                    column_names=TELEMETRY_COLS,
                    settings={"insert_deduplication_token": f"conc-{batch}"},
                )
            c.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    seen = []
    reader = get_client(ch_settings)
    while thread.is_alive():
        out = io.StringIO()
        run_query(reader, "SELECT count() AS n FROM carnival.telemetry WHERE vin LIKE 'CONC%'", "jsonl", out)
        seen.append(orjson.loads(out.getvalue())["n"])
    thread.join()
    assert not errors
    assert seen and seen == sorted(seen)
    assert _count(client, "vin LIKE 'CONC%'") == 100_000


def test_run_query_formats(client: Client) -> None:
    sql = (
        "SELECT toDateTime64('2025-01-02 03:04:05.678', 3, 'UTC') AS ts, 'a,b' AS s, "
        "CAST(NULL AS Nullable(Float64)) AS x, 42 AS n ORDER BY n"
    )
    out = io.StringIO()
    assert run_query(client, sql, "jsonl", out) == 1
    expected = {"ts": "2025-01-02T03:04:05.678000Z", "s": "a,b", "x": None, "n": 42}
    assert orjson.loads(out.getvalue()) == expected

    out = io.StringIO()
    run_query(client, sql, "csv", out)
    assert out.getvalue() == 'ts,s,x,n\n2025-01-02T03:04:05.678000Z,"a,b",,42\n'

    out = io.StringIO()
    run_query(client, "SELECT number AS n, toString(number * 1000) AS label FROM numbers(3)", "table", out)
    assert out.getvalue().splitlines() == [
        "n  label",
        "-  -----",
        "0  0",
        "1  1000",
        "2  2000",
        "(3 rows)",
    ]


def test_run_query_empty_results_and_statements(client: Client) -> None:
    out = io.StringIO()
    assert run_query(client, "SELECT vin, ts FROM carnival.nodes WHERE vin = 'none'", "csv", out) == 0
    assert out.getvalue() == "vin,ts\n"  # the header even without rows
    out = io.StringIO()
    run_query(client, "SELECT vin FROM carnival.nodes WHERE vin = 'none'", "table", out)
    assert out.getvalue() == "vin\n---\n(0 rows)\n"
    out = io.StringIO()
    run_query(client, "CREATE TABLE IF NOT EXISTS carnival.scratch (a UInt8) ENGINE = Memory", "table", out)
    run_query(client, "INSERT INTO carnival.scratch SELECT number FROM numbers(5)", "table", out)
    run_query(client, "DROP TABLE carnival.scratch", "table", out)
    assert out.getvalue() == "Ok.\nOk. (5 rows written)\nOk.\n"


def test_run_query_errors_are_one_line(client: Client) -> None:
    for sql in ("SELEC 1", "SELECT * FROM carnival.no_such_table"):
        with pytest.raises(QueryError) as info:
            run_query(client, sql, "table", io.StringIO())
        msg = str(info.value)
        assert "\n" not in msg and msg.startswith("Code: ") and "for url" not in msg


def test_idle_client_survives_the_short_keep_alive(client: Client) -> None:
    # The server closes idle connections after 2 s (so that it stops fast); clients must reconnect.
    assert client.command("SELECT 1") == 1
    time.sleep(2.5)
    assert client.command("SELECT 2") == 2
    client.insert("carnival.telemetry", _telemetry_rows(10, vin_prefix="IDLE"), column_names=TELEMETRY_COLS)
    time.sleep(2.5)
    client.insert(
        "carnival.telemetry", _telemetry_rows(10, 10, vin_prefix="IDLE"), column_names=TELEMETRY_COLS
    )
    assert _count(client, "vin LIKE 'IDLE%'") == 20


def test_data_survives_a_restart(ch_settings: Settings, client: Client) -> None:
    client.insert("carnival.telemetry", _telemetry_rows(10, vin_prefix="KEEP"), column_names=TELEMETRY_COLS)
    before = _count(client)
    assert stop_clickhouse(ch_settings)
    assert not is_reachable(ch_settings)
    assert not clickhouse_status(ch_settings)["running"]
    assert stop_clickhouse(ch_settings) is False  # nothing left to stop
    result = start_clickhouse(ch_settings)
    assert result.seconds < 10
    assert _count(get_client(ch_settings)) == before


def test_second_start_says_already_running(ch_settings: Settings) -> None:
    pid = clickhouse_status(ch_settings)["pid"]
    with pytest.raises(StackError, match=f"already running \\(pid {pid}"):
        start_clickhouse(ch_settings)


def test_stale_pid_file_is_replaced(ch_settings: Settings) -> None:
    assert stop_clickhouse(ch_settings)
    dead = subprocess.Popen(["true"])
    dead.wait()
    pid_file = paths(ch_settings.data_dir).pid_file
    pid_file.write_text(str(dead.pid))
    result = start_clickhouse(ch_settings)
    assert result.stale_pid_removed
    assert pid_file.read_text().strip() == str(result.pid)


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        settings = _settings(tmp_path / f"other-{uuid.uuid4().hex[:6]}", http_port=busy, native_port=19201)
        with pytest.raises(StackError, match=f"Port {busy} .* already in use"):
            start_clickhouse(settings)
    assert not paths(settings.data_dir).pid_file.exists()


def test_host_dying_during_start_shows_its_log(ch_settings: Settings) -> None:
    # A second host on the same data dir (pid file hidden, other ports) cannot lock it and exits.
    pid_file = paths(ch_settings.data_dir).pid_file
    saved = pid_file.read_text()
    pid_file.unlink()
    try:
        twin = _settings(ch_settings.data_dir, http_port=18224, native_port=19202)
        with pytest.raises(StackError, match="exited during start") as info:
            start_clickhouse(twin)
        assert "Last lines of" in str(info.value)
    finally:
        pid_file.write_text(saved)
    assert is_reachable(ch_settings)


def test_client_for_a_missing_database_says_so(ch_settings: Settings) -> None:
    missing = ch_settings.model_copy(update={"clickhouse_database": "not_migrated"})
    with pytest.raises(DatabaseMissing, match="'not_migrated' does not exist"):
        get_client(missing)
