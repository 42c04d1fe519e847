"""One poison record of each kind of issue 11, produced mid-stream with a raw confluent producer.

Values that are poison only in their content are valid Avro (``AvroSerde``), so they reach the
processors' logic rather than the decoder. Every record's position comes from its delivery report,
which is how the checks find its dead letter and how the recovery of each processor is timed.
"""

from __future__ import annotations

import base64
import random
import time
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Producer

from core.settings import Settings
from streams.kafka import producer_config
from streams.serde import SINGLE_OBJECT_MAGIC, serde_from_settings
from streams.topics import LIFECYCLE_TOPIC, POWER_EVENTS_TOPIC, REQUESTS_TOPIC, STATUS_TOPIC, TELEMETRY_TOPIC

YEAR_3000_MS = 32_503_680_000_000  # 3000-01-01T00:00:00Z
INT_MAX = 2_147_483_647
OVERSIZED_BYTES = 900_000  # under the broker's 1 MB message limit


@dataclass
class Poison:
    name: str
    topic: str
    key: str
    value: bytes | None
    readers: tuple[str, ...]  # components that consume the topic and must get past it
    dead_letter: bool = True  # must appear in deadletter.v1 with a reason
    note: str = ""
    wave: int = 1  # wave 2 comes alone, after the others' recovery was timed
    partition: int = -1
    offset: int = -1
    kafka_ts_ms: int = 0
    delivered_at: float = 0.0  # time.monotonic() of the delivery report
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _request(task_id: str, ts_ms: int, **over: Any) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "ts": ts_ms,
        "tenant": "chaos",
        "kind": "browse.checkout",
        "priority": 1,
        "est_duration_s": 300,
        "deadline": None,
        "min_hw": "HW4",
        "region": None,
        "min_soc_pct": None,
        **over,
    }


def _status(task_id: str, ts_ms: int, assignment_id: str, vin: str) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "assignment_id": assignment_id,
        "vin": vin,
        "ts": ts_ms,
        "status": "STARTED",
        "error": None,
    }


def _power(site: str, ts_us: int) -> dict[str, Any]:
    return {
        "site_id": site,
        "device_id": f"{site}-chaos-meter",
        "device_type": "GRID_METER",
        "ts": ts_us,
        "seq": 1,
        "event_type": "MEASUREMENT",
        "source_from": None,
        "source_to": None,
        "load_mw": 40.0,
        "frequency_hz": 60.0,
        "voltage_pu": 1.0,
        "battery_soc_pct": None,
        "gens_online": None,
        "detail": "chaos",
    }


def _telemetry(vin: str, ts_ms: int, region: str, soc: float, temp: float | None) -> dict[str, Any]:
    return {
        "vin": vin,
        "ts": ts_ms,
        "hw": "HW5",
        "region": region,
        "charge_state": "CHARGING",
        "gear": "P",
        "soc_pct": soc,
        "charge_limit_pct": 90.0,
        "minutes_to_full": 30.0,
        "scheduled_departure": None,
        "at_home": True,
        "opted_in": True,
        "compute_temp_c": temp,
        "software_version": "chaos",
    }


def _garbage(rng: random.Random, n: int = 64) -> bytes:
    data = bytes(rng.randrange(256) for _ in range(n))
    return b"\xff" + data  # neither single-object (C3 01) nor Confluent (00) framing


SCHEDULER, POWER, SINK, ROUTER = "scheduler", "power", "sink", "scheduler-router"
NAN_VIN = "CHAOS-NAN-0000001"


def build(settings: Settings, sim_now_ms: int, site: str, region: str, seed: int) -> list[Poison]:
    """The poison records, in the order they are produced; ``site`` is a real site of the run (its
    watermark is the one a far-future event would move), ``sim_now_ms`` the simulated time now."""
    serde = serde_from_settings(settings)
    rng = random.Random(seed)
    enc = serde.encode
    request_body = enc(REQUESTS_TOPIC, _request("chaos-fp", sim_now_ms))[10:]
    unknown_fp = SINGLE_OBJECT_MAGIC + bytes(rng.randrange(256) for _ in range(8)) + request_body
    huge = base64.b64encode(bytes(rng.randrange(256) for _ in range(OVERSIZED_BYTES * 3 // 4))).decode()
    lifecycle = {
        "task_id": "chaos-attempt",
        "ts": sim_now_ms,
        "state": "ASSIGNED",
        "vin": "CHAOS-ATTEMPT-VIN",
        "assignment_id": "chaos-attempt-a1",
        "reason": None,
        "tenant": "chaos",
        "kind": "browse.checkout",
        "priority": 1,
        "attempt": INT_MAX,
        "pool": region,  # a routed task: its statuses are matched against every attempt
    }
    return [
        Poison(
            "garbage bytes (telemetry)", TELEMETRY_TOPIC, "CHAOS-GARBAGE-VIN", _garbage(rng), (ROUTER, SINK)
        ),
        Poison("garbage bytes (power)", POWER_EVENTS_TOPIC, site, _garbage(rng), (POWER, SINK)),
        Poison("unknown schema fingerprint", REQUESTS_TOPIC, "chaos-fp", unknown_fp, (SCHEDULER, SINK)),
        Poison("tombstone fleet.telemetry.v1", TELEMETRY_TOPIC, "CHAOS-TOMB-VIN", None, (ROUTER, SINK)),
        Poison("tombstone power.events.v1", POWER_EVENTS_TOPIC, site, None, (POWER, SINK)),
        Poison(
            "NaN soc_pct/compute_temp_c telemetry",
            TELEMETRY_TOPIC,
            NAN_VIN,
            enc(TELEMETRY_TOPIC, _telemetry(NAN_VIN, sim_now_ms, region, float("nan"), float("nan"))),
            (ROUTER, SINK),
            dead_letter=False,
            note="'not reported' (no dead letter needed): the car must never be eligible nor assigned",
        ),
        Poison(
            "status for an unknown task",
            STATUS_TOPIC,
            "chaos-unknown-task",
            enc(STATUS_TOPIC, _status("chaos-unknown-task", sim_now_ms, "chaos-unknown-a", "CHAOS-NOCAR")),
            (SCHEDULER, SINK),
            note="held, then EXPIRED by event time",
        ),
        Poison(
            "oversized record (~900 KB)",
            REQUESTS_TOPIC,
            "chaos-oversized",
            enc(REQUESTS_TOPIC, _request("chaos-oversized", sim_now_ms, tenant=huge)),
            (SCHEDULER, SINK),
        ),
        Poison(
            "year-3000 tasks.requests.v1",
            REQUESTS_TOPIC,
            "chaos-future-req",
            enc(REQUESTS_TOPIC, _request("chaos-future-req", YEAR_3000_MS)),
            (SCHEDULER, SINK),
        ),
        Poison(
            "year-3000 tasks.status.v1",
            STATUS_TOPIC,
            "chaos-future-status",
            enc(STATUS_TOPIC, _status("chaos-future-status", YEAR_3000_MS, "chaos-fs-a", "CHAOS-NOCAR")),
            (SCHEDULER, SINK),
        ),
        Poison(
            "year-3000 power.events.v1",
            POWER_EVENTS_TOPIC,
            site,
            enc(POWER_EVENTS_TOPIC, _power(site, YEAR_3000_MS * 1000)),
            (POWER, SINK),
            wave=2,  # after the site's other poison records: a blinded site would hide their recovery
        ),
        Poison(
            "tasks.lifecycle.v1 attempt=2147483647",
            LIFECYCLE_TOPIC,
            "chaos-attempt",
            enc(LIFECYCLE_TOPIC, lifecycle),
            (SCHEDULER, SINK),
            wave=2,
        ),
        Poison(
            "status of the attempt=2^31-1 task",
            STATUS_TOPIC,
            "chaos-attempt",
            enc(
                STATUS_TOPIC, _status("chaos-attempt", sim_now_ms, "chaos-attempt-other", "CHAOS-ATTEMPT-VIN")
            ),
            (SCHEDULER, SINK),
            dead_letter=False,
            note="the record that makes the scheduler loop",
            wave=2,
        ),
    ]


def inject(settings: Settings, poisons: list[Poison], timeout_s: float = 60.0) -> None:
    """Produce every poison (in order, each flushed before the next) and record where it landed."""
    producer = Producer(producer_config(settings, **{"linger.ms": 0, "log_level": 0}))

    def report(p: Poison, err: Any, msg: Any) -> None:
        p.delivered_at = time.monotonic()
        if err is not None:
            p.error = str(err)
        else:
            p.partition, p.offset, p.kafka_ts_ms = msg.partition(), msg.offset(), msg.timestamp()[1]

    for p in poisons:
        producer.produce(p.topic, p.value, p.key, on_delivery=lambda err, msg, p=p: report(p, err, msg))
        producer.flush(timeout_s)
