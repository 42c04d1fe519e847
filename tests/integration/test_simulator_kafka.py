"""The simulator through the real broker: reproducible runs, the emulator runtime on ASSIGN/REVOKE, and a
datacenter site's controller (capacity reports, an assignment to ``site:<site_id>``)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from core.settings import Settings
from simulator import SimConfig, World
from simulator.config import HOUR_MS, SITE_COMPUTE_PROFILES
from simulator.feed import AssignmentFeed
from simulator.runner import run_simulation
from simulator.sinks import KafkaSink
from streams.kafka import Producer, make_consumer
from streams.records import to_json_record
from streams.serde import serde_from_settings
from streams.sites import site_vin

pytestmark = pytest.mark.integration

TOPICS = (
    "fleet.telemetry.v1",
    "tasks.requests.v1",
    "tasks.status.v1",
    "emulator.actions.v1",
    "power.events.v1",
)


def end_offsets(settings: Settings, topics: tuple[str, ...]) -> list[TopicPartition]:
    consumer = make_consumer(settings)
    try:
        out = []
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=30).topics[topic]
            for p in sorted(meta.partitions):
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
                out.append(TopicPartition(topic, p, high))
        return out
    finally:
        consumer.close()


def read_from(
    settings: Settings,
    start: list[TopicPartition],
    until: list[TopicPartition] | None = None,
    idle_s: float = 3.0,
    max_s: float = 60.0,
) -> list[tuple[str, dict[str, Any]]]:
    """Decoded records from ``start`` offsets to ``until`` (or until ``idle_s`` without data)."""
    serde = serde_from_settings(settings)
    stop = {(tp.topic, tp.partition): tp.offset for tp in until} if until else None
    consumer = make_consumer(settings)
    consumer.assign(start)
    out: list[tuple[str, dict[str, Any]]] = []
    remaining = (
        {k for k, v in stop.items() if v > next(s.offset for s in start if (s.topic, s.partition) == k)}
        if stop
        else set()
    )
    deadline, last = time.monotonic() + max_s, time.monotonic()
    try:
        while time.monotonic() < deadline:
            if stop is not None and not remaining:
                break
            if stop is None and time.monotonic() - last > idle_s:
                break
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.error():
                    continue
                last = time.monotonic()
                key = (msg.topic(), msg.partition())
                if stop is not None and msg.offset() >= stop[key]:
                    continue
                out.append((msg.topic(), serde.decode(msg.topic(), msg.value())))
                if stop is not None and msg.offset() + 1 >= stop[key]:
                    remaining.discard(key)
    finally:
        consumer.close()
    return out


def produce_run(settings: Settings, seed: int) -> dict[str, int]:
    config = SimConfig(
        seed=seed,
        cars=15,
        sites=1,
        duration_ms=5 * HOUR_MS,
        self_assign=True,
        tasks_per_hour=60,
        fault_share=1.0,
        start_ms=1736186400000,
    )  # 18:00 UTC: a peak
    producer = Producer(settings)
    sink = KafkaSink(producer, serde_from_settings(settings))
    world = World(config, sink)
    run_simulation(world, speed=0)
    assert producer.flush(60) == 0 and producer.stats.failed == 0
    return dict(sink.counts)


def test_a_seeded_run_produced_twice_gives_the_same_events(settings: Settings) -> None:
    before = end_offsets(settings, TOPICS)
    counts = produce_run(settings, seed=424242)
    middle = end_offsets(settings, TOPICS)
    produce_run(settings, seed=424242)
    after = end_offsets(settings, TOPICS)
    first = read_from(settings, before, middle)
    second = read_from(settings, middle, after)
    assert len(first) == sum(counts.values()) > 1000
    assert {t for t, _ in first} == set(TOPICS)

    def canon(records: list[tuple[str, dict[str, Any]]]) -> list[str]:
        return sorted(f"{t}|{sorted(to_json_record(t, r).items())}" for t, r in records)

    assert canon(first) == canon(second)


def test_emulator_runtime_reacts_to_assign_and_revoke(settings: Settings) -> None:
    config = SimConfig(
        seed=77,
        cars=30,
        sites=0,
        tasks_per_hour=0,
        start_ms=1736154000000,
        duration_ms=2 * HOUR_MS,
        faulty_car_share=0.0,
    )  # 09:00 UTC: night in North America
    producer = Producer(settings)
    serde = serde_from_settings(settings)
    world = World(config, KafkaSink(producer, serde))
    world.run_until(config.start_ms)  # warm-up, so we can pick idle cars
    now = world.now
    idle = [
        c
        for c in world.cars
        if c.available(now) is None and (c.next_departure(now) or 10**15) > now + 2 * HOUR_MS
    ]
    assert len(idle) >= 2
    car_a, car_b = idle[0].spec.vin, idle[1].spec.vin
    suffix = f"{time.time_ns()}"
    task_a, task_b = f"task-a-{suffix}", f"task-b-{suffix}"
    world.task_durations[task_a] = 120.0  # 2 s of wall time at speed 60
    world.task_durations[task_b] = 3600.0

    watched = end_offsets(settings, ("tasks.status.v1", "emulator.actions.v1"))
    feed = AssignmentFeed(settings)
    stop = threading.Event()
    thread = threading.Thread(
        target=run_simulation, args=(world, 60.0, feed), kwargs={"stop": stop}, daemon=True
    )
    thread.start()

    def command(kind: str, aid: str, task: str, vin: str) -> None:
        rec = {
            "assignment_id": aid,
            "command": kind,
            "task_id": task,
            "vin": vin,
            "ts": int(time.time() * 1000),
            "reason": None,
        }
        producer.produce("tasks.assignments.v1", serde.encode("tasks.assignments.v1", rec), vin)
        producer.flush(10)

    def statuses() -> list[dict[str, Any]]:
        return [
            r
            for t, r in read_from(settings, watched, idle_s=1.0, max_s=10)
            if t == "tasks.status.v1" and r["task_id"] in (task_a, task_b)
        ]

    try:
        command("ASSIGN", f"as-a-{suffix}", task_a, car_a)
        command("ASSIGN", f"as-b-{suffix}", task_b, car_b)
        deadline = time.monotonic() + 60
        seen: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            seen = statuses()
            if any(r["task_id"] == task_b and r["status"] == "STARTED" for r in seen):
                break
            time.sleep(0.5)
        command("REVOKE", f"as-b-{suffix}", task_b, car_b)
        while time.monotonic() < deadline:
            seen = statuses()
            if any(r["task_id"] == task_a and r["status"] != "STARTED" for r in seen):
                break
            time.sleep(0.5)
        time.sleep(2.0)  # let the revoked session close
    finally:
        stop.set()
        thread.join(30)
        feed.close()
    records = read_from(settings, watched, idle_s=2.0)
    status_a = [r["status"] for t, r in records if t == "tasks.status.v1" and r["task_id"] == task_a]
    status_b = [r["status"] for t, r in records if t == "tasks.status.v1" and r["task_id"] == task_b]
    assert status_a[0] == "STARTED" and status_a[-1] in ("COMPLETED", "FAILED") and len(status_a) == 2
    assert status_b == ["STARTED"]
    actions_a = sorted(
        (r for t, r in records if t == "emulator.actions.v1" and r["task_id"] == task_a),
        key=lambda r: r["seq"],
    )
    actions_b = sorted(
        (r for t, r in records if t == "emulator.actions.v1" and r["task_id"] == task_b),
        key=lambda r: r["seq"],
    )
    assert actions_a and [r["seq"] for r in actions_a] == list(range(1, len(actions_a) + 1))
    assert actions_a[-1]["action"] in ("DONE", "FAIL") and all(r["vin"] == car_a for r in actions_a)
    assert actions_b and actions_b[-1]["action"] == "FAIL" and actions_b[-1]["error"] == "revoked"


def test_a_site_reports_capacity_and_completes_an_assignment_through_the_broker(settings: Settings) -> None:
    """Sites as compute (issue 16): capacity reports on sites.capacity.v1, and an ASSIGN sent to
    ``site:<site_id>`` on tasks.assignments.v1 is run by the site's controller (STARTED, then COMPLETED
    or FAILED, with that node id as vin), while a second one beyond the site's slots is refused."""
    compute = replace(SITE_COMPUTE_PROFILES["small"], slots=(1, 1), long_failover_share=0.0)
    config = SimConfig(
        seed=78,
        cars=0,
        sites=1,
        tasks_per_hour=0,
        start_ms=1736154000000,
        duration_ms=2 * HOUR_MS,
        site_compute=compute,
    )
    producer = Producer(settings)
    serde = serde_from_settings(settings)
    world = World(config, KafkaSink(producer, serde))
    world.run_until(config.start_ms)
    site = world.sites[0]
    node = site_vin(site.site_id)
    suffix = f"{time.time_ns()}"
    task_a, task_b = f"site-task-a-{suffix}", f"site-task-b-{suffix}"
    world.task_durations[task_a] = 120.0  # 2 s of wall time at speed 60
    world.task_durations[task_b] = 120.0

    watched = end_offsets(settings, ("tasks.status.v1", "emulator.actions.v1", "sites.capacity.v1"))
    feed = AssignmentFeed(settings)
    stop = threading.Event()
    thread = threading.Thread(
        target=run_simulation, args=(world, 60.0, feed), kwargs={"stop": stop}, daemon=True
    )
    thread.start()

    def assign(aid: str, task: str) -> None:
        rec = {
            "assignment_id": aid,
            "command": "ASSIGN",
            "task_id": task,
            "vin": node,
            "ts": int(time.time() * 1000),
            "reason": None,
            "site_id": site.site_id,
        }
        producer.produce("tasks.assignments.v1", serde.encode("tasks.assignments.v1", rec), node)
        producer.flush(10)

    def site_statuses() -> list[dict[str, Any]]:
        return [
            r
            for t, r in read_from(settings, watched, idle_s=1.0, max_s=10)
            if t == "tasks.status.v1" and r["task_id"] in (task_a, task_b)
        ]

    try:
        assign(f"as-site-a-{suffix}", task_a)
        time.sleep(0.5)
        assign(f"as-site-b-{suffix}", task_b)  # the only slot is taken
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(r["task_id"] == task_a and r["status"] != "STARTED" for r in site_statuses()):
                break
            time.sleep(0.5)
    finally:
        stop.set()
        thread.join(30)
        feed.close()
    records = read_from(settings, watched, idle_s=2.0)
    status_a = [r for t, r in records if t == "tasks.status.v1" and r["task_id"] == task_a]
    status_b = [r for t, r in records if t == "tasks.status.v1" and r["task_id"] == task_b]
    assert [r["status"] for r in status_a][0] == "STARTED" and len(status_a) == 2
    assert status_a[-1]["status"] in ("COMPLETED", "FAILED") and {r["vin"] for r in status_a} == {node}
    assert [(r["status"], r["error"]) for r in status_b] == [("FAILED", "node_unavailable: site_full")]
    actions = [r for t, r in records if t == "emulator.actions.v1" and r["task_id"] == task_a]
    assert actions and {r["vin"] for r in actions} == {node}
    reports = [r for t, r in records if t == "sites.capacity.v1" and r["site_id"] == site.site_id]
    assert len(reports) >= 2 and {r["slots_total"] for r in reports} == {1}
    assert {r["slots_free"] for r in reports} == {0, 1}  # the slot was taken, then freed
    assert all(r["region"] == site.region and r["power_budget_mw"] > 0 for r in reports)


def test_carnival_simulate_command(run_cli: Any, tmp_path: Any) -> None:
    truth = tmp_path / "truth.jsonl"
    result = run_cli(
        "simulate",
        "--duration",
        "2h",
        "--cars",
        "10",
        "--sites",
        "1",
        "--as-fast-as-possible",
        "--no-emulator",
        "--truth",
        str(truth),
        "--seed",
        "9",
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert b"fleet.telemetry.v1" in result.stderr and b"simulate_done" in result.stderr
    assert truth.stat().st_size > 0
    result = run_cli("simulate", "--rate", "5000", "--duration", "2s", "--cars", "200", "--no-truth")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert b"achieved" in result.stderr
