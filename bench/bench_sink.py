"""Kafka -> ClickHouse throughput of one sink worker, against the ceiling measured in the same run.

    python bench/bench_sink.py [--records 300000] [--use-running-stack]

Ceiling: a direct ``client.insert`` (clickhouse-connect, column-oriented, 20k-row batches) of the same
rows, already decoded to Python values (decoding not timed). Sink: ``KafkaSink`` reading the same records
from Kafka (fetch, batch, Avro container, insert with dedup token, commit), timed from partition
assignment until every record landed. Prints both in rows/s and the ratio (goal >= 0.8). Starts its own
stack (own data dir and ports) unless --use-running-stack is given.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import bench_port, private_stack_env  # noqa: E402

from core.settings import Settings  # noqa: E402
from sinks.clickhouse import get_client  # noqa: E402
from sinks.config import SinkConfig  # noqa: E402
from sinks.kafka_sink import KafkaSink  # noqa: E402
from streams.kafka import Producer  # noqa: E402
from streams.serde import serde_from_settings  # noqa: E402

TOPIC = "fleet.telemetry.v1"
BATCH = 20_000


def records(n: int, run: str, seed: int = 1) -> list[dict[str, object]]:
    rnd = random.Random(seed)
    base_ms = 1_772_000_000_000
    return [
        {
            "vin": f"{run}{rnd.randrange(10**8, 10**9)}",
            "ts": base_ms + i * 7,
            "hw": "HW4",
            "region": rnd.choice(["us-west", "us-east", "us-central", "ca-east"]),
            "charge_state": rnd.choice(["CHARGING", "COMPLETE", "DISCONNECTED", "STOPPED"]),
            "gear": rnd.choice(["P", "P", "D"]),
            "soc_pct": round(rnd.uniform(5, 100), 1),
            "charge_limit_pct": 80.0,
            "minutes_to_full": round(rnd.uniform(0, 300), 1),
            "scheduled_departure": base_ms + 8 * 3_600_000,
            "at_home": rnd.random() < 0.6,
            "opted_in": True,
            "compute_temp_c": round(rnd.uniform(20, 70), 1),
            "software_version": "2026.8.1",
        }
        for i in range(n)
    ]


def bench_ceiling(settings: Settings, encoded: list[bytes]) -> float:
    """rows/s of client.insert of the decoded rows (the same values the sink lands)."""
    serde = serde_from_settings(settings)
    decoded = [serde.decode(TOPIC, b) for b in encoded]
    fields = list(decoded[0])
    names = [*fields, "_topic", "_partition", "_offset"]
    client = get_client(settings)
    batches = []
    for start in range(0, len(decoded), BATCH):
        chunk = decoded[start : start + BATCH]
        cols = [[r[f] for r in chunk] for f in fields]
        cols += [["bench.ceiling"] * len(chunk), [0] * len(chunk), list(range(start, start + len(chunk)))]
        batches.append(cols)
    started = time.perf_counter()
    for i, cols in enumerate(batches):
        client.insert(
            "telemetry",
            cols,
            column_names=names,
            column_oriented=True,
            settings={"insert_deduplication_token": f"bench-ceiling-{uuid.uuid4().hex}-{i}"},
        )
    return len(decoded) / (time.perf_counter() - started)


def bench_sink(settings: Settings, n: int) -> tuple[float, int]:
    """rows/s of one sink worker from assignment until n records landed."""
    stop = threading.Event()
    sink = KafkaSink(settings, SinkConfig(group_id=f"bench-{uuid.uuid4().hex[:6]}"), [TOPIC], stop)
    thread = threading.Thread(target=sink.run, daemon=True)
    thread.start()
    while not sink.expected:
        time.sleep(0.005)
    started = time.perf_counter()
    while sink.rows_inserted < n:
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    stop.set()
    thread.join(60)
    from sinks.metrics import INSERT_SECONDS

    in_insert = sum(s.value for m in INSERT_SECONDS.collect() for s in m.samples if s.name.endswith("_sum"))
    mode = "overlapping the reading (pipelined)" if sink.config.pipelined_inserts else "the loop waiting"
    print(f"sink: {elapsed:.2f}s; ClickHouse inserts took {in_insert:.2f}s, {mode}")
    return sink.rows_inserted / elapsed, sink.rows_inserted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument(
        "--use-running-stack",
        action="store_true",
        help="use the stack the CARNIVAL_* environment points at (its topic must be drained)",
    )
    args = parser.parse_args()
    own_stack = not args.use_running_stack
    if own_stack:
        private_stack_env(
            "carnival-bench-sink-", kafka_port=bench_port(92, 46000), clickhouse_port=bench_port(123, 46000)
        )
    settings = Settings()
    from carnival.stack.lifecycle import stack_down, stack_up

    if own_stack:
        stack_up(settings)
    try:
        run = "B" + uuid.uuid4().hex[:4]
        serde = serde_from_settings(settings)
        encoded = [serde.encode(TOPIC, r) for r in records(args.records, run)]
        with Producer(settings) as producer:
            for rec, value in zip(records(args.records, run), encoded, strict=True):
                producer.produce(TOPIC, value, str(rec["vin"]))
        sink_rate, landed = bench_sink(settings, args.records)
        ceiling = bench_ceiling(settings, encoded)
        print(f"records: {args.records:,} ({landed:,} landed by the sink)")
        print(f"ceiling  client.insert of decoded rows : {ceiling:12,.0f} rows/s")
        print(f"sink     Kafka -> ClickHouse, 1 worker : {sink_rate:12,.0f} rows/s")
        print(f"ratio    sink / ceiling                : {sink_rate / ceiling:12.2f}  (goal >= 0.8)")
    finally:
        if own_stack:
            stack_down(settings)


if __name__ == "__main__":
    main()
