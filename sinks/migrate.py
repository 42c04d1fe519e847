"""Versioned ClickHouse DDL: ``sinks/migrations/NNNN_name.sql``, applied once each, in order.

A migration is a template (placeholders are documented in ``0001_core_tables.sql``) rendered either for
one server (plain MergeTree engines) or, with ``settings.clickhouse_cluster``, for a cluster
(``ON CLUSTER``, ReplicatedMergeTree local tables and Distributed tables with the contract names).
Applied versions and the checksum of their source are kept in ``<database>.schema_migrations``; an
applied migration whose file changed is an error (add a new migration instead). Statements use
IF NOT EXISTS, so a migration interrupted half-way is simply applied again.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import structlog
from clickhouse_connect.driver.client import Client

from core.settings import Settings

log = structlog.get_logger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
FILE_RE = re.compile(r"^(\d{4})_(\w+)\.sql$")
PLACEHOLDER_RE = re.compile(r"\{(\w+)(?::([^{}]*))?\}")
REPLICATED_PATH = "'/clickhouse/tables/{shard}/{database}/{table}', '{replica}'"
# The bookkeeping table must be readable from every node, so it is replicated to all of them
# (no {shard} in its path) instead of sharded.
MIGRATIONS_TABLE_PATH = "'/clickhouse/tables/all/{database}/schema_migrations', '{shard}-{replica}'"


class MigrationError(Exception):
    """The DDL cannot be applied as it is; the message says why and what to do."""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    path: Path
    source: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()


@dataclass(frozen=True)
class Target:
    """Where DDL goes: one server (cluster None) or every node of a cluster."""

    database: str
    cluster: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Target:
        return cls(settings.clickhouse_database, settings.clickhouse_cluster or None)


# ------------------------------------------------------------------------------------ loading
def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every ``NNNN_name.sql`` in version order; duplicate versions or stray .sql files are errors."""
    found: dict[str, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        m = FILE_RE.match(path.name)
        if not m:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        version, name = m.groups()
        if version in found:
            raise MigrationError(
                f"two migrations have version {version}: {found[version].path.name}, {path.name}"
            )
        found[version] = Migration(version, name, path, path.read_text())
    return [found[v] for v in sorted(found)]


# ---------------------------------------------------------------------------------- splitting
def split_statements(sql: str) -> list[str]:
    """Split on ``;`` outside quotes and comments; comments are dropped, empty statements skipped."""
    statements: list[str] = []
    buf: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"`":
            end = _end_of_quoted(sql, i)
            buf.append(sql[i:end])
            i = end
        elif sql.startswith("--", i):
            nl = sql.find("\n", i)
            i = n if nl == -1 else nl
        elif sql.startswith("/*", i):
            close = sql.find("*/", i + 2)
            if close == -1:
                raise MigrationError("unterminated /* comment")
            buf.append(" ")
            i = close + 2
        elif ch == ";":
            statements.append("".join(buf))
            buf = []
            i += 1
        else:
            buf.append(ch)
            i += 1
    statements.append("".join(buf))
    return [s.strip() for s in statements if s.strip()]


def _end_of_quoted(sql: str, start: int) -> int:
    quote, i = sql[start], start + 1
    while i < len(sql):
        if sql[i] == "\\":
            i += 2
        elif sql[i] == quote:
            if sql.startswith(quote * 2, i):  # doubled quote is an escaped quote
                i += 2
            else:
                return i + 1
        else:
            i += 1
    raise MigrationError(f"unterminated {quote} quote starting at offset {start}")


# ---------------------------------------------------------------------------------- rendering
def render(statement: str, target: Target) -> str:
    """Fill a template statement's placeholders for ``target``; an unknown placeholder is an error."""

    def fill(m: re.Match[str]) -> str:
        kind, arg = m.group(1), m.group(2)
        if kind == "database" and arg is None:
            return _ident(target.database)
        if kind == "on_cluster" and arg is None:
            return f"ON CLUSTER {_ident(target.cluster)}" if target.cluster else ""
        if kind == "table" and arg:
            return f"{_ident(target.database)}.{_ident(_local(arg, target))}"
        if kind == "engine" and arg:
            return _engine(arg, target)
        if kind == "distributed" and arg:
            return _distributed(arg, target)
        raise MigrationError(f"unknown placeholder {m.group(0)} in: {statement[:80]}")

    return re.sub(r"[ \t]+\n", "\n", PLACEHOLDER_RE.sub(fill, statement)).strip()


def render_migration(migration: Migration, target: Target) -> list[str]:
    rendered = (render(s, target) for s in split_statements(migration.source))
    return [s for s in rendered if s]


def _ident(name: str) -> str:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        return name
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _local(table: str, target: Target) -> str:
    return f"{table}_local" if target.cluster else table


def _engine(spec: str, target: Target) -> str:
    m = re.fullmatch(r"\s*(\w*MergeTree)\s*(?:\((.*)\))?\s*", spec)
    if not m:
        raise MigrationError(f"{{engine:{spec}}}: expected a MergeTree-family engine")
    name, args = m.group(1), (m.group(2) or "").strip()
    if not target.cluster:
        return f"{name}({args})" if args else name
    all_args = ", ".join(a for a in (REPLICATED_PATH, args) if a)
    return f"Replicated{name}({all_args})"


def _distributed(spec: str, target: Target) -> str:
    table, sep, key = spec.partition(":")
    if not sep or not table.strip() or not key.strip():
        raise MigrationError(f"{{distributed:{spec}}}: expected {{distributed:TABLE:SHARDING_KEY}}")
    if not target.cluster:
        return ""  # one server: the MergeTree table already has the contract name
    table, key = table.strip(), key.strip()
    db = _ident(target.database)
    return (
        f"CREATE TABLE IF NOT EXISTS {db}.{_ident(table)} ON CLUSTER {_ident(target.cluster)} "
        f"AS {db}.{_ident(table + '_local')} "
        f"ENGINE = Distributed({_ident(target.cluster)}, {db}, {_ident(table + '_local')}, {key})"
    )


def bootstrap_statements(target: Target) -> list[str]:
    """DDL for the database and the bookkeeping table, run before any migration."""
    on_cluster = f" ON CLUSTER {_ident(target.cluster)}" if target.cluster else ""
    engine = (
        f"ReplicatedReplacingMergeTree({MIGRATIONS_TABLE_PATH}, applied_at)"
        if target.cluster
        else "ReplacingMergeTree(applied_at)"
    )
    db = _ident(target.database)
    return [
        f"CREATE DATABASE IF NOT EXISTS {db}{on_cluster}",
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations{on_cluster} (\n"
        "    version String,\n"
        "    name String,\n"
        "    checksum String,\n"
        "    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)\n"
        f") ENGINE = {engine} ORDER BY version",
    ]


# ----------------------------------------------------------------------------------- applying
def applied_versions(client: Client, target: Target) -> dict[str, str]:
    """version -> checksum of every applied migration."""
    result = client.query(
        f"SELECT version, argMax(checksum, applied_at) FROM {_ident(target.database)}.schema_migrations "
        "GROUP BY version"
    )
    return {str(v): str(c) for v, c in result.result_rows}


def apply_migrations(client: Client, settings: Settings, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every migration not applied yet, in order; return the file names applied (empty if none).

    ``client`` may be bound to no database (``get_client(settings, use_database=False)``): every
    statement names its database, so this works before the database exists.
    """
    target = Target.from_settings(settings)
    migrations = load_migrations(directory)
    for stmt in bootstrap_statements(target):
        client.command(stmt)
    applied = applied_versions(client, target)

    for mig in migrations:
        if mig.version in applied and applied[mig.version] != mig.checksum:
            raise MigrationError(
                f"migration {mig.path.name} was changed after it was applied to {target.database} "
                f"(checksum {mig.checksum[:12]} != applied {applied[mig.version][:12]}); "
                "restore the file and add a new migration for the change"
            )

    done: list[str] = []
    for mig in migrations:
        if mig.version in applied:
            continue
        for stmt in render_migration(mig, target):
            client.command(stmt)  # one statement per HTTP request: the HTTP interface takes one
        client.insert(
            f"{_ident(target.database)}.schema_migrations",
            [[mig.version, mig.name, mig.checksum]],
            column_names=["version", "name", "checksum"],
        )
        log.info("clickhouse_migration_applied", version=mig.version, name=mig.name, cluster=target.cluster)
        done.append(mig.path.name)
    return done


def migrate(settings: Settings) -> list[str]:
    """Connect (without binding to the database, which may not exist yet) and apply migrations."""
    from sinks.clickhouse import get_client

    client = get_client(settings, use_database=False)
    try:
        return apply_migrations(client, settings)
    finally:
        client.close()
