"""Run SQL on ClickHouse and print the result as an aligned table, JSON lines or CSV."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import itertools
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

import orjson
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

FORMATS = ("table", "jsonl", "csv")
MAX_ERROR_CHARS = 400
SELECT_RE = re.compile(r"\s*(\(\s*)*(SELECT|WITH)\b", re.I)
# Statements that return rows; anything else (DDL, INSERT, ALTER...) runs as a command.
ROWS_RE = re.compile(r"\s*(\(\s*)*(SELECT|WITH|SHOW|DESC|DESCRIBE|EXPLAIN|EXISTS|CHECK)\b", re.I)
MAX_CELL_CHARS = 80  # table format only: one huge value must not push every other column off-screen
JSON_OPTS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS


class QueryError(Exception):
    """A query failed; the message is one line a person can act on."""


def run_query(client: Client, sql: str, fmt: str, out: TextIO) -> int:
    """Run ``sql`` and write its rows to ``out`` in ``fmt``; return the number of rows written."""
    if fmt not in FORMATS:
        raise QueryError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    try:
        if not ROWS_RE.match(sql):
            summary = client.command(sql)
            written = getattr(summary, "written_rows", 0)
            if fmt == "table":
                out.write(f"Ok. ({written} rows written)\n" if written else "Ok.\n")
            return 0
        if fmt == "table":
            result = client.query(sql)
            columns = result.column_names or _columns_of_empty_result(client, sql)
            return write_table(columns, result.result_rows, out)
        # Stream the other formats block by block: a large export needs no memory for all of it.
        with client.query_row_block_stream(sql) as stream:
            first = next(stream, None)  # column names are known once the first block arrived
            columns = stream.source.column_names or _columns_of_empty_result(client, sql)
            rows = itertools.chain.from_iterable(itertools.chain([first] if first else [], stream))
            return write_jsonl(columns, rows, out) if fmt == "jsonl" else write_csv(columns, rows, out)
    except ClickHouseError as exc:
        raise QueryError(one_line_error(exc)) from exc


def _columns_of_empty_result(client: Client, sql: str) -> tuple[str, ...]:
    """An empty result carries no column names over HTTP; DESCRIBE recovers them for a SELECT."""
    if not SELECT_RE.match(sql):
        return ()
    try:
        described = client.query(f"DESCRIBE ({sql.strip().rstrip(';')})")
    except ClickHouseError:
        return ()
    return tuple(str(row[0]) for row in described.result_rows)


def one_line_error(exc: BaseException) -> str:
    """ClickHouse's message without the driver's wrapping, URL, version and multi-line hint lists."""
    text = str(exc)
    m = re.search(r"(Code: \d+\..*)", text, re.S)
    if m:
        text = m.group(1)
    text = re.sub(r"\s*\(for url [^)]*\)", "", text)
    text = re.sub(r"\s*\(version [\d.]+[^)]*\)", "", text)
    text = re.sub(r"\s+FORMAT Native\b", "", text)  # appended by clickhouse-connect, not typed by the user
    text = re.sub(r"Expected one of: .*?(?=\(\w+\)\s*$|$)", "", text, flags=re.S)
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


# ------------------------------------------------------------------------------------ writers
def write_jsonl(columns: Sequence[str], rows: Iterable[Sequence[Any]], out: TextIO) -> int:
    count = 0
    for row in rows:
        out.write(
            orjson.dumps(
                dict(zip(columns, row, strict=True)), default=_json_default, option=JSON_OPTS
            ).decode()
        )
        out.write("\n")
        count += 1
    return count


def write_csv(columns: Sequence[str], rows: Iterable[Sequence[Any]], out: TextIO) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    count = 0
    for row in rows:
        writer.writerow([_csv_cell(v) for v in row])
        count += 1
    return count


def write_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO) -> int:
    if not columns:
        out.write("(0 rows)\n")
        return 0
    cells = [[_table_cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [
        bool(rows) and all(_is_number(r[i]) for r in rows if r[i] is not None) for i in range(len(columns))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    out.write(line(columns) + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for r in cells:
        out.write(line(r) + "\n")
    out.write(f"({len(rows)} row{'' if len(rows) == 1 else 's'})\n")
    return len(rows)


# ------------------------------------------------------------------------------- value format
def _iso(value: dt.datetime) -> str:
    # clickhouse-connect returns naive datetimes in UTC for DateTime64(..., 'UTC') columns.
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _json_default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, set | frozenset):
        return list(value)
    return str(value)  # IP addresses and other exotic types


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return _iso(value)
    if isinstance(value, dict | list | tuple):
        return orjson.dumps(value, default=_json_default, option=JSON_OPTS).decode()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    return value


def _table_cell(value: Any) -> str:
    if value is None:
        text = "NULL"
    elif isinstance(value, dt.datetime):
        text = _iso(value).replace("T", " ").removesuffix("Z")
    elif isinstance(value, float):
        text = repr(round(value, 6)) if math.isfinite(value) else repr(value)
    else:
        text = str(_csv_cell(value))
    text = text.replace("\n", "\\n").replace("\t", "\\t")
    return text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 1] + "…"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | decimal.Decimal) and not isinstance(value, bool)
