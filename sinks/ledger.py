"""The owner ledger: what each car owner is owed, per vin, charging session and task run.

Computed from the event history alone, so it can be recomputed at any time with the same result:

- Charging sessions come from telemetry: per vin, ordered by (ts, _offset), a session starts at the
  first plugged-in snapshot (any charge_state but DISCONNECTED; UNKNOWN means "not reported" and is
  ignored) after an unplugged one (or the first one seen in the look-back window), and ends at the next
  DISCONNECTED snapshot. Its id is ``<vin>:<epoch ms of its first plugged snapshot>``.
- Compute comes from ``tasks.status``: per assignment, the first STARTED to the first COMPLETED or
  FAILED. Only compute inside a charging session is billed: the run is matched to the session it
  started in and clipped to the session's end. Runs that started outside a session are not billed.
- energy_kwh = compute_seconds / 3600 * the computer's draw (per hardware generation);
  amount = energy_kwh * price per kWh (per region) + compute hours * price per compute hour.

``recompute(settings, start, end)`` (re)writes the rows of runs that ended in [start, end) with one
INSERT ... SELECT. owner_ledger is a ReplacingMergeTree keyed by (vin, charge_session_id,
assignment_id) with version ``ts`` (= computation time), so a recomputation replaces rows instead of
adding to them; read it with FINAL. Each row's _topic/_partition/_offset is the terminal status event
it was computed from.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from clickhouse_connect.driver.client import Client

from core.settings import Settings

PLUGGED_OUT = "DISCONNECTED"
NOT_REPORTED = "UNKNOWN"


@dataclass(frozen=True)
class LedgerConfig:
    """Prices and power draw. Proposed for Settings (CARNIVAL_LEDGER_*); defaults are placeholders."""

    compute_kw: Mapping[str, float] = field(
        default_factory=lambda: {"HW3": 0.07, "HW4": 0.1, "HW5": 0.15, "OTHER": 0.1}
    )
    default_compute_kw: float = 0.1
    price_per_kwh: float = 0.30
    price_per_kwh_by_region: Mapping[str, float] = field(default_factory=dict)
    price_per_compute_hour: float = 0.05
    currency: str = "USD"
    session_lookback: timedelta = timedelta(days=3)  # telemetry read before `start` to find session starts
    max_run: timedelta = timedelta(days=2)  # STARTED events read before `start`

    def kw_for(self, hw: str) -> float:
        return self.compute_kw.get(hw, self.default_compute_kw)

    def price_for(self, region: str) -> float:
        return self.price_per_kwh_by_region.get(region, self.price_per_kwh)


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _map(values: Mapping[str, float]) -> str:
    if not values:
        return "CAST(map(), 'Map(String, Float64)')"
    return "map(" + ", ".join(f"{_quote(k)}, {float(v)!r}" for k, v in sorted(values.items())) + ")"


def ledger_sql(config: LedgerConfig) -> str:
    """INSERT ... SELECT for runs ended in [start, end); query parameters start, end, lookback, runs_from."""
    kw, prices = _map(config.compute_kw), _map(config.price_per_kwh_by_region)
    return f"""
INSERT INTO owner_ledger (vin, charge_session_id, assignment_id, task_id, ts, started_at, ended_at,
    compute_seconds, energy_kwh, price_per_kwh, amount, currency, region, hw, session_started_at,
    session_ended_at, compute_kw, price_per_compute_hour, energy_amount, compute_amount,
    _topic, _partition, _offset)
WITH
sessions AS (
    SELECT vin, sess,
           minIf(ts, plugged) AS session_started_at,
           minIfOrNull(ts, NOT plugged) AS session_ended_at,
           argMinIf(region, (ts, _offset), plugged) AS region,
           argMinIf(hw, (ts, _offset), plugged) AS hw
    FROM
    (
        SELECT vin, ts, _offset, region, hw, plugged,
               sum(toUInt32(plugged AND NOT prev_plugged))
                   OVER (PARTITION BY vin ORDER BY ts, _offset ROWS UNBOUNDED PRECEDING) AS sess
        FROM
        (
            SELECT vin, ts, _offset, region, hw, charge_state != '{PLUGGED_OUT}' AS plugged,
                   lagInFrame(charge_state != '{PLUGGED_OUT}', 1, false)
                       OVER (PARTITION BY vin ORDER BY ts, _offset ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)
                       AS prev_plugged
            FROM telemetry
            WHERE ts >= {{lookback:DateTime64(3)}} AND ts < {{end:DateTime64(3)}}
              AND charge_state != '{NOT_REPORTED}'
        )
    )
    WHERE sess > 0
    GROUP BY vin, sess
),
runs AS (
    SELECT assignment_id, any(task_id) AS task_id, any(vin) AS vin,
           minIf(ts, status = 'STARTED') AS run_started_at,
           minIf(ts, status IN ('COMPLETED', 'FAILED')) AS run_ended_at,
           argMinIf(_partition, (ts, _offset), status IN ('COMPLETED', 'FAILED')) AS src_partition,
           argMinIf(_offset, (ts, _offset), status IN ('COMPLETED', 'FAILED')) AS src_offset
    FROM task_status
    WHERE ts >= {{runs_from:DateTime64(3)}} AND ts < {{end:DateTime64(3)}}
    GROUP BY assignment_id
    HAVING countIf(status = 'STARTED') > 0 AND countIf(status IN ('COMPLETED', 'FAILED')) > 0
       AND run_ended_at >= {{start:DateTime64(3)}} AND run_ended_at >= run_started_at
),
billed AS (
    SELECT r.vin AS vin, r.assignment_id AS assignment_id, r.task_id AS task_id,
           s.session_started_at AS session_started_at, s.session_ended_at AS session_ended_at,
           s.region AS region, s.hw AS hw,
           greatest(r.run_started_at, s.session_started_at) AS started_at,
           if(s.session_ended_at IS NULL, r.run_ended_at,
              least(r.run_ended_at, assumeNotNull(s.session_ended_at))) AS ended_at,
           r.src_partition AS src_partition, r.src_offset AS src_offset
    FROM runs AS r
    ASOF INNER JOIN sessions AS s ON r.vin = s.vin AND r.run_started_at >= s.session_started_at
    WHERE s.session_ended_at IS NULL OR r.run_started_at < assumeNotNull(s.session_ended_at)
)
SELECT vin,
       concat(vin, ':', toString(toUnixTimestamp64Milli(session_started_at))) AS charge_session_id,
       assignment_id, task_id, now64(3) AS ts, started_at, ended_at,
       greatest(dateDiff('millisecond', started_at, ended_at), 0) / 1000 AS compute_seconds,
       compute_seconds / 3600 * compute_kw AS energy_kwh,
       if(mapContains({prices}, region), {prices}[region], {config.price_per_kwh!r}) AS price_per_kwh,
       energy_amount + compute_amount AS amount,
       {_quote(config.currency)} AS currency, region, hw, session_started_at, session_ended_at,
       if(mapContains({kw}, hw), {kw}[hw], {config.default_compute_kw!r}) AS compute_kw,
       {config.price_per_compute_hour!r} AS price_per_compute_hour,
       energy_kwh * price_per_kwh AS energy_amount,
       compute_seconds / 3600 * price_per_compute_hour AS compute_amount,
       'tasks.status.v1' AS _topic, src_partition AS _partition, src_offset AS _offset
FROM billed
"""


def recompute(client: Client, start: datetime, end: datetime, config: LedgerConfig | None = None) -> int:
    """(Re)compute the ledger rows of runs that ended in [start, end); return how many rows were written."""
    config = config or LedgerConfig()
    summary = client.command(
        ledger_sql(config),
        parameters={
            "start": start,
            "end": end,
            "lookback": start - config.session_lookback,
            "runs_from": start - config.max_run,
        },
    )
    return int(getattr(summary, "written_rows", 0))


def _when(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sinks.ledger", description="Recompute the owner ledger.")
    parser.add_argument("--from", dest="start", type=_when, required=True, help="ISO time (UTC), inclusive")
    parser.add_argument("--to", dest="end", type=_when, required=True, help="ISO time (UTC), exclusive")
    args = parser.parse_args(argv)
    from sinks.clickhouse import get_client

    client = get_client(Settings())
    written = recompute(client, args.start, args.end)
    print(f"owner_ledger: {written} rows (re)computed for runs ended in [{args.start}, {args.end})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
