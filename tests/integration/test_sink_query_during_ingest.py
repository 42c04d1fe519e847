"""Analysts query while the sink writes: `carnival query` (a separate process, over HTTP) and a
clickhouse-connect client both answer throughout an ingestion, and see counts only grow."""

from __future__ import annotations

import threading
import time
import uuid

import orjson
import pytest

from core.settings import Settings
from sinks.clickhouse import get_client
from sinks.config import SinkConfig
from sinks.kafka_sink import KafkaSink
from streams.kafka import Producer
from streams.serde import serde_from_settings

pytestmark = pytest.mark.integration

TOPIC = "fleet.telemetry.v1"
N = 120_000


def test_queries_succeed_while_the_sink_inserts(settings: Settings, run_cli) -> None:  # type: ignore[no-untyped-def]
    run = "q" + uuid.uuid4().hex[:6]
    serde = serde_from_settings(settings)

    def feed() -> None:
        with Producer(settings) as producer:
            for i in range(N):
                vin = f"{run}-{i:06d}"
                rec = {
                    "vin": vin,
                    "ts": 1_767_225_600_000 + i,
                    "hw": "HW4",
                    "region": "query-test",
                    "charge_state": "CHARGING",
                    "gear": "P",
                    "opted_in": True,
                }
                producer.produce(TOPIC, serde.encode(TOPIC, rec), vin)
                if i % 5000 == 4999:
                    time.sleep(0.5)  # keep the stream flowing for ~12 s

    stop = threading.Event()
    sink = KafkaSink(
        settings, SinkConfig(group_id=f"query-{run}", flush_interval_s=0.3, batch_rows=5000), [TOPIC], stop
    )
    sink_thread = threading.Thread(target=sink.run, daemon=True)
    producer = threading.Thread(target=feed, daemon=True)
    sink_thread.start()
    deadline = time.monotonic() + 30
    while not sink.expected and time.monotonic() < deadline:  # joined the group, positions known
        time.sleep(0.1)
    producer.start()
    sql = f"SELECT count() AS n, uniqExact(vin) AS vins FROM carnival.telemetry WHERE vin LIKE '{run}-%'"
    seen: list[int] = []
    client = get_client(settings)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            result = run_cli("query", sql, "--format", "jsonl", timeout=60)
            assert result.returncode == 0, result.stderr.decode()[-2000:]
            row = orjson.loads(result.stdout)
            assert row["n"] == row["vins"]  # never a duplicate, even mid-ingestion
            seen.append(row["n"])
            n, vins = client.query(sql).result_rows[0]  # a plain clickhouse-connect client too
            assert n == vins and n >= seen[-1]
            if seen[-1] >= N:
                break
    finally:
        stop.set()
        sink_thread.join(60)
        producer.join(60)
    assert seen[-1] == N
    assert seen == sorted(seen)
    assert sum(0 < n < N for n in seen) >= 2, seen  # several answers came while rows were landing
