"""A small, deterministic, realistic data set for every analytics table (tests, docs, demos).

``generate(seed)`` returns ``{table: [row dict, ...]}`` with the columns the sink would write, including
``_topic``/``_partition``/``_offset`` (sequential per table, partition 0). ``load(client, data)`` inserts it.
Shape: 3 regions, 48 cars over 8 hours (telemetry every 2 minutes, one or two charging sessions each),
160 tasks with their lifecycle, node status reports and an emulator session per run (with errors and
loops), power incidents at 3 sites, and the alerts they raised; the sites' capacity reports and power
states, and spillover episodes (one still open) with the tasks moved off the sites (spilled to cars
while queued, or shed while running at the site).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from clickhouse_connect.driver.client import Client

from sinks.config import SINK_TABLES
from streams.sites import site_of, site_vin

T0 = datetime(2026, 3, 2, tzinfo=UTC)
REGIONS = ("r-west", "r-east", "r-central")
SITES = ("dc-a", "dc-b", "dc-c")
TOPIC_OF = {table: topic for topic, table in SINK_TABLES.items()}

Rows = dict[str, list[dict[str, Any]]]

SPILLED = "SPILLOVER_ISLANDED"
SHED = ("SHED_RESERVE", "SHED_LOAD")
# Spillover episodes: (site index, incident number at that site, minutes the site takes no work; None:
# still open when the data ends). Each starts with that site's failover incident (_power's timing).
EPISODES = ((0, 0, 60.0), (1, 1, 60.0), (2, 2, 60.0), (2, 4, None))
TASK_SECONDS = 600  # every sample task's estimated duration
BATTERY_MINUTES_PER_SHED = 1.5


def _incident_minute(site: int, k: int) -> float:
    return 30 + k * 90 + site * 7


@dataclass
class Move:
    """A task moved off a site during a spillover episode: spilled while queued, or shed while running."""

    episode: int  # index in EPISODES
    site_id: str
    region: str  # the site's: the task's pool
    reason: str
    minute: float
    slot_hours: float = TASK_SECONDS / 3600  # what the fleet took over: all of it, or what was left


def _move(t: int, requested: float, start: float, prefix: str) -> Move | None:
    """Every fifth task whose run starts while a site is off the grid was moved off that site: spilled
    (site 2 only spills) or, when it had time to start there first, shed."""
    if t % 5:
        return None
    for n, (site, k, length) in enumerate(EPISODES):
        begin = _incident_minute(site, k)
        if length is None or not begin + 1 <= start <= begin + length - 5:
            continue
        site_id, region = prefix + SITES[site], prefix + REGIONS[site]
        if site == 2 or (t // 5) % 2 == 0 or start - requested < 0.9:
            return Move(n, site_id, region, SPILLED, start - 0.05)
        return Move(n, site_id, region, SHED[site % 2], start - 0.5)
    return None


def _ms(minutes: float) -> datetime:
    return T0 + timedelta(milliseconds=round(minutes * 60_000))


def generate(seed: int = 7, prefix: str = "") -> Rows:
    """The data set; ``prefix`` goes in front of every id, region and site (several sets side by side)."""
    rng = random.Random(seed)
    data: Rows = defaultdict(list)
    cars = []
    for i in range(48):
        vin = f"{prefix}SMPL{i:04d}"
        region = prefix + REGIONS[i % 3]
        hw = "HW3" if i % 8 == 7 else ("HW5" if i % 8 == 6 else "HW4")
        # Plugged-in windows in minutes since T0: one or two sessions.
        a = rng.randint(10, 90)
        sessions = [(a, a + rng.randint(120, 240))]
        if i % 4 == 0:
            b = sessions[0][1] + rng.randint(20, 40)
            sessions.append((b, min(b + rng.randint(40, 80), 470)))
        cars.append((vin, region, hw, sessions))
        for step in range(0, 480, 2):
            minute = step + rng.random()
            plugged = any(s <= minute < e for s, e in sessions)
            state = rng.choice(("CHARGING", "CHARGING", "COMPLETE")) if plugged else "DISCONNECTED"
            if rng.random() < 0.03:
                state = "UNKNOWN"  # not reported: never means unplugged
            data["telemetry"].append(
                {
                    "vin": vin,
                    "ts": _ms(minute),
                    "hw": hw,
                    "region": region,
                    "charge_state": state,
                    "gear": "P" if plugged or rng.random() < 0.5 else "D",
                    "soc_pct": round(rng.uniform(25, 90), 1),
                    "charge_limit_pct": 80.0,
                    "minutes_to_full": None,
                    "scheduled_departure": None,
                    "at_home": plugged,
                    "opted_in": i % 10 != 9,
                    "compute_temp_c": round(rng.uniform(30, 60), 1),
                    "software_version": "2026.8.1",
                }
            )
        data["nodes"].append(
            {
                "vin": vin,
                "ts": _ms(479),
                "eligible": False,
                "reason": "unplugged",
                "region": region,
                "hw": hw,
                "capacity": 1,
                "running": 0,
            }
        )

    eligible = [c for c in cars if c[2] != "HW3"]
    moves: list[Move] = []
    for t in range(160):
        task_id = f"{prefix}task-{t:04d}"
        priority = t % 10
        requested = rng.uniform(20, 300)
        vin, region, hw, sessions = rng.choice(eligible)
        s0, s1 = sessions[0]
        base = {
            "tenant": f"{prefix}tenant-{t % 4}",
            "kind": ("checkout", "search", "form")[t % 3],
            "priority": priority,
        }
        data["task_requests"].append(
            {
                "task_id": task_id,
                "ts": _ms(requested),
                **base,
                "est_duration_s": TASK_SECONDS,
                "deadline": None,
                "min_hw": "HW4",
                "region": None,
                "min_soc_pct": None,
            }
        )
        # (state, minute, vin, assignment_id, reason); site_id is the site a vin names, as the scheduler's
        events: list[tuple[str, float, str | None, str | None, str | None]] = [
            ("REQUESTED", requested, None, None, None),
            ("QUEUED", requested + 0.01, None, None, None),
        ]
        start = max(requested + rng.uniform(0.1, 3 + (9 - priority) * 2), s0 + 0.5)
        preempted = t % 7 == 3
        outcome = "FAILED" if t % 11 == 5 else "COMPLETED"
        move = _move(t, requested, start, prefix)
        plan: list[tuple[str, float, float, str]] = []  # (node, begin, end, result) of each run
        if move is not None and move.reason != SPILLED:  # ran at the site until it was shed
            plan.append((site_vin(move.site_id), max(requested + 0.1, start - 4), move.minute, move.reason))
            move.slot_hours = round((TASK_SECONDS - (plan[0][2] - plan[0][1]) * 60) / 3600, 4)
        if preempted:  # first run cut short when the car left; requeued and run again
            plan.append((vin, start, start + rng.uniform(1, 5), "PREEMPTED"))
            start = plan[-1][2] + rng.uniform(0.5, 2)
        plan.append((vin, start, start + rng.uniform(2, 15), outcome))
        attempt = len(plan)
        runs = [(f"{prefix}asg-{t:04d}-{i}", *run) for i, run in enumerate(plan, 1)]
        pool = region
        if move is not None:
            moves.append(move)
            pool = move.region
        for i, (asg, run_vin, begin, end, result) in enumerate(runs):
            # The car run a move led to carries its reason: the first one of a task spilled while queued,
            # the one after the site run of a shed task.
            moved_here = move is not None and i == (0 if move.reason == SPILLED else 1)
            moved_by = move.reason if move is not None and moved_here else None
            events += [
                ("ASSIGNED", begin - 0.05, run_vin, asg, moved_by),
                ("STARTED", begin, run_vin, asg, None),
            ]
            data["assignments"].append(
                {
                    "assignment_id": asg,
                    "command": "ASSIGN",
                    "task_id": task_id,
                    "vin": run_vin,
                    "ts": _ms(begin - 0.05),
                    "reason": moved_by,
                    **base,
                    "deadline": None,
                    "lease_expires_at": None,
                    "pool": pool,
                    "site_id": site_of(run_vin),
                }
            )
            data["task_status"].append(
                {
                    "task_id": task_id,
                    "assignment_id": asg,
                    "vin": run_vin,
                    "ts": _ms(begin + 0.01),
                    "status": "STARTED",
                    "error": None,
                }
            )
            if result == "PREEMPTED" or result in SHED:
                reason = result if result in SHED else None
                events += [
                    ("PREEMPTED", end, run_vin, asg, reason),
                    ("REQUEUED", end + 0.01, None, None, reason),
                ]
                data["task_status"].append(
                    {
                        "task_id": task_id,
                        "assignment_id": asg,
                        "vin": run_vin,
                        "ts": _ms(end),
                        "status": "FAILED",
                        "error": "shed" if reason else "owner returned",
                    }
                )
            else:
                events.append((result, end, run_vin, asg, None))
                data["task_status"].append(
                    {
                        "task_id": task_id,
                        "assignment_id": asg,
                        "vin": run_vin,
                        "ts": _ms(end),
                        "status": result,
                        "error": "emulator crashed" if result == "FAILED" else None,
                    }
                )
            _session(rng, data, f"ses-{asg}", task_id, run_vin, begin, end, result)
        for state, minute, ev_vin, ev_asg, reason in events:
            data["task_events"].append(
                {
                    "task_id": task_id,
                    "ts": _ms(minute),
                    "state": state,
                    "vin": ev_vin,
                    "assignment_id": ev_asg,
                    "reason": reason,
                    **base,
                    "attempt": attempt,
                    "pool": pool,
                    "site_id": site_of(ev_vin),
                }
            )

    _power(rng, data, prefix)
    _sites(random.Random(seed + 1), data, prefix, moves)
    for table, rows in data.items():
        for offset, row in enumerate(rows):
            row.update({"_topic": TOPIC_OF.get(table, table), "_partition": 0, "_offset": offset})
    return dict(data)


def _session(
    rng: random.Random,
    data: Rows,
    session_id: str,
    task_id: str,
    vin: str,
    begin: float,
    end: float,
    result: str,
) -> None:
    steps = rng.randint(12, 40)
    for seq in range(steps):
        minute = begin + (end - begin) * seq / steps
        last = seq == steps - 1
        if last:
            action = {"COMPLETED": "DONE", "FAILED": "FAIL"}.get(result, "FAIL")
        else:
            action = rng.choice(("CLICK", "CLICK", "TYPE", "KEY", "SCROLL", "SCREENSHOT", "MOUSE_MOVE"))
        x, y = (
            (rng.randrange(0, 1280, 40), rng.randrange(0, 720, 40))
            if action in ("CLICK", "SCROLL")
            else (None, None)
        )
        keys = "ctrl+l" if action == "KEY" else None
        if seq % 9 == 4 and not last:  # a loop: the agent clicks the same spot again
            prev = data["actions"][-1]
            if prev["session_id"] == session_id:
                action, x, y, keys = prev["action"], prev["x"], prev["y"], prev["keys"]
        ok = rng.random() > 0.08
        data["actions"].append(
            {
                "session_id": session_id,
                "task_id": task_id,
                "vin": vin,
                "ts": _ms(minute),
                "seq": seq,
                "action": action,
                "x": x,
                "y": y,
                "keys": keys,
                "text_len": 12 if action == "TYPE" else None,
                "latency_ms": round(rng.uniform(5, 80), 1),
                "ok": ok,
                "error": None if ok else "element not found",
            }
        )


def _power(rng: random.Random, data: Rows, prefix: str) -> None:
    n = 0
    for s, site in enumerate(prefix + site for site in SITES):
        for k in range(3 + s):
            n += 1
            start = _ms(30 + k * 90 + s * 7)
            transfer = round(rng.uniform(3, 12) if k % 3 else rng.uniform(8000, 9500), 2)
            kind = "FAILOVER" if k % 4 != 3 else "SLOW_TRANSFER"
            incident_id = f"{site}:{kind}:{n}"
            end = start + timedelta(minutes=rng.randint(5, 40))
            for state, ts, tms, ended in (
                ("OPEN", start, None, None),
                ("UPDATE", start, transfer, None),
                ("RESOLVED", end, transfer, end),
            ):
                data["incidents"].append(
                    {
                        "incident_id": incident_id,
                        "site_id": site,
                        "kind": kind,
                        "state": state,
                        "started_at": start,
                        "ended_at": ended,
                        "transfer_ms": tms,
                        "source_from": "GRID",
                        "source_to": "BATTERY",
                        "min_battery_soc_pct": 80.0,
                        "summary": f"{kind.lower()} at {site}",
                        "device_id": "ats-1",
                        "updated_at": ts,
                        "time_on_alternate_ms": None,
                        "gens_online": 0,
                        "load_mw": 10.0,
                        "parent_incident_id": None,
                    }
                )
            for status in ("FIRING", "RESOLVED"):
                data["alerts"].append(
                    {
                        "fingerprint": f"fp-{incident_id}",
                        "status": status,
                        "severity": "critical" if kind == "SLOW_TRANSFER" else "warning",
                        "kind": kind,
                        "site_id": site,
                        "region": None,
                        "summary": f"{kind} at {site}",
                        "starts_at": start,
                        "ends_at": end if status == "RESOLVED" else None,
                        "labels": {"site": site},
                        "incident_id": incident_id,
                    }
                )
            for dev_seq, (etype, dt_us) in enumerate(
                (("SOURCE_LOST", 0), ("TRANSFER", int(transfer * 1000)))
            ):
                data["power_events"].append(
                    {
                        "site_id": site,
                        "device_id": "ats-1",
                        "device_type": "ATS",
                        "ts": start + timedelta(microseconds=dt_us),
                        "seq": n * 10 + dev_seq,
                        "event_type": etype,
                        "source_from": "GRID",
                        "source_to": "BATTERY" if etype == "TRANSFER" else None,
                        "load_mw": 10.0,
                        "frequency_hz": 60.0,
                        "voltage_pu": 1.0,
                        "battery_soc_pct": 90.0,
                        "gens_online": 0,
                        "detail": None,
                    }
                )


def _sites(rng: random.Random, data: Rows, prefix: str, moves: list[Move]) -> None:
    """Spillover episodes built from the moves, each site's power states, and capacity reports."""
    incident_at = {(r["site_id"], r["started_at"]): r["incident_id"] for r in data["incidents"]}
    off_grid: dict[str, list[Islanding]] = defaultdict(list)
    for n, (site, k, length) in enumerate(EPISODES):
        site_id, begin = prefix + SITES[site], _incident_minute(site, k)
        end = None if length is None else begin + length
        mine = sorted((m for m in moves if m.episode == n), key=lambda m: m.minute)
        incident = incident_at.get((site_id, _ms(begin)))
        _episode(data, prefix, site, begin, end, mine, incident)
        shed = next((m for m in mine if m.reason in SHED), None)
        at_limit = (
            None
            if shed is None
            else (shed.minute - 0.5, "RESERVE" if shed.reason == "SHED_RESERVE" else "SHEDDING")
        )
        off_grid[site_id].append(Islanding(begin, end, at_limit, incident))
    for s, name in enumerate(SITES):
        site_id = prefix + name
        _power_states(data, site_id, off_grid[site_id])
        total = 120 + 40 * s
        for minute in range(0, 480, 10):
            at = minute + s * 0.5
            islanded = any(i.begin <= at < (i.end or 480.0) for i in off_grid[site_id])
            data["site_capacity"].append(
                {
                    "site_id": site_id,
                    "ts": _ms(at),
                    "region": prefix + REGIONS[s],
                    "slots_total": total,
                    "slots_free": 0 if islanded else rng.randint(10, total),
                    "power_budget_mw": 4.0 if islanded else 12.0,
                    "cost_per_slot_hour": None if s == 2 else 0.08,
                    "session_kw": None if s == 1 else 8.0,
                }
            )


def _episode(
    data: Rows,
    prefix: str,
    site: int,
    begin: float,
    end: float | None,
    moves: list[Move],
    incident_id: str | None,
) -> None:
    site_id, region = prefix + SITES[site], prefix + REGIONS[site]
    started = _ms(begin)
    spilled = shed = 0
    slot_hours, battery = 0.0, None
    worst = "ISLANDED_BATTERY"
    updates: list[tuple[str, float]] = [("OPEN", begin)]
    updates += [("UPDATE", m.minute) for m in moves]
    if end is not None:
        updates.append(("RESOLVED", end))
    for i, (state, minute) in enumerate(updates):
        if state == "UPDATE":
            move = moves[i - 1]
            slot_hours = round(slot_hours + move.slot_hours, 4)
            if move.reason == SPILLED:
                spilled += 1
            else:
                shed += 1
                battery = round((battery or 0.0) + BATTERY_MINUTES_PER_SHED, 2)
                worst = "RESERVE" if move.reason == "SHED_RESERVE" else "SHEDDING"
        data["spillover_episodes"].append(
            {
                "episode_id": f"{site_id}:{int(started.timestamp() * 1000)}",
                "site_id": site_id,
                "region": region,
                "state": state,
                "started_at": started,
                "ended_at": _ms(minute) if state == "RESOLVED" else None,
                "updated_at": _ms(minute),
                "worst_state": worst,
                "tasks_spilled": spilled,
                "sessions_shed": shed,
                "slot_hours_shifted": slot_hours,
                "battery_minutes_saved": battery,
                "incident_id": incident_id,
                "summary": f"{site_id} off the grid: {spilled} queued tasks spilled, {shed} sessions shed "
                f"to {region} cars",
            }
        )


@dataclass(frozen=True)
class Islanding:
    begin: float
    end: float | None  # back on the grid (None: not yet)
    at_limit: tuple[float, str] | None  # when the site reached RESERVE or SHEDDING, and which
    incident_id: str | None


def _power_states(data: Rows, site_id: str, periods: list[Islanding]) -> None:
    """GRID; each time off the grid: on battery, at its limit once sessions are shed, the grid back
    (retransfer clock running) 3 minutes before the site counts as on the grid again."""
    # (minute, state, battery runtime, grid back since, incident)
    states: list[tuple[float, str, float | None, float | None, str | None]] = [
        (0.0, "GRID", None, None, None)
    ]
    for p in periods:
        states.append((p.begin, "ISLANDED_BATTERY", 40.0, None, p.incident_id))
        if p.at_limit is not None:
            states.append((p.at_limit[0], p.at_limit[1], 8.0, None, p.incident_id))
        if p.end is not None:
            last = states[-1]
            states += [
                (p.end - 3, last[1], last[2], p.end - 3, p.incident_id),
                (p.end, "GRID", None, None, None),
            ]
    since = 0.0
    for i, (minute, state, runtime, grid_back, incident) in enumerate(states):
        since = since if i and state == states[i - 1][1] else minute
        data["site_power_states"].append(
            {
                "site_id": site_id,
                "ts": _ms(minute),
                "state": state,
                "since": _ms(since),
                "battery_runtime_min": runtime,
                "incident_id": incident,
                "load_mw": 10.0,
                "battery_soc_pct": 90.0 if runtime is None else round(20 + runtime, 1),
                "grid_since": None if grid_back is None else _ms(grid_back),
            }
        )


def load(client: Client, data: Rows) -> None:
    for table, rows in data.items():
        if rows:
            columns = list(rows[0])
            client.insert(table, [[r[c] for c in columns] for r in rows], column_names=columns)


def produce(settings: Any, data: Rows) -> int:
    """Publish the data set to its topics (Avro, keyed as the topic spec says); return records sent."""
    from streams.kafka import Producer
    from streams.serde import serde_from_settings
    from streams.topics import key_field

    serde = serde_from_settings(settings)
    sent = 0
    with Producer(settings) as producer:
        for table, rows in data.items():
            topic = TOPIC_OF[table]
            key = key_field(topic)
            for row in rows:
                producer.produce(topic, serde.encode(topic, row), str(row[key]))
                sent += 1
    return sent
