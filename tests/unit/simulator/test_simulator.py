"""Unit tests of the simulator's pure generators and the world, without Kafka."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from simulator import SimConfig, World, charging
from simulator.avro_fast import FastEncoder
from simulator.car import ODD_CHARGE_STATES
from simulator.cli import simulate
from simulator.config import DAY_MS, HOUR_MS
from simulator.emulator import Session
from simulator.options import parse_duration_ms
from simulator.power import FAULT_KINDS, failover_script
from simulator.rng import rng_for
from simulator.sinks import CHARGE_STATES, KafkaSink, MemorySink
from simulator.truth import TruthList
from streams.records import parse_json_record
from streams.serde import AvroSerde


def run_world(**overrides: Any) -> tuple[World, MemorySink, TruthList]:
    config = SimConfig(
        **{"cars": 30, "sites": 1, "duration_ms": 3 * HOUR_MS, "self_assign": True, **overrides}
    )
    sink, truth = MemorySink(), TruthList()
    world = World(config, sink, truth)
    world.run()
    return world, sink, truth


def test_same_seed_same_events_other_seed_other_events() -> None:
    _, a, ta = run_world(seed=7)
    _, b, tb = run_world(seed=7)
    _, c, _ = run_world(seed=8)
    assert len(a.records) > 1000
    assert a.records == b.records
    assert ta.items == tb.items
    assert a.records != c.records
    assert {r["vin"] for t, _, r in a.records if t == "fleet.telemetry.v1"}.isdisjoint(
        {r["vin"] for t, _, r in c.records if t == "fleet.telemetry.v1"}
    )


def test_every_record_validates_against_its_schema() -> None:
    world, sink, _ = run_world(cars=15, sites=3, duration_ms=26 * HOUR_MS, fault_share=1.0, tasks_per_hour=40)
    serde = AvroSerde()
    topics = Counter(t for t, _, _ in sink.records)
    assert set(topics) == {
        "fleet.telemetry.v1",
        "tasks.requests.v1",
        "tasks.status.v1",
        "emulator.actions.v1",
        "power.events.v1",
    }
    odd = 0
    for topic, key, record in sink.records:
        if topic == "fleet.telemetry.v1" and record["charge_state"] in ODD_CHARGE_STATES:
            odd += 1
            with pytest.raises(ValueError):
                parse_json_record(topic, orjson.loads(orjson.dumps(record)))
            continue
        parsed = parse_json_record(topic, orjson.loads(orjson.dumps(record)))
        serde.decode(topic, serde.encode(topic, parsed))
        assert key == str(
            record[
                {
                    "fleet.telemetry.v1": "vin",
                    "tasks.requests.v1": "task_id",
                    "tasks.status.v1": "task_id",
                    "emulator.actions.v1": "session_id",
                    "power.events.v1": "site_id",
                }[topic]
            ]
        )
    assert odd == world.counters["telemetry_out_of_enum"] > 0


def test_fast_encoder_is_byte_identical_to_the_project_serde() -> None:
    _, sink, _ = run_world(cars=40, sites=2, duration_ms=20 * HOUR_MS, fault_share=1.0, tasks_per_hour=40)
    serde = AvroSerde()
    fast = FastEncoder(serde)
    n = 0
    for topic, _, record in sink.records:
        if topic == "fleet.telemetry.v1" and record["charge_state"] not in CHARGE_STATES:
            continue
        assert fast.encode(topic, record) == serde.encode(topic, record), (topic, record)
        n += 1
    assert n > 10_000


def test_kafka_sink_maps_out_of_enum_charge_state_to_unknown() -> None:
    class Capture:
        def __init__(self) -> None:
            self.sent: list[tuple[str, bytes, str]] = []

        def produce(self, topic: str, value: bytes, key: str) -> None:
            self.sent.append((topic, value, key))

    producer, serde = Capture(), AvroSerde()
    sink = KafkaSink(producer, serde, topics=["fleet.telemetry.v1"])
    rec = {
        "vin": "5YJ3E1EA7KF000001",
        "ts": 1736121600000,
        "hw": "HW4",
        "region": "us-west",
        "charge_state": "FAST_CHARGING",
        "gear": "P",
        "opted_in": True,
    }
    sink.write("fleet.telemetry.v1", rec["vin"], rec)
    sink.write("tasks.requests.v1", "x", {})  # filtered out by topics
    assert sink.mapped_unknown == 1 and len(producer.sent) == 1
    assert serde.decode("fleet.telemetry.v1", producer.sent[0][1])["charge_state"] == "UNKNOWN"
    assert rec["charge_state"] == "FAST_CHARGING"  # the caller's record is not modified


# -- cars ------------------------------------------------------------------------------------------
def test_charging_curve_tapers_above_80_and_is_consistent() -> None:
    cap, kw = 75.0, 11.5
    below = charging.hours_to(40, 60, kw, cap)
    above = charging.hours_to(80, 100, kw, cap)
    assert above > 3 * below
    for start, target in ((10, 80), (50, 90), (79, 99.5), (85, 100)):
        h = charging.hours_to(start, target, kw, cap)
        assert charging.soc_after(start, target, kw, cap, h) == pytest.approx(target, abs=1e-6)
        assert charging.soc_after(start, target, kw, cap, h * 0.5) < target
    assert charging.soc_after(50, 80, kw, cap, 100) == 80
    assert charging.power_at(90, kw) == pytest.approx(kw / 2)


@pytest.fixture(scope="module")
def week() -> tuple[World, dict[tuple[int, bool], list[float]]]:
    """300 cars for a simulated week, habits and charging only; idle share sampled every hour."""
    config = SimConfig(cars=300, sites=0, tasks_per_hour=0, telemetry=False, duration_ms=7 * DAY_MS, seed=11)
    world = World(config)
    shares: dict[tuple[int, bool], list[float]] = {}
    t = config.start_ms
    while t < config.end_ms:
        world.run_until(t)
        counts: dict[tuple[int, bool], list[int]] = {}
        for car in world.cars:
            local = t + car.local_offset_ms
            key = (int(local % DAY_MS // HOUR_MS), (local // DAY_MS + 3) % 7 < 5)
            c = counts.setdefault(key, [0, 0])
            c[0] += car.is_idle(t)
            c[1] += 1
        for key, (idle, n) in counts.items():
            shares.setdefault(key, []).append(idle / n)
        t += HOUR_MS
    return world, shares


def test_idle_share_by_hour_is_in_range_and_higher_at_night(week: Any) -> None:
    world, shares = week
    config = world.config

    def mean(hours: range, weekday: bool) -> float:
        return statistics.mean(v for h in hours for v in shares.get((h, weekday), []))

    night, midday = mean(range(1, 5), True), mean(range(10, 15), True)
    lo, hi = config.expected_idle_night
    assert lo <= night <= hi
    lo, hi = config.expected_idle_workday_midday
    assert lo <= midday <= hi
    assert night > midday + 0.08


def test_charging_sessions_have_realistic_lengths(week: Any) -> None:
    world, _ = week
    hours = [(end - start) / HOUR_MS for start, end, _ in world.sessions_log]
    assert len(hours) > 300 * 7 * 0.4
    lo, hi = world.config.expected_session_hours_median
    assert lo <= statistics.median(hours) <= hi
    home = [(e - s) / HOUR_MS for s, e, loc in world.sessions_log if loc == "HOME"]
    fast = [(e - s) / HOUR_MS for s, e, loc in world.sessions_log if loc == "OTHER"]
    assert statistics.median(home) > 6
    assert not fast or statistics.median(fast) < 6


def test_telemetry_is_imperfect_like_the_real_thing() -> None:
    world, sink, truth = run_world(cars=80, sites=0, duration_ms=12 * HOUR_MS, tasks_per_hour=0)
    tel = [r for t, _, r in sink.records if t == "fleet.telemetry.v1"]
    assert world.counters["telemetry_duplicated"] > 0 and world.counters["telemetry_delayed"] > 0
    assert any(r["charge_state"] == "UNKNOWN" and r["soc_pct"] is None for r in tel)  # falling asleep
    assert (
        any(a["ts"] > b["ts"] for a, b in zip(tel, tel[1:], strict=False) if a["vin"] == b["vin"])
        or world.counters["telemetry_delayed"] > 0
    )
    assert {r["gear"] for r in tel} >= {"P", "D"}
    assert {r["charge_state"] for r in tel} >= {"DISCONNECTED", "CHARGING", "COMPLETE"}
    per_vin: dict[str, list[int]] = {}
    for r in sorted(tel, key=lambda r: r["ts"]):
        per_vin.setdefault(r["vin"], []).append(r["ts"])
    gaps = [b - a for ts in per_vin.values() for a, b in zip(ts, ts[1:], strict=False) if b > a]
    assert 9_000 <= statistics.median(gaps) <= 31_000
    departures = [r for r in truth.items if r["type"] == "charge_session"]
    assert departures and all(r["unplug"] >= r["plug_in"] for r in departures)


# -- tasks -----------------------------------------------------------------------------------------
def test_task_arrivals_follow_the_daily_pattern() -> None:
    from simulator.tasks import HOURLY_WEIGHT_UTC, TaskSource

    config = SimConfig(tasks_per_hour=400, duration_ms=7 * DAY_MS)
    source = TaskSource(config)
    per_hour: Counter[int] = Counter()
    weekday_total = weekend_total = 0
    t = config.start_ms
    while True:
        t = source.next_arrival(t)
        if t >= config.end_ms:
            break
        per_hour[t // HOUR_MS % 24] += 1
        if (t // DAY_MS + 3) % 7 < 5:
            weekday_total += 1
        else:
            weekend_total += 1
    assert weekday_total / 5 == pytest.approx(400 * 24, rel=0.1)
    assert weekend_total / 2 < 0.6 * weekday_total / 5
    peak = max(range(24), key=lambda h: HOURLY_WEIGHT_UTC[h])
    trough = min(range(24), key=lambda h: HOURLY_WEIGHT_UTC[h])
    assert per_hour[peak] > 4 * per_hour[trough]
    expected = [w / sum(HOURLY_WEIGHT_UTC) for w in HOURLY_WEIGHT_UTC]
    observed = [per_hour[h] / sum(per_hour.values()) for h in range(24)]
    assert statistics.correlation(expected, observed) > 0.95


def test_task_records_have_realistic_fields() -> None:
    from simulator.tasks import KINDS, TaskSource

    source = TaskSource(SimConfig(seed=3))
    tasks = [source.make_task(1736121600000)[0] for _ in range(3000)]
    assert {t["priority"] for t in tasks} <= set(range(10))
    assert len({t["tenant"] for t in tasks}) >= 8
    assert 0.05 < sum(t["region"] is None for t in tasks) / len(tasks) < 0.8
    assert any(t["deadline"] is None for t in tasks) and any(t["deadline"] for t in tasks)
    logs = [math.log(t["est_duration_s"] / KINDS[t["kind"]]) for t in tasks]
    assert abs(statistics.median(logs)) < 0.15 and 0.6 < statistics.stdev(logs) < 1.0
    assert len({t["task_id"] for t in tasks}) == len(tasks)


# -- emulator --------------------------------------------------------------------------------------
def _session_outcomes(faulty: bool, n: int = 200) -> tuple[Counter[str], list[Session], list[dict[str, Any]]]:
    outcomes: Counter[str] = Counter()
    sessions, actions = [], []
    for i in range(n):
        s = Session(
            rng_for(1, "s", i, faulty), f"s{i}", f"t{i}", "VIN", 120.0, faulty, 0.8 if faulty else 0.06
        )
        while True:
            rec, gap = s.next_action()
            actions.append(rec)
            if gap is None:
                break
        outcomes[s.outcome] += 1
        sessions.append(s)
    return outcomes, sessions, actions


def test_emulator_sessions_have_realistic_traces() -> None:
    healthy, sessions, actions = _session_outcomes(False)
    faulty, _, _ = _session_outcomes(True)
    assert healthy["COMPLETED"] > 170 and faulty["FAILED"] > 140
    assert all("text" not in a for a in actions)
    assert all(a["text_len"] for a in actions if a["action"] == "TYPE")
    assert {a["action"] for a in actions} >= {"CLICK", "TYPE", "KEY", "SCREENSHOT", "SCROLL", "DONE", "FAIL"}
    err_rate = sum(not a["ok"] for a in actions if a["action"] not in ("DONE", "FAIL")) / len(actions)
    assert 0.01 < err_rate < 0.08
    assert sum(s.loops for s in sessions) > 0
    per_minute = statistics.median(s.seq / (s.elapsed_ms / 60000) for s in sessions)
    assert 20 < per_minute < 120  # 1-3 actions per second at most


def _assign(world: World, car: Any, aid: str, task: str, command: str = "ASSIGN") -> None:
    world.emulators.handle({"assignment_id": aid, "command": command, "task_id": task, "vin": car.spec.vin})


def test_emulator_runtime_reacts_to_assign_and_revoke() -> None:
    config = SimConfig(
        cars=40,
        sites=0,
        tasks_per_hour=0,
        start_ms=1736154000000,
        duration_ms=2 * HOUR_MS,
        faulty_car_share=0.0,
    )  # 09:00 UTC: night in North America
    sink = MemorySink()
    world = World(config, sink)
    world.run_until(config.start_ms + 1000)
    idle = [
        c
        for c in world.cars
        if c.available(world.now) is None and (c.next_departure(world.now) or 1e18) > world.now + 2 * HOUR_MS
    ]
    assert len(idle) >= 2
    a, b = idle[:2]
    world.task_durations["t-a"] = 300.0
    world.task_durations["t-b"] = 3000.0
    _assign(world, a, "as-a", "t-a")
    _assign(world, a, "as-a", "t-a")  # redelivered: ignored
    _assign(world, b, "as-b", "t-b")
    _assign(world, world.cars[0], "as-x", "t-x") if world.cars[0].available(world.now) else None
    world.emulators.handle({"assignment_id": "z", "command": "ASSIGN", "task_id": "t-z", "vin": "NOT-OURS"})
    world.run_until(world.now + 10 * 60_000)
    _assign(world, b, "as-b", "t-b", "REVOKE")
    world.run_until(config.end_ms)
    status = [r for t, _, r in sink.records if t == "tasks.status.v1"]
    by_task: dict[str, list[str]] = {}
    for r in status:
        by_task.setdefault(r["task_id"], []).append(r["status"])
    assert by_task["t-a"][0] == "STARTED" and by_task["t-a"][-1] in ("COMPLETED", "FAILED")
    assert by_task["t-b"] == ["STARTED"]
    assert "t-z" not in by_task
    actions_a = [r for t, _, r in sink.records if t == "emulator.actions.v1" and r["task_id"] == "t-a"]
    actions_b = [r for t, _, r in sink.records if t == "emulator.actions.v1" and r["task_id"] == "t-b"]
    assert [r["seq"] for r in actions_a] == list(range(1, len(actions_a) + 1))
    assert actions_a[-1]["action"] in ("DONE", "FAIL")
    assert actions_b[-1]["action"] == "FAIL" and actions_b[-1]["error"] == "revoked"
    assert world.counters["assignments_duplicate"] == 1


def test_emulator_abandons_the_task_when_the_owner_drives_off() -> None:
    config = SimConfig(cars=60, sites=0, tasks_per_hour=0, start_ms=1736154000000, duration_ms=DAY_MS)
    sink = MemorySink()
    world = World(config, sink)
    world.run_until(config.start_ms + 1000)
    leaving = [c for c in world.cars if c.available(world.now) is None and c.next_departure(world.now)]
    car = min(leaving, key=lambda c: c.next_departure(world.now))
    world.task_durations["t-long"] = 20 * 3600.0
    _assign(world, car, "as-long", "t-long")
    world.run()
    assert world.counters["sessions_abandoned"] == 1
    actions = [r for t, _, r in sink.records if t == "emulator.actions.v1" and r["task_id"] == "t-long"]
    assert actions[-1]["action"] == "FAIL" and actions[-1]["error"] == "owner_returned"
    status = [r["status"] for t, _, r in sink.records if t == "tasks.status.v1" and r["task_id"] == "t-long"]
    assert "COMPLETED" not in status


def test_unavailable_node_refuses_the_task() -> None:
    config = SimConfig(cars=20, sites=0, tasks_per_hour=0, opt_in_share=0.0, duration_ms=HOUR_MS)
    sink = MemorySink()
    world = World(config, sink)
    world.run_until(config.start_ms)
    _assign(world, world.cars[0], "as-1", "t-1")
    world.run()
    (status,) = [r for t, _, r in sink.records if t == "tasks.status.v1"]
    assert status["status"] == "FAILED" and status["error"].startswith("node_unavailable")


# -- power -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fault", [None, *FAULT_KINDS])
def test_failover_scripts(fault: str | None) -> None:
    fo = failover_script(rng_for(1, fault), "dc-x", 1_736_200_000_000_000, 3, 40.0, 90.0, fault, 600.0)
    events = [(s.device_id, s.event_type) for s in fo.steps]
    assert fo.steps == sorted(fo.steps)
    assert ("gm-1", "SOURCE_LOST") in events and ("ats-1", "TRANSFER") in events
    assert fo.end_us > fo.start_us
    transfers = [s for s in fo.steps if s.event_type == "TRANSFER"]
    if fault == "FAILED_TRANSFER":
        assert not any(s.device_id == "sts-1" for s in transfers)
        assert transfers[0].ts_us - fo.start_us > 10_000_000
    elif fault == "SLOW_TRANSFER":
        assert fo.detail["transfer_ms"] > 20
    elif fault is None:
        assert fo.detail["transfer_ms"] < 4.2
    if fault == "GEN_START_FAILURE":
        assert ("gen-3", "GEN_FAIL") in events
    if fault == "FLAPPING":
        lost = [s for s in fo.steps if s.event_type == "SOURCE_LOST"]
        assert len(lost) == 2 and lost[1].ts_us - lost[0].ts_us < 4 * 3600 * 1_000_000
    if fault == "BATTERY_RESERVE":
        assert fo.detail["min_battery_soc_pct"] <= 10 and ("ctl-1", "LOAD_SHED") in events
    if fault == "PQ_EXCURSION":
        assert min(s.fields.get("frequency_hz") or 60 for s in fo.steps) < 58.5


def test_power_events_numbered_per_device_and_faults_in_truth() -> None:
    world, sink, truth = run_world(cars=0, sites=3, duration_ms=3 * DAY_MS, fault_share=1.0, tasks_per_hour=0)
    events = [r for t, _, r in sink.records if t == "power.events.v1"]
    seen: dict[tuple[str, str, int], int] = {}
    per_device: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for r in events:
        k = (r["site_id"], r["device_id"], r["seq"])
        seen[k] = seen.get(k, 0) + 1
        per_device.setdefault(k[:2], []).append((r["ts"], r["seq"]))
    for pairs in per_device.values():
        unique = sorted(set(pairs))
        assert [s for _, s in unique] == sorted(s for _, s in unique)  # seq grows with event time
    assert any(n > 1 for n in seen.values())  # duplicates
    arrival_ts = [r["ts"] for r in events]
    assert any(b < a for a, b in zip(arrival_ts, arrival_ts[1:], strict=False))  # out of order
    failovers = [r for r in truth.items if r["type"] == "failover"]
    assert len(failovers) >= 6
    assert {f["fault"] for f in failovers} == set(FAULT_KINDS)
    assert all(f["started_at_us"] < f["ended_at_us"] for f in failovers)
    assert world.counters["failovers"] == len(failovers)
    # Each event the late-delivery model held back is in the truth, by site, device and seq.
    late = [r for r in truth.items if r["type"] == "power_late"]
    assert len(late) == world.counters["power_late"] > 0
    emitted = {(r["site_id"], r["device_id"], r["seq"]) for r in events}
    assert all((r["site_id"], r["device_id"], r["seq"]) in emitted and r["delay_ms"] >= 5000 for r in late)


def test_sessions_still_plugged_in_at_the_end_are_in_the_truth() -> None:
    world, _, truth = run_world(cars=40, sites=0, tasks_per_hour=0)
    world.write_open_sessions()
    open_rows = [r for r in truth.items if r["type"] == "charge_open"]
    assert {r["vin"] for r in open_rows} == {c.spec.vin for c in world.cars if c.plugged} != set()
    assert all(r["plug_in"] <= r["at"] == world.q.now for r in open_rows)


# -- command line ----------------------------------------------------------------------------------
def test_parse_duration() -> None:
    assert parse_duration_ms("90s") == 90_000
    assert parse_duration_ms("1h30m") == 5_400_000
    assert parse_duration_ms("7d") == 7 * DAY_MS
    assert parse_duration_ms("2.5") == 2500
    with pytest.raises(Exception):  # noqa: B017
        parse_duration_ms("soon")


def test_cli_writes_json_lines_and_truth(tmp_path: Any) -> None:
    out, truth = tmp_path / "out", tmp_path / "truth.jsonl"
    args = [
        "--out",
        str(out),
        "--truth",
        str(truth),
        "--duration",
        "3h",
        "--cars",
        "20",
        "--sites",
        "1",
        "--as-fast-as-possible",
        "--self-assign",
        "--seed",
        "5",
    ]
    result = CliRunner().invoke(simulate, args)
    assert result.exit_code == 0, result.output
    files = {p.name for p in out.iterdir()}
    assert "fleet.telemetry.v1.jsonl" in files and "tasks.requests.v1.jsonl" in files
    first = orjson.loads((out / "tasks.requests.v1.jsonl").read_bytes().splitlines()[0])
    parse_json_record("tasks.requests.v1", first)
    rows = [orjson.loads(line) for line in truth.read_bytes().splitlines()]
    assert {"config", "car", "task"} <= {r["type"] for r in rows}
    again = tmp_path / "again"
    result = CliRunner().invoke(simulate, [*args[:1], str(again), *args[2:]])
    assert result.exit_code == 0
    assert (again / "fleet.telemetry.v1.jsonl").read_bytes() == (
        out / "fleet.telemetry.v1.jsonl"
    ).read_bytes()


def test_cli_rejects_unknown_topics() -> None:
    result = CliRunner().invoke(simulate, ["--dry-run", "--topics", "nope.v1", "--no-truth"])
    assert result.exit_code != 0 and "unknown topic" in result.output
