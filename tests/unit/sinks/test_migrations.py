"""Migration files: naming, ordering, splitting and rendering for one server and for a cluster."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sinks.migrate import (
    Migration,
    MigrationError,
    Target,
    bootstrap_statements,
    load_migrations,
    render,
    render_migration,
    split_statements,
)
from sinks.tables import TABLE_FOR_TOPIC

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
}
SINGLE = Target("carnival")
CLUSTER = Target("carnival", cluster="prod")


def _core() -> Migration:
    return load_migrations()[0]


def _created_tables(statements: list[str]) -> dict[str, str]:
    out = {}
    for s in statements:
        m = re.match(r"CREATE TABLE IF NOT EXISTS carnival\.(\w+)", s)
        if m:
            out[m.group(1)] = s
    return out


def test_migrations_are_versioned_and_ordered() -> None:
    migs = load_migrations()
    assert migs[0].version == "0001" and migs[0].name == "core_tables"
    versions = [m.version for m in migs]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert all(len(m.checksum) == 64 for m in migs)


def test_load_orders_by_version_and_rejects_bad_names(tmp_path: Path) -> None:
    (tmp_path / "0002_b.sql").write_text("SELECT 2;")
    (tmp_path / "0010_c.sql").write_text("SELECT 10;")
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    assert [m.version for m in load_migrations(tmp_path)] == ["0001", "0002", "0010"]
    (tmp_path / "0002_dup.sql").write_text("SELECT 2;")
    with pytest.raises(MigrationError, match="two migrations have version 0002"):
        load_migrations(tmp_path)
    (tmp_path / "0002_dup.sql").unlink()
    (tmp_path / "extra.sql").write_text("SELECT 3;")
    with pytest.raises(MigrationError, match="NNNN_name.sql"):
        load_migrations(tmp_path)


def test_split_respects_quotes_and_comments() -> None:
    sql = """
    -- a comment; with a semicolon
    CREATE TABLE t (a String DEFAULT 'x;y', b String DEFAULT 'it''s; ok') ENGINE = Memory;
    /* block; comment */ SELECT "we;ird", `col;name` FROM t;
    SELECT 'back\\'slash;';
    ;;
    """
    assert split_statements(sql) == [
        "CREATE TABLE t (a String DEFAULT 'x;y', b String DEFAULT 'it''s; ok') ENGINE = Memory",
        'SELECT "we;ird", `col;name` FROM t',
        "SELECT 'back\\'slash;'",
    ]
    assert split_statements("SELECT 1") == ["SELECT 1"]
    with pytest.raises(MigrationError, match="unterminated"):
        split_statements("SELECT 'oops")


def test_single_server_rendering_creates_every_contract_table() -> None:
    stmts = render_migration(_core(), SINGLE)
    assert stmts[0] == "CREATE DATABASE IF NOT EXISTS carnival"
    tables = _created_tables(stmts)
    assert set(tables) == CONTRACT_TABLES
    for name, ddl in tables.items():
        assert "{" not in ddl and "ON CLUSTER" not in ddl and "Replicated" not in ddl, name
        assert "_topic              LowCardinality(String)" in ddl
        assert "_partition          UInt32" in ddl and "_offset             UInt64" in ddl
        assert "non_replicated_deduplication_window = 1000" in ddl
    assert "ENGINE = MergeTree\n" in tables["telemetry"]
    assert "ORDER BY (vin, ts)" in tables["telemetry"]
    assert "ENGINE = ReplacingMergeTree(ts)" in tables["nodes"] and "ORDER BY vin" in tables["nodes"]
    for col in ("soc_pct", "charge_state", "gear", "reliability", "pool", "eligible", "reason"):
        assert f"\n    {col} " in tables["nodes"], col
    assert "ts                  DateTime64(6, 'UTC')" in tables["power_events"]
    assert "ts                  DateTime64(3, 'UTC')" in tables["telemetry"]
    assert not any("Distributed" in s for s in stmts)


def test_cluster_rendering_uses_replicated_local_tables_and_distributed() -> None:
    stmts = render_migration(_core(), CLUSTER)
    assert stmts[0] == "CREATE DATABASE IF NOT EXISTS carnival ON CLUSTER prod"
    tables = _created_tables(stmts)
    assert set(tables) == CONTRACT_TABLES | {f"{t}_local" for t in CONTRACT_TABLES}
    assert all("ON CLUSTER prod" in s for s in stmts)
    local = tables["telemetry_local"]
    zk_path = "'/clickhouse/tables/{shard}/{database}/{table}', '{replica}'"
    assert f"ENGINE = ReplicatedMergeTree({zk_path})" in local
    assert (
        "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', "
        "'{replica}', ts)"
    ) in tables["nodes_local"]
    assert tables["telemetry"] == (
        "CREATE TABLE IF NOT EXISTS carnival.telemetry ON CLUSTER prod AS carnival.telemetry_local "
        "ENGINE = Distributed(prod, carnival, telemetry_local, cityHash64(vin))"
    )
    # Distributed tables come after their local table.
    assert stmts.index(tables["telemetry"]) == stmts.index(local) + 1


def test_render_quotes_odd_names_and_rejects_unknown_placeholders() -> None:
    odd = Target("my-db", cluster="c 1")
    assert render("CREATE DATABASE IF NOT EXISTS {database} {on_cluster}", odd) == (
        "CREATE DATABASE IF NOT EXISTS `my-db` ON CLUSTER `c 1`"
    )
    with pytest.raises(MigrationError, match="unknown placeholder"):
        render("SELECT {nope}", SINGLE)
    with pytest.raises(MigrationError, match="MergeTree-family"):
        render("ENGINE = {engine:Memory}", CLUSTER)
    with pytest.raises(MigrationError, match="SHARDING_KEY"):
        render("{distributed:t}", CLUSTER)


def test_bootstrap_statements() -> None:
    single = bootstrap_statements(SINGLE)
    assert single[0] == "CREATE DATABASE IF NOT EXISTS carnival"
    assert "ENGINE = ReplacingMergeTree(applied_at) ORDER BY version" in single[1]
    cluster = bootstrap_statements(CLUSTER)
    assert all("ON CLUSTER prod" in s for s in cluster)
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/all/{database}/schema_migrations'" in cluster[1]


def _columns(ddl: str) -> set[str]:
    return set(re.findall(r"^    (\w+)\s", ddl, re.M))


@pytest.mark.parametrize("topic", sorted(TABLE_FOR_TOPIC))
def test_every_avro_field_has_a_column(topic: str) -> None:
    # A schema that gains a field needs a migration adding the column (the sink inserts by name).
    schema = json.loads((Path(__file__).resolve().parents[3] / "schemas" / f"{topic}.avsc").read_text())
    table = TABLE_FOR_TOPIC[topic]
    statements = [s for m in load_migrations() for s in render_migration(m, SINGLE)]
    create = next(s for s in statements if s.startswith(f"CREATE TABLE IF NOT EXISTS carnival.{table}\n"))
    columns = _columns(create)
    for stmt in statements:
        if stmt.startswith(f"ALTER TABLE carnival.{table}\n"):
            columns |= set(re.findall(r"ADD COLUMN IF NOT EXISTS (\w+)", stmt))
    fields = {f["name"] for f in schema["fields"]}
    assert fields - columns == set()
    assert {"_topic", "_partition", "_offset"} <= columns


SITE_TABLES = {"site_capacity", "site_power_states", "spillover_episodes"}
SITE_VIEWS = {"site_capacity_latest", "site_power_latest", "spillover_episodes_latest"}


def _site_migration() -> Migration:
    return next(m for m in load_migrations() if m.name == "site_tables")


def test_site_tables_are_append_only_sink_tables_with_latest_views() -> None:
    stmts = render_migration(_site_migration(), SINGLE)
    tables = _created_tables(stmts)
    assert set(tables) == SITE_TABLES
    for name, ddl in tables.items():
        # Append-only: merges never drop a row, so the sink's max(_offset) resume position holds.
        assert "ENGINE = MergeTree\n" in ddl, name
        assert "_topic              LowCardinality(String)" in ddl
        assert "_partition          UInt32" in ddl and "_offset             UInt64" in ddl
        assert "non_replicated_deduplication_window = 1000" in ddl
        projection = f"ALTER TABLE carnival.{name}\n    ADD PROJECTION IF NOT EXISTS sink_positions"
        assert any(s.startswith(projection) for s in stmts), name
    # All records of an episode share a partition: a piece of a batch never splits one episode's rows.
    assert "PARTITION BY toYYYYMM(started_at)" in tables["spillover_episodes"]
    views = {m.group(1): s for s in stmts if (m := re.match(r"CREATE VIEW IF NOT EXISTS carnival\.(\w+)", s))}
    assert set(views) == SITE_VIEWS
    assert "LIMIT 1 BY episode_id" in views["spillover_episodes_latest"]
    assert "tasks_spilled + sessions_shed AS tasks_moved" in views["spillover_episodes_latest"]


def test_site_tables_on_a_cluster_are_replicated_local_tables_behind_distributed_ones() -> None:
    stmts = render_migration(_site_migration(), CLUSTER)
    tables = _created_tables(stmts)
    assert set(tables) == SITE_TABLES | {f"{t}_local" for t in SITE_TABLES}
    for name in SITE_TABLES:
        assert "ENGINE = ReplicatedMergeTree(" in tables[f"{name}_local"]
        assert stmts.index(tables[name]) == stmts.index(tables[f"{name}_local"]) + 1
        assert f"Distributed(prod, carnival, {name}_local, cityHash64(site_id))" in tables[name]
        assert any(
            s.startswith(f"ALTER TABLE carnival.{name}_local ON CLUSTER prod\n    ADD PROJECTION")
            for s in stmts
        )
    views = [s for s in stmts if s.startswith("CREATE VIEW")]
    assert len(views) == len(SITE_VIEWS) and all("ON CLUSTER prod" in v for v in views)
    assert not any("_local" in v for v in views)  # views read the contract-name (Distributed) tables


_AVRO_TIME = {"timestamp-millis": "DateTime64(3, 'UTC')", "timestamp-micros": "DateTime64(6, 'UTC')"}


@pytest.mark.parametrize("topic", sorted(TABLE_FOR_TOPIC))
def test_every_avro_timestamp_is_a_utc_datetime64_of_its_precision(topic: str) -> None:
    schema = json.loads((Path(__file__).resolve().parents[3] / "schemas" / f"{topic}.avsc").read_text())
    statements = [s for m in load_migrations() for s in render_migration(m, SINGLE)]
    table = TABLE_FOR_TOPIC[topic]
    ddl = next(s for s in statements if s.startswith(f"CREATE TABLE IF NOT EXISTS carnival.{table}\n"))
    ddl += "\n".join(s for s in statements if s.startswith(f"ALTER TABLE carnival.{table}\n"))
    for field in schema["fields"]:
        types = field["type"] if isinstance(field["type"], list) else [field["type"]]
        logical = next((t.get("logicalType") for t in types if isinstance(t, dict)), None)
        if logical in _AVRO_TIME:
            column = _AVRO_TIME[logical] if "null" not in types else f"Nullable({_AVRO_TIME[logical]})"
            assert re.search(rf"\b{field['name']}\s+{re.escape(column)}", ddl), (table, field["name"])
