"""Datacenter sites as emulator capacity (issue 16): slots, budget, load, battery, capacity reports,
the site controller, long battery islands and their truth. Pure parts directly, the rest in a small world."""

from __future__ import annotations

import random
import statistics
from collections import Counter
from dataclasses import replace
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from simulator import SimConfig, World
from simulator.cli import simulate
from simulator.config import HOUR_MS, SITE_COMPUTE_PROFILES, SiteCompute, parse_slots
from simulator.islands import LONG_BATTERY, IslandLog, long_island_script
from simulator.loop import ClosedLoop
from simulator.sinks import MemorySink
from simulator.site_compute import (
    BATTERY_NORMAL_PCT,
    BATTERY_RESERVE_PCT,
    GRID,
    ISLANDED,
    RESERVE,
    TRIPPED,
    SiteCapacity,
    Slots,
    power_state,
)
from simulator.truth import TruthList
from streams.records import parse_json_record
from streams.serde import AvroSerde
from streams.sites import site_vin

CAPACITY = "sites.capacity.v1"
ASSIGNMENTS = "tasks.assignments.v1"
SMALL = SITE_COMPUTE_PROFILES["small"]


def capacity(slots: int = 10, **overrides: Any) -> SiteCapacity:
    config = replace(SMALL, slots=(slots, slots), battery_full_load_min=(30.0, 30.0), **overrides)
    return SiteCapacity.draw(config, random.Random(1), "dc-us-west-01", "us-west")


# -- pure parts -------------------------------------------------------------------------------------
def test_slots_never_hold_more_than_the_total() -> None:
    slots = Slots(2)
    assert slots.take("a", "run-a") and slots.take("b", "run-b")
    assert not slots.take("c", "run-c") and slots.free == 0
    assert not slots.take("a", "again")  # one slot per assignment
    assert slots.release("a") == "run-a" and slots.free == 1 and slots.release("a") is None
    assert slots.take("c", "run-c") and slots.used == 2


def test_budget_shrinks_with_the_power_state_and_cost_rises_off_grid() -> None:
    cap = capacity(slots=10)
    every_slot = 10 * SMALL.kw_per_slot / 1000
    budgets = [cap.power_budget_mw(s) for s in (GRID, ISLANDED, RESERVE, TRIPPED)]
    assert budgets[0] == pytest.approx(every_slot)
    assert budgets == sorted(budgets, reverse=True) and budgets[0] > budgets[1] > budgets[2] > budgets[3] == 0
    assert budgets[2] == pytest.approx(every_slot * SMALL.reserve_budget_share)
    assert cap.cost_per_slot_hour(ISLANDED) > cap.cost_per_slot_hour(GRID) == SMALL.cost_per_slot_hour


def test_power_state_from_the_site_facts() -> None:
    assert power_state(True, "GRID", 92.0, False) == GRID
    assert power_state(False, "GRID", 92.0, False) == ISLANDED  # grid lost, transfer under way
    assert power_state(True, "GENERATOR", 5.0, False) == ISLANDED  # grid back, not yet retransferred
    assert power_state(False, "BATTERY", 30.0, False) == ISLANDED
    assert power_state(False, "BATTERY", BATTERY_RESERVE_PCT, False) == RESERVE
    assert power_state(False, "BATTERY", 1.0, True) == TRIPPED


def test_load_is_critical_load_plus_sessions_and_the_battery_drains_with_it() -> None:
    cap = capacity(slots=10)
    full = cap.critical_load_mw + cap.emulator_mw(10)
    assert cap.emulator_mw(10) == pytest.approx(10 * SMALL.kw_per_slot / 1000)
    assert cap.emulator_mw(10) / full == pytest.approx(SMALL.emulator_load_share)
    # sized so that full load takes the battery from its normal charge to the reserve in 30 minutes
    assert cap.battery_drain_pct(full, 30 * 60_000) == pytest.approx(BATTERY_NORMAL_PCT - BATTERY_RESERVE_PCT)
    assert cap.battery_drain_pct(2 * full, 60_000) == pytest.approx(2 * cap.battery_drain_pct(full, 60_000))
    shed = cap.critical_load_mw + cap.emulator_mw(2)
    assert cap.battery_drain_pct(shed, 60_000) < cap.battery_drain_pct(full, 60_000)


def test_capacity_record_content_validates_against_the_schema() -> None:
    cap = capacity(slots=12)
    serde = AvroSerde()
    rec = cap.capacity_record(1736121600000, 5, ISLANDED)
    assert rec == {
        "site_id": "dc-us-west-01",
        "ts": 1736121600000,
        "region": "us-west",
        "slots_total": 12,
        "slots_free": 5,
        "power_budget_mw": round(12 * SMALL.kw_per_slot / 1000 * SMALL.islanded_budget_share, 4),
        "cost_per_slot_hour": round(SMALL.cost_per_slot_hour * SMALL.islanded_cost_factor, 4),
        "session_kw": SMALL.kw_per_slot,
    }
    parsed = parse_json_record(CAPACITY, orjson.loads(orjson.dumps(rec)))
    assert serde.decode(CAPACITY, serde.encode(CAPACITY, parsed))["slots_free"] == 5
    cut = cap.capacity_record(1736121600000, 5, TRIPPED)
    assert cut["slots_free"] == 0 and cut["power_budget_mw"] == 0


def test_island_log_records_intervals_reserve_minutes_and_cuts() -> None:
    rows: list[dict[str, Any]] = []
    log = IslandLog("dc-1", rows.append)
    m = 60_000
    log.observe(0, GRID, 92.0, False)
    log.observe(10 * m, ISLANDED, 92.0, True, LONG_BATTERY)  # grid lost
    log.observe(40 * m, RESERVE, 10.0, True)
    log.observe(45 * m, TRIPPED, 2.0, True)  # still at reserve, hall cut
    log.current.sessions_lost += 7  # type: ignore[union-attr]
    log.observe(50 * m, ISLANDED, 1.5, False)  # generators take the load
    assert not rows
    log.observe(70 * m, GRID, 1.5, False)
    log.observe(80 * m, GRID, 2.0, False)
    (row,) = rows
    assert row["type"] == "island" and row["site_id"] == "dc-1" and row["scenario"] == LONG_BATTERY
    assert (row["start"], row["end"], row["reserve_at"], row["hall_cut_at"]) == (
        10 * m,
        70 * m,
        40 * m,
        45 * m,
    )
    assert row["reached_reserve"] and row["hall_cut"] and row["sessions_lost"] == 7
    assert row["reserve_minutes"] == 10.0 and row["min_battery_soc_pct"] == 1.5
    log.observe(100 * m, ISLANDED, 90.0, True, "failover")
    log.close_open(130 * m)
    assert rows[1]["end"] is None and not rows[1]["reached_reserve"] and rows[1]["reserve_minutes"] == 0


def test_long_island_script_goes_to_battery_and_back_to_grid() -> None:
    script = long_island_script(random.Random(3), "dc-1", 1_000_000_000, 2.0, 3000.0, 600.0)
    events = [(s.device_id, s.event_type, s.state) for s in script.steps]
    assert ("sts-1", "TRANSFER", {"source": "BATTERY"}) in events
    assert events[-1] == ("gm-1", "SOURCE_RESTORED", {"grid": True})
    assert script.steps[-1].ts_us == 1_000_000_000 + 3000 * 1_000_000
    assert script.end_us == 1_000_000_000 + 3600 * 1_000_000
    assert not any(e[1].startswith("GEN") for e in events)  # the batteries alone


def test_parse_slots() -> None:
    assert parse_slots("300") == (300, 300) and parse_slots("200-400") == (200, 400)
    for bad in ("x", "5-2", "-3"):
        with pytest.raises(ValueError):
            parse_slots(bad)


# -- in a world -------------------------------------------------------------------------------------
def site_world(compute: SiteCompute, **overrides: Any) -> tuple[World, MemorySink, TruthList]:
    """One us-west site (its failover 16-19 local = 00-03 UTC of the default start), no cars, no tasks."""
    config = SimConfig(
        **{
            "cars": 0,
            "sites": 1,
            "region_mix": {"us-west": 1},
            "tasks_per_hour": 0,
            "duration_ms": 5 * HOUR_MS,
            "action_interval_s": 30.0,
            "site_compute": compute,
            **overrides,
        }
    )
    sink, truth = MemorySink(), TruthList()
    world = World(config, sink, truth)
    world.run_until(config.start_ms + 1)
    return world, sink, truth


def command(world: World, kind: str, aid: str, task: str, duration_s: float | None = None) -> None:
    if duration_s is not None:
        world.task_durations[task] = duration_s
    site = world.sites[0]
    world.emulators.handle(
        {"assignment_id": aid, "command": kind, "task_id": task, "vin": site_vin(site.site_id), "ts": 0}
    )


def statuses(sink: MemorySink) -> dict[str, list[tuple[str, str | None]]]:
    out: dict[str, list[tuple[str, str | None]]] = {}
    for t, _, r in sink.records:
        if t == "tasks.status.v1":
            out.setdefault(r["task_id"], []).append((r["status"], r["error"]))
    return out


def test_site_controller_runs_refuses_and_revokes_like_a_node() -> None:
    world, sink, truth = site_world(replace(SMALL, slots=(2, 2), long_failover_share=0.0))
    node = site_vin(world.sites[0].site_id)
    command(world, "ASSIGN", "as-a", "t-a", 120.0)
    command(world, "ASSIGN", "as-a", "t-a")  # redelivered: ignored
    command(world, "ASSIGN", "as-b", "t-b", 4 * 3600.0)
    command(world, "ASSIGN", "as-c", "t-c", 60.0)  # every slot taken
    world.run_until(world.now + 20 * 60_000)
    command(world, "REVOKE", "as-b", "t-b")
    command(world, "ASSIGN", "as-d", "t-d", 60.0)  # a slot is free again
    world.run()
    by_task = statuses(sink)
    assert [s for s, _ in by_task["t-a"]] in (["STARTED", "COMPLETED"], ["STARTED", "FAILED"])
    assert by_task["t-b"] == [("STARTED", None)]
    assert by_task["t-c"] == [("FAILED", "node_unavailable: site_full")]
    assert [s for s, _ in by_task["t-d"]][0] == "STARTED"
    assert all(
        r["vin"] == node for t, _, r in sink.records if t in ("tasks.status.v1", "emulator.actions.v1")
    )
    actions_b = [r for t, _, r in sink.records if t == "emulator.actions.v1" and r["task_id"] == "t-b"]
    assert actions_b[-1]["action"] == "FAIL" and actions_b[-1]["error"] == "revoked"
    assert world.counters["site_assignments_duplicate"] == 1
    assert world.sites[0].compute.controller.running == 0  # type: ignore[union-attr]
    assert not any("owner_returned" in (e or "") for rows in by_task.values() for _, e in rows)
    outcomes = {r["task_id"]: r["outcome"] for r in truth.items if r["type"] == "session"}
    assert outcomes["t-b"] == "REVOKED" and outcomes["t-a"] in ("COMPLETED", "FAILED")


def test_capacity_reports_on_a_cadence_and_at_once_on_a_power_change() -> None:
    world, sink, truth = site_world(replace(SMALL, slots=(4, 4), long_failover_share=1.0))
    command(world, "ASSIGN", "as-a", "t-a", 6 * 3600.0)
    world.run()
    site = world.sites[0]
    reports = [r for t, _, r in sink.records if t == CAPACITY]
    assert all(
        r["site_id"] == site.site_id and r["region"] == "us-west" and r["slots_total"] == 4 for r in reports
    )
    gaps = Counter(b["ts"] - a["ts"] for a, b in zip(reports, reports[1:], strict=False))
    assert gaps.most_common(1)[0][0] == SMALL.report_interval_s * 1000
    lost = next(r for t, _, r in sink.records if t == "power.events.v1" and r["event_type"] == "SOURCE_LOST")
    prompt = [r for r in reports if r["ts"] == lost["ts"] // 1000]
    assert prompt and prompt[0]["power_budget_mw"] < reports[0]["power_budget_mw"]
    assert prompt[0]["cost_per_slot_hour"] > reports[0]["cost_per_slot_hour"]
    assert any(r["slots_free"] == 3 for r in reports)
    assert reports[-1]["power_budget_mw"] == reports[0]["power_budget_mw"]  # back on the grid


def long_island(sessions: int, slots: int = 10, **overrides: Any) -> tuple[World, MemorySink, dict[str, Any]]:
    """A long battery island (40 min, full load to reserve in 30 min) with ``sessions`` running."""
    compute = replace(
        SMALL,
        slots=(slots, slots),
        long_failover_share=1.0,
        long_island_min=(40.0, 40.0),
        battery_full_load_min=(30.0, 30.0),
        reserve_gen_delay_min=(10.0, 10.0),
        **overrides,
    )
    world, sink, truth = site_world(compute)
    for i in range(sessions):
        command(world, "ASSIGN", f"as-{i}", f"t-{i}", 6 * 3600.0)
    world.run()
    world.write_open_sessions()
    (island,) = [r for r in truth.items if r["type"] == "island"]
    (failover,) = [r for r in truth.items if r["type"] == "failover"]
    assert island["start"] == failover["started_at_us"] // 1000
    assert failover["scenario"] == LONG_BATTERY
    return world, sink, {"island": island, "failover": failover}


def test_sessions_are_in_the_site_load() -> None:
    world, sink, _ = site_world(replace(SMALL, slots=(10, 10), long_failover_share=0.0))
    site = world.sites[0]

    def grid_load(minutes: int) -> float:
        start = world.now
        world.run_until(start + minutes * 60_000)
        return statistics.mean(
            r["load_mw"]
            for t, _, r in sink.records
            if t == "power.events.v1"
            and r["device_id"] == "gm-1"
            and r["load_mw"]
            and r["ts"] >= start * 1000
        )

    before = grid_load(10)
    base = site.total_load_mw(world.now)
    for i in range(6):
        command(world, "ASSIGN", f"as-{i}", f"t-{i}", 3600.0)
    assert site.total_load_mw(world.now) == pytest.approx(base + 6 * SMALL.kw_per_slot / 1000)
    during = grid_load(10)
    assert during - before == pytest.approx(6 * SMALL.kw_per_slot / 1000, rel=0.3)
    for i in range(6):
        command(world, "REVOKE", f"as-{i}", f"t-{i}")
    assert grid_load(10) == pytest.approx(before, rel=0.05)


def test_a_full_site_reaches_its_reserve_and_cuts_its_hall_an_empty_one_does_not() -> None:
    _, sink_full, full = long_island(sessions=10)
    _, _, empty = long_island(sessions=0)
    f, e = full["island"], empty["island"]
    assert f["reached_reserve"] and f["hall_cut"] and f["sessions_lost"] == 10
    assert f["reserve_minutes"] > 0 and f["min_battery_soc_pct"] <= SMALL.trip_soc_pct
    assert full["failover"]["expected_incidents"] == ["FAILOVER", "BATTERY_RESERVE", "LOAD_SHED"]
    assert not e["reached_reserve"] and not e["hall_cut"] and e["min_battery_soc_pct"] > BATTERY_RESERVE_PCT
    assert empty["failover"]["expected_incidents"] == ["FAILOVER"]
    lost = [r for t, _, r in sink_full.records if t == "tasks.status.v1" and r["status"] == "FAILED"]
    assert len(lost) == 10 and {r["error"] for r in lost} == {"abandoned: site_load_shed"}
    events = [r for t, _, r in sink_full.records if t == "power.events.v1"]
    assert any(r["event_type"] == "LOAD_SHED" for r in events)
    assert any(r["event_type"] == "TRANSFER" and r["source_to"] == "GENERATOR" for r in events)
    on_battery = [r for r in events if r["device_id"] == "bess-1" and r["load_mw"] is not None]
    assert len(on_battery) > 100  # the battery reports charge and load at every reading it carries the site
    socs = [r["battery_soc_pct"] for r in on_battery]
    assert socs[0] > socs[len(socs) // 2] > socs[-1]


def test_shedding_sessions_lengthens_the_battery_runtime() -> None:
    lows = [long_island(sessions=n)[2]["island"]["min_battery_soc_pct"] for n in (0, 3, 6)]
    assert lows[0] > lows[1] > lows[2]


def test_sessions_keep_running_through_an_island_unless_the_hall_is_cut() -> None:
    world, sink, found = long_island(sessions=2, slots=10)
    island = found["island"]
    assert island["reached_reserve"] is False and island["sessions_lost"] == 0
    # the two sessions were running throughout the island: no status but STARTED yet
    by_task = statuses(sink)
    assert by_task["t-0"] == [("STARTED", None)] and by_task["t-1"] == [("STARTED", None)]


def test_placement_and_long_tasks_only_with_site_compute() -> None:
    def tasks(compute: SiteCompute) -> list[dict[str, Any]]:
        config = SimConfig(cars=0, sites=0, duration_ms=6 * HOUR_MS, tasks_per_hour=400, site_compute=compute)
        sink = MemorySink(["tasks.requests.v1"])
        World(config, sink).run()
        return [r for _, _, r in sink.records]

    off, on = tasks(SiteCompute()), tasks(SMALL)
    assert off and all("placement" not in r for r in off)
    placements = Counter(r["placement"] for r in on)
    assert set(placements) == {"ANY", "FLEET", "DATACENTER"} and placements["ANY"] > placements["FLEET"]
    long = sum(a["est_duration_s"] > 3 * b["est_duration_s"] for a, b in zip(on, off, strict=True))
    assert 0.05 < long / len(on) < 0.3  # the long-task share, est x long_task_factor
    assert [r["task_id"] for r in on] == [r["task_id"] for r in off]  # the rest of the stream unchanged


def test_every_site_record_validates_and_self_assigned_tasks_run_at_sites() -> None:
    config = SimConfig(
        cars=15,
        sites=2,
        duration_ms=4 * HOUR_MS,
        self_assign=True,
        tasks_per_hour=60,
        site_compute=SMALL,
        action_interval_s=20.0,
    )
    sink = MemorySink()
    World(config, sink).run()
    serde = AvroSerde()
    topics = Counter(t for t, _, _ in sink.records)
    assert topics[CAPACITY] > 0
    site_status = [r for t, _, r in sink.records if t == "tasks.status.v1" and r["vin"].startswith("site:")]
    assert site_status
    for topic, _, record in sink.records:
        if topic in (CAPACITY, "tasks.requests.v1", "tasks.status.v1", "power.events.v1"):
            parsed = parse_json_record(topic, orjson.loads(orjson.dumps(record)))
            serde.decode(topic, serde.encode(topic, parsed))


def test_cli_site_compute_writes_capacity_reports(tmp_path: Any) -> None:
    out = tmp_path / "out"
    args = [
        "--out",
        str(out),
        "--no-truth",
        "--duration",
        "1h",
        "--cars",
        "5",
        "--sites",
        "2",
        "--speed",
        "0",
        "--site-slots",
        "3-5",
        "--placement-mix",
        "ANY=1,DATACENTER=1",
    ]
    result = CliRunner().invoke(simulate, args)
    assert result.exit_code == 0, result.output
    reports = [orjson.loads(line) for line in (out / f"{CAPACITY}.jsonl").read_bytes().splitlines()]
    assert {r["slots_total"] for r in reports} <= {3, 4, 5} and len({r["site_id"] for r in reports}) == 2
    requests = [orjson.loads(line) for line in (out / "tasks.requests.v1.jsonl").read_bytes().splitlines()]
    assert {r["placement"] for r in requests} == {"ANY", "DATACENTER"}
    bad = CliRunner().invoke(simulate, ["--dry-run", "--no-truth", "--placement-mix", "EDGE=1"])
    assert bad.exit_code != 0 and "unknown placement" in bad.output


def test_closed_loop_feeds_a_decision_maker_and_delivers_its_assignments() -> None:
    """A toy placer on the loop: DATACENTER tasks go to the site its capacity reports say has room."""
    free: dict[str, int] = {}
    seen: Counter[str] = Counter()
    done: list[dict[str, Any]] = []
    ticks: list[int] = []

    def react(topic: str, rec: dict[str, Any], now: int) -> list[tuple[str, dict[str, Any]]]:
        seen[topic] += 1
        if topic == CAPACITY:
            free[rec["site_id"]] = rec["slots_free"]
        elif topic == "tasks.status.v1" and rec["status"] == "COMPLETED":
            done.append(rec)
        elif topic == "tasks.requests.v1" and rec["placement"] == "DATACENTER":
            site = next((s for s, n in free.items() if n > 0), None)
            if site is not None:
                free[site] -= 1
                aid = f"as-{rec['task_id']}"
                cmd = {
                    "assignment_id": aid,
                    "command": "ASSIGN",
                    "task_id": rec["task_id"],
                    "vin": site_vin(site),
                }
                return [(ASSIGNMENTS, cmd)]
        return []

    config = SimConfig(
        cars=0,
        sites=2,
        duration_ms=3 * HOUR_MS,
        tasks_per_hour=200,
        site_compute=SMALL,
        action_interval_s=60.0,
    )
    loop = ClosedLoop(config, react, tick=lambda now: ticks.append(now) or [], tick_ms=60_000)
    world = loop.run()
    assert loop.delivered > 10 and done and {r["vin"] for r in done} <= set(world.site_controllers)
    assert len(ticks) == 3 * 60 and ticks[0] == config.start_ms
    assert seen[CAPACITY] > 0 and seen["tasks.requests.v1"] == world.counters["tasks"]


def test_without_traces_a_site_session_lasts_its_time_and_completes() -> None:
    world, sink, _ = site_world(replace(SMALL, slots=(2, 2), long_failover_share=0.0, actions=False))
    assert SITE_COMPUTE_PROFILES["realistic"].actions is False  # 200-400 sessions a site: no traces
    start = world.now
    command(world, "ASSIGN", "as-q", "t-q", 600.0)
    world.run()
    status = [r for t, _, r in sink.records if t == "tasks.status.v1"]
    assert [r["status"] for r in status][0] == "STARTED" and status[-1]["status"] in ("COMPLETED", "FAILED")
    assert not [r for t, _, r in sink.records if t == "emulator.actions.v1"]
    assert 60_000 <= status[-1]["ts"] - start <= 3 * 600_000  # its true run time (failures end early)
    assert world.sites[0].compute.controller.running == 0  # type: ignore[union-attr]


@pytest.mark.parametrize("sessions", [0, 10])
def test_the_power_detector_finds_the_incidents_a_long_island_expects(sessions: int) -> None:
    """The truth of a long island (its expected incidents, written once known) is what the project's own
    failover detector finds in its events: the demo's report checks one against the other."""
    from processors.power.detector import Detector

    world, sink, found = long_island(sessions=sessions)
    detector = Detector(world.sites[0].site_id)
    events = sorted((r for t, _, r in sink.records if t == "power.events.v1"), key=lambda r: r["ts"])
    opened = {o.kind for r in events for o in detector.on_event(r) if getattr(o, "state", None) == "OPEN"}
    assert set(found["failover"]["expected_incidents"]) == opened


def test_an_island_still_under_way_at_the_end_is_in_the_truth_open() -> None:
    world, _, truth = site_world(replace(SMALL, long_failover_share=1.0))
    world.run_until(world.now + 1_000)
    compute = world.sites[0].compute
    assert compute is not None and compute.long is not None
    world.run_until(compute.long.start_us // 1000 + 20 * 60_000)
    world.write_open_sessions()
    (island,) = [r for r in truth.items if r["type"] == "island"]
    (failover,) = [r for r in truth.items if r["type"] == "failover"]
    assert island["end"] is None and island["start"] == failover["started_at_us"] // 1000
    assert failover["scenario"] == LONG_BATTERY and failover["expected_incidents"] == ["FAILOVER"]
