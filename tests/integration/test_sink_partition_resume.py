"""Resuming stays exact when a batch spans partitions of the table (PARTITION BY toYYYYMM(ts)).

Records crossing the January/February boundary in every Kafka partition (some partitions February
first, then a late January record) are taken by a real sink process in one batch; the process is
SIGKILLed right after the first of its inserts landed, before the others. A restarted sink resumes from
what ClickHouse holds; afterwards every record is one row, by (topic, partition, offset): none lost,
none twice.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer as RawProducer

from core.settings import Settings
from sinks.clickhouse import get_client
from streams.kafka import producer_config
from streams.serde import serde_from_settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOPIC = "fleet.telemetry.v1"
JAN_31_MS = 1_769_817_600_000  # 2026-01-31T00:00:00Z
FEB_1_MS = JAN_31_MS + 86_400_000
KEYS = 24  # spread over the topic's partitions
PER_KEY = 60


def _record(vin: str, ts_ms: int) -> dict[str, Any]:
    return {"vin": vin, "ts": ts_ms, "hw": "HW4", "region": "resume-test", "charge_state": "CHARGING",
            "gear": "P", "opted_in": True}  # fmt: skip


def _produce(settings: Settings, run: str) -> dict[str, tuple[int, int]]:
    """vin -> (partition, offset) as the broker acknowledged them."""
    serde = serde_from_settings(settings)
    producer = RawProducer(producer_config(settings))
    delivered: dict[str, tuple[int, int]] = {}
    errors: list[str] = []

    def report(vin: str, err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            delivered[vin] = (msg.partition(), msg.offset())

    for i in range(PER_KEY):
        for k in range(KEYS):
            # Even keys: January, then February. Odd keys: February first, one late January record.
            if k % 2 == 0:
                ts = JAN_31_MS + 3_600_000 * 23 + i * 1000 if i < PER_KEY // 2 else FEB_1_MS + i * 1000
            else:
                ts = JAN_31_MS + i if i == PER_KEY - 1 else FEB_1_MS + i * 1000
            vin = f"{run}-{k:02d}-{i:03d}"
            producer.produce(TOPIC, serde.encode(TOPIC, _record(vin, ts)), f"{run}-{k:02d}",
                             on_delivery=functools.partial(report, vin))  # fmt: skip
    assert producer.flush(60) == 0 and not errors
    return delivered


def _rows(settings: Settings, run: str) -> list[tuple[str, int, int]]:
    client = get_client(settings)
    try:
        return [
            (str(v), int(p), int(o))
            for v, p, o in client.query(
                f"SELECT vin, _partition, _offset FROM telemetry WHERE vin LIKE '{run}-%'"
            ).result_rows
        ]
    finally:
        client.close()


def test_sigkill_between_the_inserts_of_a_month_spanning_batch_loses_and_duplicates_nothing(
    settings: Settings, stack_env: dict[str, str], tmp_path: Path
) -> None:
    run = "pr" + uuid.uuid4().hex[:6]
    group = f"resume-{run}"
    delivered = _produce(settings, run)
    assert len({p for p, _ in delivered.values()}) > 1  # several Kafka partitions in the batch
    env = {
        **os.environ,
        **stack_env,
        "PYTHONPATH": str(ROOT),
        "CARNIVAL_SINK_FLUSH_INTERVAL_S": "4",  # everything produced above is in the first batch
        "CARNIVAL_SINK_BATCH_ROWS": "100000",
    }
    crashed = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "sink_crash_between_parts.py"), group, TOPIC],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert crashed.returncode == -9, crashed.stdout[-3000:] + crashed.stderr[-3000:]
    partial = _rows(settings, run)
    total = KEYS * PER_KEY
    assert 0 < len(partial) < total, (len(partial), crashed.stdout[-2000:])  # killed between the parts
    assert len({(p, o) for _, p, o in partial}) == len(partial)

    log = tmp_path / "sink.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sinks.worker", TOPIC, "--group", group],
            env={**env, "CARNIVAL_SINK_FLUSH_INTERVAL_S": "0.3"},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90
        while len(_rows(settings, run)) < total and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(1.5)  # a duplicate would land after the count was reached
    finally:
        proc.terminate()
        proc.wait(60)
    rows = _rows(settings, run)
    by_position: dict[tuple[int, int], list[str]] = {}
    for vin, p, o in rows:
        by_position.setdefault((p, o), []).append(vin)
    duplicates = {k: v for k, v in by_position.items() if len(v) > 1}
    lost = {vin for vin, pos in delivered.items() if pos not in by_position}
    assert not duplicates and not lost, (len(duplicates), sorted(lost)[:10])
    assert {vin: (p, o) for vin, p, o in rows} == delivered
    print(
        f"partition resume: {total} records, {len(partial)} landed before the SIGKILL, 0 lost, 0 duplicated"
    )
