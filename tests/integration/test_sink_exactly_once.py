"""The sink lands every Kafka record exactly once although it is SIGKILLed again and again mid-stream.

200k records (telemetry + emulator actions, unique ids) are produced while the sink runs as a real
subprocess (``python -m sinks.worker``) that is SIGKILLed repeatedly, each time soon after it landed
rows, and restarted; afterwards the rows in ClickHouse are compared with the delivery reports: same
ids, same (partition, offset), once.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer as RawProducer

from core.settings import Settings
from sinks.clickhouse import get_client
from streams.kafka import producer_config
from streams.serde import serde_from_settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TELEMETRY, ACTIONS = "fleet.telemetry.v1", "emulator.actions.v1"
N_TELEMETRY, N_ACTIONS = 150_000, 50_000
KILLS = 5
T0_MS = 1_767_225_600_000  # 2026-01-01


def _telemetry(run: str, i: int) -> dict[str, object]:
    return {
        "vin": f"{run}-T{i:06d}",
        "ts": T0_MS + i,
        "hw": "HW4",
        "region": "eo-test",
        "charge_state": "CHARGING",
        "gear": "P",
        "soc_pct": 50.0,
        "opted_in": True,
    }


def _action(run: str, i: int) -> dict[str, object]:
    return {
        "session_id": f"{run}-S{i // 50:05d}",
        "task_id": f"{run}-task",
        "vin": f"{run}-car",
        "ts": T0_MS + i,
        "seq": i % 50,
        "action": "CLICK",
        "x": i % 1000,
        "y": 7,
        "ok": True,
    }


class Feed:
    """Produces the records from a thread and keeps every delivery report: id -> (partition, offset)."""

    def __init__(self, settings: Settings, run: str) -> None:
        self.run = run
        self.serde = serde_from_settings(settings)
        self.producer = RawProducer(producer_config(settings))
        self.delivered: dict[str, dict[str, tuple[int, int]]] = {TELEMETRY: {}, ACTIONS: {}}
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._produce, daemon=True)

    def _report(self, rid: str, err, msg) -> None:  # type: ignore[no-untyped-def]
        if err is not None:
            self.errors.append(str(err))
        else:
            self.delivered[msg.topic()][rid] = (msg.partition(), msg.offset())

    def _produce(self) -> None:
        # ~20k records/s: the stream is still flowing during the first several kills.
        for i in range(N_TELEMETRY + N_ACTIONS):
            if i < N_TELEMETRY:
                topic, rec, rid = TELEMETRY, _telemetry(self.run, i), f"{self.run}-T{i:06d}"
                key = rec["vin"]
            else:
                j = i - N_TELEMETRY
                topic, rec, rid = ACTIONS, _action(self.run, j), f"{self.run}-A{j:06d}"
                key = rec["session_id"]
            while True:
                try:
                    self.producer.produce(
                        topic,
                        self.serde.encode(topic, rec),
                        key,
                        on_delivery=functools.partial(self._report, rid),
                    )
                    break
                except BufferError:
                    self.producer.poll(0.05)
            if i % 2000 == 1999:
                self.producer.poll(0)
                time.sleep(0.08)
        self.producer.flush(60)


def _start_sink(env: dict[str, str], log: Path, run: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sinks.worker",
                TELEMETRY,
                ACTIONS,
                "--group",
                f"eo-{run}",
                "--instance-id",
                "eo-worker-1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )


def _landed(client, run: str) -> int:  # type: ignore[no-untyped-def]
    return int(client.command(f"SELECT count() FROM telemetry WHERE vin LIKE '{run}-T%'")) + int(
        client.command(f"SELECT count() FROM actions WHERE session_id LIKE '{run}-S%'")
    )


def test_sigkill_repeatedly_every_record_exactly_once(
    settings: Settings, stack_env: dict[str, str], tmp_path: Path
) -> None:
    run = "eo" + uuid.uuid4().hex[:6]
    env = {
        **os.environ,
        **stack_env,
        "CARNIVAL_SINK_FLUSH_INTERVAL_S": "0.5",
        "CARNIVAL_SINK_BATCH_ROWS": "10000",
        "PYTHONPATH": str(ROOT),
    }
    log = tmp_path / "sink.log"
    client = get_client(settings)
    rng = random.Random(6)
    feed = Feed(settings, run)
    started = time.monotonic()
    proc = _start_sink(env, log, run)
    feed.thread.start()
    landed_at_kill = []
    try:
        for _ in range(KILLS):
            # Kill only once this incarnation has landed something (a slow start on a busy machine would
            # otherwise kill it before its first insert), then at a random moment shortly after.
            before = landed_at_kill[-1] if landed_at_kill else 0
            progress_deadline = time.monotonic() + 60
            while _landed(client, run) <= before and time.monotonic() < progress_deadline:
                assert proc.poll() is None, log.read_text()[-3000:]
                time.sleep(0.2)
            time.sleep(rng.uniform(0.2, 1.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            landed_at_kill.append(_landed(client, run))
            proc = _start_sink(env, log, run)
        feed.thread.join(60)
        assert not feed.thread.is_alive() and not feed.errors
        total = N_TELEMETRY + N_ACTIONS
        deadline = time.monotonic() + 60
        while _landed(client, run) < total and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(1.5)  # a duplicate would land after the count was reached: give it the chance
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    elapsed = time.monotonic() - started

    # Killed mid-stream, not before the first or after the last insert.
    assert any(0 < n < total for n in landed_at_kill), landed_at_kill
    assert len(feed.delivered[TELEMETRY]) == N_TELEMETRY and len(feed.delivered[ACTIONS]) == N_ACTIONS

    rows = client.query(
        f"SELECT vin, _partition, _offset FROM telemetry WHERE vin LIKE '{run}-T%'"
    ).result_rows
    assert len(rows) == N_TELEMETRY, f"{len(rows) - N_TELEMETRY:+d} telemetry rows; kills at {landed_at_kill}"
    assert {r[0]: (r[1], r[2]) for r in rows} == feed.delivered[TELEMETRY]

    rows = client.query(
        f"SELECT session_id, seq, _partition, _offset FROM actions WHERE session_id LIKE '{run}-S%'"
    ).result_rows
    assert len(rows) == N_ACTIONS, f"{len(rows) - N_ACTIONS:+d} action rows; kills at {landed_at_kill}"
    got = {f"{run}-A{int(r[0].rsplit('S', 1)[1]) * 50 + r[1]:06d}": (r[2], r[3]) for r in rows}
    assert got == feed.delivered[ACTIONS]
    print(
        f"exactly-once: {total} records, {KILLS} SIGKILLs (landed at each: {landed_at_kill}), {elapsed:.1f}s"
    )
