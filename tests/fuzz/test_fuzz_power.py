"""Fuzz of the power processor without a broker: random *valid but extreme* ``power.events.v1`` records
(huge, negative, NaN and infinite readings, times from year 1 to 9999, duplicates, sequence jumps and
restarts, reorderings, devices and sites that come and go) go through the path of the worker: Avro
encode and decode, the admission checks (key, future skew against the Kafka timestamp), the site
detectors (``run_batch``), ticks, the state written to the table and read back, and the records the
worker would publish.

Nothing may raise but the project's own errors (``SerializationError`` on decode), no event may break a
detector (PROCESSING), every rejected event has a reason, every output encodes as Avro, and every state
encodes and round-trips. ``CARNIVAL_FUZZ_EXAMPLES`` sets the number of examples (1000 by default), each
up to 4 batches of up to 40 records.
"""

from __future__ import annotations

import math
import os
import random
from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.power import Detector, PowerConfig
from processors.power.events import DEVICE_TYPES, EVENT_TYPES, SOURCES, Incident, LateEvent, SitePowerState
from processors.power.runtime import (
    DetectorCache,
    admission_error,
    decode_state,
    encode_state,
    route,
    run_batch,
)
from streams.event_time import DEFAULT_MAX_FUTURE_SKEW_S
from streams.exceptions import SerializationError
from streams.serde import AvroSerde

EXAMPLES = int(os.environ.get("CARNIVAL_FUZZ_EXAMPLES", "1000"))
SERDE = AvroSerde()
TOPIC = "power.events.v1"
T0 = 1_736_121_600_000_000  # 2025-01-06, where the simulator starts
MIN_US = int((datetime(1, 1, 2, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * 1_000_000
MAX_US = int(datetime(9999, 12, 30, tzinfo=UTC).timestamp()) * 1_000_000
INT64 = (-(2**63), 2**63 - 1)
CONFIG = PowerConfig(max_devices=16, max_buffered=64, lateness_ms=500.0)

SITES = ["dc-f1", "dc-f2"]
DEVICES = ["meter-1", "sts-1", "ats-1", "gen-1", "gen-2", "bat-1", "ctl-1"]

# Values are drawn by a seeded ``random.Random`` (hypothesis picks the seeds): hypothesis' own draws cost
# ~1 ms per record, far too slow for thousands of batches. Each list mixes the ordinary with the extreme.
DOUBLES: list[float | None] = [
    None, None, math.nan, math.inf, -math.inf, 0.0, -0.0, 5.0, 9.9, 57.0, 60.0, 0.05, 1.5, 100.0, 100.5,
    -3.0, 1e308, -1e308, 5e-324, 1e9,
]  # fmt: skip
TEXT = ["", " ", "é", "\x00", "x" * 300, "gen-1\n", "\U0001f50c"]
SOURCES_OR_NONE = [None, *sorted(SOURCES)]
DEVICE_TYPE_LIST, EVENT_TYPE_LIST = sorted(DEVICE_TYPES), sorted(EVENT_TYPES)


def _time(rng: random.Random) -> int:
    """Near the simulator's start (jitter, small steps), far past and future, the ends of Avro's range."""
    r = rng.random()
    if r < 0.8:
        return T0 + rng.randrange(-10_000_000, 600_000_000)
    if r < 0.9:
        return rng.randrange(MIN_US, MAX_US)
    return rng.choice([MIN_US, MAX_US, 0, -1, T0 + 3_600_000_000 * 24 * 365 * 975])


def _seq(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.85:
        return rng.randrange(0, 50)
    return rng.choice([INT64[0], INT64[1], -1, 0, rng.randrange(*INT64)])


def _record(rng: random.Random) -> dict[str, Any]:
    return {
        "site_id": rng.choice(SITES),
        "device_id": rng.choice(DEVICES) if rng.random() < 0.9 else rng.choice(TEXT) + str(rng.randrange(99)),
        "device_type": rng.choice(DEVICE_TYPE_LIST),
        "ts": _time(rng),
        "seq": _seq(rng),
        "event_type": rng.choice(EVENT_TYPE_LIST),
        "source_from": rng.choice(SOURCES_OR_NONE),
        "source_to": rng.choice(SOURCES_OR_NONE),
        "load_mw": rng.choice(DOUBLES),
        "frequency_hz": rng.choice(DOUBLES),
        "voltage_pu": rng.choice(DOUBLES),
        "battery_soc_pct": rng.choice(DOUBLES),
        "gens_online": rng.choice([None, None, 0, 2, -1, 2**31 - 1, -(2**31)]),
        "detail": rng.choice([None, None, "breaker trip", "x" * 5000, *TEXT]),
    }


def _batch(rng: random.Random, size: int) -> list[tuple[dict[str, Any], int, str]]:
    """(record, Kafka timestamp µs, key): fresh records, duplicates and reorderings of earlier ones."""
    out: list[tuple[dict[str, Any], int, str]] = []
    for _ in range(size):
        r = rng.random()
        if out and r < 0.1:  # redelivered as it was
            out.append(rng.choice(out))
            continue
        record = _record(rng)
        if out and r < 0.5:  # the next event of an earlier device, a little earlier or later
            prev = rng.choice(out)[0]
            record.update(device_id=prev["device_id"], site_id=prev["site_id"])
            record["seq"] = min(prev["seq"] + rng.choice([1, 1, 1, 2, 1000, -5]), INT64[1])
            record["ts"] = min(prev["ts"] + rng.randrange(-2_000_000, 2_000_000), MAX_US)
        produced = rng.choice([record["ts"], record["ts"], T0 + rng.randrange(10**12), 0])
        key = record["site_id"] if rng.random() < 0.95 else "dc-other"
        out.append((record, produced, key))
    return out


def _decoded(record: dict[str, Any]) -> dict[str, Any] | str:
    try:
        return SERDE.decode(TOPIC, SERDE.encode(TOPIC, record))
    except SerializationError as exc:  # the project's own: a dead letter with its reason
        assert str(exc)
        return str(exc)


@settings(
    max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip
@given(st.integers(0, 2**64), st.integers(1, 4), st.integers(1, 40))
def test_extreme_records_never_break_the_power_processor(seed: int, batches: int, size: int) -> None:
    rng = random.Random(seed)
    stored: dict[str, bytes] = {}
    cache = DetectorCache(CONFIG, stored.get, lambda: T0, max_sites=1)
    for _ in range(batches):
        batch, now = _batch(rng, size), _time(rng)
        items = []
        for n, (raw, produced_us, key) in enumerate(batch):
            record = _decoded(raw)
            if isinstance(record, str):
                continue
            refused = admission_error(record, key, produced_us // 1000, DEFAULT_MAX_FUTURE_SKEW_S)
            if refused is not None:
                assert refused[0] in ("VALIDATION", "FUTURE_TIMESTAMP") and refused[1]
                continue
            items.append((record["site_id"], record, min(produced_us, T0) if produced_us else T0, n))
        run = run_batch(cache, items)
        assert run.failed == 0, run.dead
        assert all(kind in ("VALIDATION", "LATE") and reason for _, kind, reason in run.dead)
        for _, emission in run.emissions:
            SERDE.encode(emission.topic, emission.record)
        for site_id in run.touched:  # what the checkpoint writes, and what a restart reads
            det = cache.get(site_id)
            stored[site_id] = encode_state(det)
            again = decode_state(stored[site_id], CONFIG)
            assert orjson.dumps(again.to_dict()) == stored[site_id]
        cache.held.clear()
        for _, det in cache.items():
            outputs = det.on_tick(now)
            emissions, late = route(outputs)
            assert not late
            for e in emissions:
                SERDE.encode(e.topic, e.record)
        assert len(cache) <= 2  # max_sites=1, plus the site of the batch being run


@settings(max_examples=max(50, EXAMPLES // 4), derandomize=True, deadline=None, database=None)
@given(st.integers(0, 2**64), st.integers(1, 200))
def test_the_pure_detector_takes_any_decoded_event_or_says_why_not(seed: int, size: int) -> None:
    rng = random.Random(seed)
    det = Detector("dc-f1", CONFIG)
    for r, _, _ in _batch(rng, size):
        record = _decoded(r)
        if isinstance(record, str):
            continue
        try:
            outputs = det.on_event(record)
        except ValueError as exc:  # InvalidPowerEvent, a ValueError: the caller dead-letters it
            assert type(exc).__name__ == "InvalidPowerEvent" and str(exc)
            continue
        for out in outputs:
            if isinstance(out, LateEvent):
                assert out.reason
            else:
                SERDE.encode(_topic(out), out.to_record())
        assert len(det.buffer) <= CONFIG.max_buffered and len(det.buffer.devices) <= CONFIG.max_devices
    for out in det.flush():
        if not isinstance(out, LateEvent):
            SERDE.encode(_topic(out), out.to_record())
    orjson.dumps(det.to_dict())


def _topic(out: Incident | SitePowerState) -> str:
    return "sites.power_state.v1" if isinstance(out, SitePowerState) else "power.incidents.v1"
