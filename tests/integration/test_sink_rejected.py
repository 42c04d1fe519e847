"""Batches the real ClickHouse will never take as they are: one spanning more than 100 months (code 252,
"Too many partitions for single INSERT block") and one holding a record ClickHouse refuses (a valid
Avro body for the sink's decoder, but a boolean byte 2: "Invalid value for bool"). The sink used to retry
both forever with every topic stalled; now the first lands whole, the refused record goes to the
dead-letter topic with ClickHouse's error, everything else lands once, and the other topics flow."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from core.settings import Settings
from sinks.clickhouse import get_client
from sinks.config import SinkConfig
from sinks.kafka_sink import KafkaSink
from streams.kafka import Producer
from streams.serde import serde_from_settings

pytestmark = pytest.mark.integration

TELEMETRY, REQUESTS, DEADLETTER = "fleet.telemetry.v1", "tasks.requests.v1", "deadletter.v1"
T0_MS = 1_767_225_600_000  # 2026-01-01
MONTH_MS = 31 * 86_400_000


def _telemetry(vin: str, ts_ms: int) -> dict[str, Any]:
    return {"vin": vin, "ts": ts_ms, "hw": "HW4", "region": "rej-test", "charge_state": "CHARGING",
            "gear": "P", "opted_in": True}  # fmt: skip


def _request(task_id: str) -> dict[str, Any]:
    return {"task_id": task_id, "ts": T0_MS, "tenant": "rej", "kind": "batch", "priority": 1,
            "est_duration_s": 60, "min_hw": "HW3"}  # fmt: skip


def _bad_bool(serde: Any, vin: str) -> bytes:
    """``opted_in`` encoded as byte 2: fastavro reads it (as true), ClickHouse's Avro reader refuses it."""
    good = serde.encode(TELEMETRY, _telemetry(vin, T0_MS))
    flipped = serde.encode(TELEMETRY, {**_telemetry(vin, T0_MS), "opted_in": False})
    (at,) = [i for i, (a, b) in enumerate(zip(good, flipped, strict=True)) if a != b]
    assert good[at] == 1
    return good[:at] + b"\x02" + good[at + 1 :]


def _wait(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.3)
    return check()


def test_refused_records_are_dead_lettered_and_nothing_stalls(settings: Settings) -> None:
    run = "rej" + uuid.uuid4().hex[:6]
    serde = serde_from_settings(settings)
    key = f"{run}-key"  # one key: one partition, in this order
    with Producer(settings) as producer:
        for i in range(150):  # 150 months in one batch
            producer.produce(
                TELEMETRY, serde.encode(TELEMETRY, _telemetry(f"{run}-m{i:03d}", T0_MS + i * MONTH_MS)), key
            )
        producer.produce(TELEMETRY, _bad_bool(serde, f"{run}-bad"), key)
        for i in range(5):
            producer.produce(TELEMETRY, serde.encode(TELEMETRY, _telemetry(f"{run}-ok{i}", T0_MS)), key)
        for i in range(20):
            producer.produce(REQUESTS, serde.encode(REQUESTS, _request(f"{run}-t{i:02d}")), f"{run}-t{i:02d}")

    client = get_client(settings)
    stop = threading.Event()
    config = SinkConfig(group_id=f"rej-{run}", flush_interval_s=1.0, backoff_initial_s=0.1, backoff_max_s=1.0)
    sink = KafkaSink(settings, config, [TELEMETRY, REQUESTS, DEADLETTER], stop)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            sink.run()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:

        def rows() -> list[tuple[Any, ...]]:
            return client.query(
                f"SELECT vin, _partition, _offset FROM telemetry WHERE vin LIKE '{run}-%' ORDER BY _offset"
            ).result_rows

        def dead_letters() -> list[tuple[Any, ...]]:
            return client.query(
                "SELECT source_partition, source_offset, error_kind, error FROM deadletter "
                f"WHERE source_topic = '{TELEMETRY}' AND key = '{key}' AND processor = 'carnival-sink'"
            ).result_rows

        def requests() -> int:
            return int(client.command(f"SELECT count() FROM task_requests WHERE task_id LIKE '{run}-%'"))

        assert _wait(lambda: len(rows()) >= 155 and len(dead_letters()) >= 1 and requests() >= 20, 90), (
            len(rows()),
            dead_letters(),
            requests(),
            errors,
        )
        time.sleep(1.5)  # a duplicate would land after the counts were reached
        landed = rows()
        assert len(landed) == 155 and len({r[0] for r in landed}) == 155
        assert f"{run}-bad" not in {r[0] for r in landed}
        months = client.command(f"SELECT uniqExact(toYYYYMM(ts)) FROM telemetry WHERE vin LIKE '{run}-m%'")
        assert int(months) == 150
        ((partition, offset, kind, error),) = dead_letters()
        first = landed[0][2]
        assert (partition, offset, kind) == (landed[0][1], first + 150, "SINK_REJECTED")
        assert "Invalid value for bool" in error
        assert requests() == 20
        assert not sink.paused and not errors
    finally:
        stop.set()
        thread.join(60)
