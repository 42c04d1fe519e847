"""Query time of every docs/queries.md query on 10M telemetry rows.

    python bench/bench_queries.py [--rows 10000000] [--use-running-stack]

Builds a database of its own (``carnival_bench``): the migrations, the sample data set of
``sinks/sample_data.py`` for the task/trace/power tables, then ``--rows`` telemetry rows generated inside
ClickHouse (INSERT ... SELECT FROM numbers(): 20k cars, one snapshot a minute, 3 regions), and the owner
ledger recomputed over them. Each query runs 3 times; the table shows the best and median time and the
rows returned. Starts its own stack unless --use-running-stack is given.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from harness import private_stack_env  # noqa: E402

from core.settings import Settings  # noqa: E402
from sinks import sample_data  # noqa: E402
from sinks.clickhouse import get_client  # noqa: E402
from sinks.ledger import recompute  # noqa: E402
from sinks.migrate import migrate  # noqa: E402

DB = "carnival_bench"
CARS = 20_000

TELEMETRY_SQL = f"""
INSERT INTO telemetry (vin, ts, hw, region, charge_state, gear, soc_pct, charge_limit_pct, minutes_to_full,
    at_home, opted_in, compute_temp_c, software_version, _topic, _partition, _offset)
SELECT concat('BV', leftPad(toString(number % {CARS}), 6, '0')) AS vin,
       toDateTime64('2026-03-02 00:00:00', 3, 'UTC') + toIntervalMillisecond(intDiv(number, {CARS}) * 60000
           + cityHash64(number) % 60000) AS ts,
       ['HW4', 'HW4', 'HW4', 'HW3', 'HW5'][1 + (number % {CARS}) % 5] AS hw,
       ['b-west', 'b-east', 'b-central'][1 + (number % {CARS}) % 3] AS region,
       -- each car plugged in for a stretch of the day that depends on the car
       if((intDiv(number, {CARS}) + number % {CARS}) % 600 < 360,
          ['CHARGING', 'COMPLETE'][1 + cityHash64(number) % 2], 'DISCONNECTED') AS charge_state,
       if(charge_state = 'DISCONNECTED' AND cityHash64(number) % 3 = 0, 'D', 'P') AS gear,
       20 + cityHash64(number, 1) % 80 AS soc_pct, 80, NULL, charge_state != 'DISCONNECTED',
       (number % 10) != 9,
       30 + cityHash64(number, 2) % 40, '2026.8.1',
       'fleet.telemetry.v1', number % 12, intDiv(number, 12)
FROM numbers({{rows:UInt64}})
"""


def doc_queries() -> dict[str, str]:
    from test_docs_queries import doc_queries as parse

    return parse()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--use-running-stack", action="store_true")
    args = parser.parse_args()
    own_stack = not args.use_running_stack
    if own_stack:
        private_stack_env("carnival-bench-queries-", kafka_port=46192, clickhouse_port=46223)
    base = Settings()
    from carnival.stack.clickhouse_server import start_clickhouse, stop_clickhouse

    if own_stack:
        start_clickhouse(base)  # Kafka is not needed here
    try:
        settings = base.model_copy(update={"clickhouse_database": DB})
        get_client(settings, use_database=False).command(f"DROP DATABASE IF EXISTS {DB}")
        migrate(settings)
        client = get_client(settings, send_receive_timeout=1800)
        started = time.perf_counter()
        sample_data.load(client, sample_data.generate(seed=5))
        client.command(TELEMETRY_SQL, parameters={"rows": args.rows})
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        ledger_rows = recompute(client, sample_data.T0, sample_data.T0 + timedelta(days=8))
        ledger_s = time.perf_counter() - started
        total = client.command("SELECT count() FROM telemetry")
        print(
            f"telemetry rows: {int(total):,} (loaded in {load_s:.1f}s); ledger recompute: {ledger_rows} rows "
            f"in {ledger_s:.2f}s"
        )
        print(f"{'query':58} {'best s':>8} {'median s':>9} {'rows':>7}")
        for title, sql in doc_queries().items():
            times, rows = [], 0
            for _ in range(3):
                t = time.perf_counter()
                rows = len(client.query(sql).result_rows)
                times.append(time.perf_counter() - t)
            print(f"{title[:58]:58} {min(times):8.3f} {statistics.median(times):9.3f} {rows:7d}")
        get_client(settings, use_database=False).command(f"DROP DATABASE IF EXISTS {DB}")
    finally:
        if own_stack:
            stop_clickhouse(base)


if __name__ == "__main__":
    main()
