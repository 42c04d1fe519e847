"""The owner ledger, recomputed from the raw events: telemetry and node status reports go through Kafka
and the sink, ``sinks.ledger.recompute`` writes owner_ledger, and an independent Python computation
from the produced records must give the same rows. Recomputing is idempotent and composes over ranges."""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import pytest

from core.settings import Settings
from sinks import sample_data
from sinks.clickhouse import get_client
from sinks.config import SinkConfig
from sinks.kafka_sink import KafkaSink
from sinks.ledger import LedgerConfig, recompute

pytestmark = pytest.mark.integration

T0 = sample_data.T0
CONFIG = LedgerConfig(price_per_kwh_by_region={}, price_per_compute_hour=0.06)


def python_ledger(
    data: sample_data.Rows, config: LedgerConfig, start: datetime, end: datetime
) -> dict[tuple[str, str, str], dict[str, Any]]:
    """The ledger rules of sinks/ledger.py, written again plainly."""
    sessions: dict[str, list[dict[str, Any]]] = defaultdict(list)
    tel = [
        r
        for r in data["telemetry"]
        if r["charge_state"] != "UNKNOWN" and start - config.session_lookback <= r["ts"] < end
    ]
    prev: dict[str, bool] = {}
    for r in sorted(tel, key=lambda r: (r["vin"], r["ts"])):
        plugged = r["charge_state"] != "DISCONNECTED"
        if plugged and not prev.get(r["vin"], False):
            sessions[r["vin"]].append({"start": r["ts"], "end": None, "region": r["region"], "hw": r["hw"]})
        elif not plugged and prev.get(r["vin"]) and sessions[r["vin"]][-1]["end"] is None:
            sessions[r["vin"]][-1]["end"] = r["ts"]
        prev[r["vin"]] = plugged

    runs: dict[str, dict[str, Any]] = {}
    for s in data["task_status"]:
        if not start - config.max_run <= s["ts"] < end:
            continue
        run = runs.setdefault(s["assignment_id"], {"vin": s["vin"], "started": None, "ended": None})
        if s["status"] == "STARTED":
            run["started"] = min(filter(None, (run["started"], s["ts"])))
        else:
            run["ended"] = min(filter(None, (run["ended"], s["ts"])))

    out = {}
    for asg, run in runs.items():
        if (
            run["started"] is None
            or run["ended"] is None
            or run["ended"] < start
            or run["ended"] < run["started"]
        ):
            continue
        before = [s for s in sessions[run["vin"]] if s["start"] <= run["started"]]
        if not before:
            continue
        ses = before[-1]
        if ses["end"] is not None and run["started"] >= ses["end"]:
            continue
        began = max(run["started"], ses["start"])
        ended = run["ended"] if ses["end"] is None else min(run["ended"], ses["end"])
        seconds = max((ended - began) / timedelta(milliseconds=1), 0) / 1000
        kwh = seconds / 3600 * config.kw_for(ses["hw"])
        amount = kwh * config.price_for(ses["region"]) + seconds / 3600 * config.price_per_compute_hour
        session_id = f"{run['vin']}:{int(ses['start'].timestamp() * 1000)}"
        out[(run["vin"], session_id, asg)] = {"compute_seconds": seconds, "energy_kwh": kwh, "amount": amount}
    return out


def _ledger(client, prefix: str) -> dict[tuple[str, str, str], dict[str, Any]]:  # type: ignore[no-untyped-def]
    rows = client.query(
        "SELECT vin, charge_session_id, assignment_id, compute_seconds, energy_kwh, amount "
        f"FROM owner_ledger FINAL WHERE startsWith(vin, '{prefix}')"
    ).result_rows
    return {(r[0], r[1], r[2]): {"compute_seconds": r[3], "energy_kwh": r[4], "amount": r[5]} for r in rows}


def _same(a: dict[Any, dict[str, Any]], b: dict[Any, dict[str, Any]]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key]["compute_seconds"] == pytest.approx(b[key]["compute_seconds"], abs=1e-9), key
        for col in ("energy_kwh", "amount"):
            assert a[key][col] == pytest.approx(b[key][col], rel=1e-9, abs=1e-12), (key, col)


def test_ledger_recomputed_from_raw_events_matches_python(settings: Settings) -> None:
    prefix = "l" + uuid.uuid4().hex[:5] + "-"
    full = sample_data.generate(seed=23, prefix=prefix)
    data = {"telemetry": full["telemetry"], "task_status": full["task_status"]}
    sample_data.produce(settings, data)
    client = get_client(settings)
    stop = threading.Event()
    sink = KafkaSink(
        settings,
        SinkConfig(group_id=f"ledger-{prefix}", flush_interval_s=0.3),
        ["fleet.telemetry.v1", "tasks.status.v1"],
        stop,
    )
    thread = threading.Thread(target=sink.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            n_tel = int(client.command(f"SELECT count() FROM telemetry WHERE startsWith(vin, '{prefix}')"))
            # by task: a run at a datacenter site reports as node 'site:<site_id>'
            n_st = int(
                client.command(f"SELECT count() FROM task_status WHERE startsWith(task_id, '{prefix}')")
            )
            if n_tel >= len(data["telemetry"]) and n_st >= len(data["task_status"]):
                break
            time.sleep(0.3)
        assert (n_tel, n_st) == (len(data["telemetry"]), len(data["task_status"]))
    finally:
        stop.set()
        thread.join(60)

    start, end = T0, T0 + timedelta(hours=9)
    recompute(client, start, end, CONFIG)
    expected = python_ledger(data, CONFIG, start, end)
    assert len(expected) > 50
    _same(_ledger(client, prefix), expected)
    # Some runs were cut at the end of their charging session: the clipping is exercised.
    assert any(v["compute_seconds"] > 0 for v in expected.values())

    # Idempotent: again, and again in two halves, the same rows (replaced, never added).
    recompute(client, start, end, CONFIG)
    middle = T0 + timedelta(hours=3)
    recompute(client, start, middle, CONFIG)
    recompute(client, middle, end, CONFIG)
    _same(_ledger(client, prefix), expected)
    halves = {**python_ledger(data, CONFIG, start, middle), **python_ledger(data, CONFIG, middle, end)}
    _same(halves, expected)

    # Prices are configuration: a new price recomputes the amounts in place.
    dearer = LedgerConfig(price_per_kwh=0.6, price_per_compute_hour=0.06)
    recompute(client, start, end, dearer)
    _same(_ledger(client, prefix), python_ledger(data, dearer, start, end))
