"""Produce and consume throughput: Carnival's code paths against raw confluent-kafka, in the same run.

    python bench/bench_produce_consume.py [--records 1000000]

Produce: `carnival produce`'s path (JSON parse -> validate -> Avro -> produce, keyed) vs raw
confluent-kafka producing the same pre-encoded bytes with the same keys and producer settings.
Consume: `carnival consume`'s path (fetch -> Avro decode -> JSON line) vs a raw consumer that only
touches each message's bytes. The bench starts its own stack (own data dir and ports) unless
--use-running-stack is given.
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import bench_kafka, bench_port  # noqa: E402

from core.settings import Settings  # noqa: E402
from streams.consume import assign_all_partitions, consume_json_lines  # noqa: E402
from streams.kafka import Producer, make_consumer, producer_config  # noqa: E402
from streams.produce import produce_json_lines  # noqa: E402
from streams.records import parse_json_record  # noqa: E402
from streams.serde import serde_from_settings  # noqa: E402

TOPIC = "fleet.telemetry.v1"
CHARGE = ["CHARGING", "COMPLETE", "DISCONNECTED", "STOPPED", "STARTING"]
GEARS = ["P", "P", "P", "D", "R"]


def telemetry_lines(n: int, seed: int = 1) -> list[bytes]:
    rnd = random.Random(seed)
    base_ms = 1_772_000_000_000
    lines = []
    for i in range(n):
        rec = {
            "vin": f"5YJ3E1EA{rnd.randrange(10**8, 10**9)}",
            "ts": base_ms + i * 7,
            "hw": "HW4",
            "region": rnd.choice(["us-west", "us-east", "us-central", "ca-east"]),
            "charge_state": rnd.choice(CHARGE),
            "gear": rnd.choice(GEARS),
            "soc_pct": round(rnd.uniform(5, 100), 1),
            "charge_limit_pct": 80.0,
            "minutes_to_full": round(rnd.uniform(0, 300), 1),
            "scheduled_departure": base_ms + 8 * 3_600_000,
            "at_home": rnd.random() < 0.6,
            "opted_in": True,
            "compute_temp_c": round(rnd.uniform(20, 70), 1),
            "software_version": "2026.8.1",
        }
        lines.append(orjson.dumps(rec))
    return lines


def end_offsets(settings: Settings, attempts: int = 20) -> int:
    """Sum of the topic's end offsets. Right after a private broker starts, a partition can be listed
    with a leader that does not serve offsets yet (NOT_LEADER_FOR_PARTITION): retry a few times."""
    from confluent_kafka import KafkaException, TopicPartition

    consumer = make_consumer(settings)
    try:
        meta = consumer.list_topics(TOPIC, timeout=10).topics[TOPIC]
        for attempt in range(attempts):
            try:
                return sum(
                    consumer.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=10)[1]
                    for p in meta.partitions
                )
            except KafkaException:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")
    finally:
        consumer.close()


def bench_produce_raw(settings: Settings, encoded: list[tuple[str, bytes]]) -> float:
    from confluent_kafka import Producer as RawProducer

    producer = RawProducer(producer_config(settings))
    start = time.perf_counter()
    for key, value in encoded:
        while True:
            try:
                producer.produce(TOPIC, value, key)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(120)
    return time.perf_counter() - start


def bench_produce_carnival(settings: Settings, lines: list[bytes]) -> float:
    serde = serde_from_settings(settings)
    producer = Producer(settings)
    start = time.perf_counter()
    summary = produce_json_lines(TOPIC, lines, producer, serde)
    producer.flush(120)
    elapsed = time.perf_counter() - start
    assert summary.rejected == 0 and producer.stats.failed == 0, summary
    return elapsed


class _Null(io.RawIOBase):
    def __init__(self) -> None:
        self.bytes = 0

    def write(self, b) -> int:  # type: ignore[no-untyped-def, override]
        self.bytes += len(b)
        return len(b)


def bench_consume_raw(settings: Settings, n: int) -> float:
    consumer = make_consumer(settings, **{"fetch.max.bytes": 52_428_800})
    assign_all_partitions(consumer, TOPIC, from_beginning=True)
    seen = total = 0
    start = time.perf_counter()
    while seen < n:
        for msg in consumer.consume(1000, timeout=1.0):
            if msg.error() is None:
                total += len(msg.value())
                seen += 1
    elapsed = time.perf_counter() - start
    consumer.close()
    return elapsed


def bench_consume_carnival(settings: Settings, n: int) -> float:
    consumer = make_consumer(settings, **{"fetch.max.bytes": 52_428_800})
    sink = _Null()
    start = time.perf_counter()
    from carnival.produce_cmd import _raw_ts_serde

    summary = consume_json_lines(
        consumer,
        TOPIC,
        _raw_ts_serde(settings),
        sink,  # type: ignore[arg-type]
        from_beginning=True,
        max_records=n,
    )
    elapsed = time.perf_counter() - start
    consumer.close()
    assert summary.records == n, summary
    return elapsed


def cpu_breakdown(lines: list[bytes], encoded: list[bytes]) -> list[tuple[str, float]]:
    """In-process CPU microseconds per record of each step (no broker): where a record's time goes."""
    from streams.avro_json import compile_json_line
    from streams.records import to_json_record
    from streams.serde import AvroSerde

    serde, raw_serde = AvroSerde(), AvroSerde(raw_timestamps=True)
    plan, line = serde.json_plan(TOPIC), compile_json_line(TOPIC)
    assert plan is not None

    def slow_produce(x: bytes) -> bytes:
        return serde.encode(TOPIC, parse_json_record(TOPIC, orjson.loads(x)))

    def slow_consume(v: bytes) -> bytes:
        return orjson.dumps(to_json_record(TOPIC, raw_serde.decode(TOPIC, v)))

    steps = [
        ("produce: orjson.loads only", orjson.loads, lines),
        ("produce: fast path (loads+validate+encode)", plan, lines),
        ("produce: slow path (parse_json_record+encode)", slow_produce, lines),
        ("consume: fast path (read+format+dumps)", line, encoded),
        ("consume: slow path (decode+to_json_record+dumps)", slow_consume, encoded),
    ]
    out = []
    for name, fn, items in steps:
        started = time.process_time()
        for item in items:
            fn(item)
        out.append((name, (time.process_time() - started) / len(items) * 1e6))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument(
        "--use-running-stack", action="store_true", help="use the stack the CARNIVAL_* environment points at"
    )
    args = parser.parse_args()
    n = args.records

    kafka = bench_kafka(None if args.use_running_stack else bench_port(92, 45000), "carnival-bench-")
    settings = kafka.settings
    try:
        print(f"generating {n:,} telemetry JSON lines ...", flush=True)
        lines = telemetry_lines(n)
        serde = serde_from_settings(settings)
        encoded = [
            (str(r["vin"]), serde.encode(TOPIC, r))
            for r in (parse_json_record(TOPIC, orjson.loads(x)) for x in lines)
        ]
        before = end_offsets(settings)

        raw_p = bench_produce_raw(settings, encoded)
        car_p = bench_produce_carnival(settings, lines)
        total = end_offsets(settings) - before
        assert total == 2 * n, f"expected {2 * n} new records, broker has {total}"
        encoded_sample = encoded[:50_000]
        del encoded

        raw_c = bench_consume_raw(settings, n)
        car_c = bench_consume_carnival(settings, n)
    finally:
        kafka.close()
    sample = min(n, 50_000)
    breakdown = cpu_breakdown(lines[:sample], [v for _, v in encoded_sample])

    print()
    print(f"{'path':42} {'records/s':>12} {'seconds':>9}")
    rows = [
        ("produce: raw confluent-kafka, pre-encoded", n / raw_p, raw_p),
        ("produce: carnival (JSON->validate->Avro)", n / car_p, car_p),
        ("consume: raw confluent-kafka, bytes only", n / raw_c, raw_c),
        ("consume: carnival (Avro->JSON lines)", n / car_c, car_c),
    ]
    for name, rate, secs in rows:
        print(f"{name:42} {rate:12,.0f} {secs:9.2f}")
    print()
    print(f"produce ratio carnival/raw: {raw_p / car_p:.2f}   (goal >= 0.50)")
    print(f"consume ratio carnival/raw: {raw_c / car_c:.2f}   (goal >= 0.60)")
    print()
    print(f"CPU per record, in process, {sample:,} records (no broker):")
    for name, us in breakdown:
        print(f"  {name:50} {us:7.2f} us")


if __name__ == "__main__":
    main()
