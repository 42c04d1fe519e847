"""ClickHouse goes away while records flow: the sink pauses, retries with backoff, loses nothing and
catches up once ClickHouse is back. Also: undecodable records go to the dead-letter topic with their
source position, and the sink keeps going."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from carnival.stack.clickhouse_server import start_clickhouse, stop_clickhouse
from core.settings import Settings
from sinks.clickhouse import get_client, is_reachable, wait_until_reachable
from sinks.config import SinkConfig
from sinks.kafka_sink import KafkaSink
from streams.kafka import Producer
from streams.serde import serde_from_settings

pytestmark = pytest.mark.integration

TOPIC = "fleet.telemetry.v1"
T0_MS = 1_767_225_600_000


class SinkThread:
    def __init__(self, settings: Settings, group: str) -> None:
        self.stop = threading.Event()
        config = SinkConfig(group_id=group, flush_interval_s=0.3, backoff_initial_s=0.1, backoff_max_s=1.0)
        self.sink = KafkaSink(settings, config, [TOPIC, "deadletter.v1"], self.stop)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.sink.run()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def __enter__(self) -> SinkThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)


@pytest.fixture
def clickhouse_restored(settings: Settings) -> Iterator[Settings]:
    """Whatever happens in the test, the shared ClickHouse server is up again afterwards."""
    yield settings
    if not is_reachable(settings):
        stop_clickhouse(settings)  # clears a stale pid file, if any
        start_clickhouse(settings)
    wait_until_reachable(settings)


def _produce(settings: Settings, run: str, start: int, n: int) -> None:
    serde = serde_from_settings(settings)
    with Producer(settings) as producer:
        for i in range(start, start + n):
            vin = f"{run}-{i:06d}"
            rec = {
                "vin": vin,
                "ts": T0_MS + i,
                "hw": "HW4",
                "region": "outage-test",
                "charge_state": "CHARGING",
                "gear": "P",
                "opted_in": True,
            }
            producer.produce(TOPIC, serde.encode(TOPIC, rec), vin)


def _count(settings: Settings, run: str) -> tuple[int, int]:
    client = get_client(settings)
    try:
        n, distinct = client.query(
            f"SELECT count(), uniqExact(vin) FROM telemetry WHERE vin LIKE '{run}-%'"
        ).result_rows[0]
        return int(n), int(distinct)
    finally:
        client.close()


def _wait_for(settings: Settings, run: str, n: int, timeout: float) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while True:
        got = _count(settings, run)
        if got[0] >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.3)


def test_clickhouse_outage_pauses_retries_and_catches_up(clickhouse_restored: Settings) -> None:
    settings = clickhouse_restored
    run = "out" + uuid.uuid4().hex[:6]
    with SinkThread(settings, f"outage-{run}") as sink:
        _produce(settings, run, 0, 10_000)
        assert _wait_for(settings, run, 10_000, 30) == (10_000, 10_000)

        assert stop_clickhouse(settings)
        try:
            _produce(settings, run, 10_000, 20_000)  # flows while ClickHouse is down
            time.sleep(3)  # several failed inserts and backoffs
            assert sink.thread.is_alive() and sink.error is None
            assert sink.sink.paused
            from sinks import metrics

            retries = metrics.INSERT_RETRIES.labels(table="telemetry", reason="unavailable")._value.get()
            assert retries >= 2
        finally:
            start_clickhouse(settings)
        wait_until_reachable(settings)
        assert _wait_for(settings, run, 30_000, 60) == (30_000, 30_000)
        time.sleep(1)
        assert _count(settings, run) == (30_000, 30_000)
        assert not sink.sink.paused
    assert sink.error is None


def test_undecodable_records_are_dead_lettered_with_their_position(settings: Settings) -> None:
    run = "dl" + uuid.uuid4().hex[:6]
    serde = serde_from_settings(settings)
    good = {
        "vin": f"{run}-ok",
        "ts": T0_MS,
        "hw": "HW4",
        "region": "dl-test",
        "charge_state": "CHARGING",
        "gear": "P",
        "opted_in": True,
    }
    key = f"{run}-key"  # one key: one partition, in this order
    with Producer(settings) as producer:
        producer.produce(TOPIC, serde.encode(TOPIC, good), key)
        producer.produce(TOPIC, b"\xc3\x01" + b"\x00" * 8 + b"junk", key)  # unknown fingerprint
        producer.produce(TOPIC, serde.encode(TOPIC, good)[:-3], key)  # truncated body
        producer.produce(TOPIC, serde.encode(TOPIC, {**good, "vin": f"{run}-ok2"}), key)
    client = get_client(settings)
    with SinkThread(settings, f"dl-{run}"):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = client.query(
                "SELECT source_partition, source_offset, error_kind FROM deadletter "
                f"WHERE source_topic = '{TOPIC}' AND processor = 'carnival-sink' AND key = '{key}' "
                "ORDER BY source_offset"
            ).result_rows
            landed = client.query(
                f"SELECT vin, _partition, _offset FROM telemetry WHERE vin LIKE '{run}-%' ORDER BY _offset"
            ).result_rows
            if len(rows) >= 2 and len(landed) >= 2:
                break
            time.sleep(0.3)
    assert [r[0] for r in landed] == [f"{run}-ok", f"{run}-ok2"]
    partition, first = landed[0][1], landed[0][2]
    assert [(r[0], r[1]) for r in rows] == [(partition, first + 1), (partition, first + 2)]
    assert {r[2] for r in rows} <= {"UNKNOWN_FINGERPRINT", "DECODE"} and len(rows) == 2
    assert landed[1][2] == first + 3
