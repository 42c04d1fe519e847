"""Fuzz: the pure scheduler (matching, eligibility, routing) fed random valid-but-extreme records.

Telemetry, requests, statuses, datacenter sites' capacity and power state, and ticks in random
interleavings, with duplicates and reorderings (a few
vins and task ids, times that go back), values at and past every edge (NaN, +-inf, huge, negative, far
past and far future times, the skew boundary). Each step must either work or raise the project's own
``InvalidRecord`` with a kind and a message, and after each step:

* the structural invariants hold (``Scheduler.check_invariants``: no task held by two cars, queues and
  idle sets consistent);
* every assignment made is to a car that qualifies at that moment, with a usable SoC and temperature, or
  to a site that reported room for it, whose power lets it take that task;
* the clock never passes the latest arrival plus ``max_future_skew_s``;
* every ineligible node and every REJECTED / EXPIRED / FAILED task carries a reason, and no output
  carries NaN or infinity;
* the state survives a JSON round trip and a rebuild (``to_dict`` / ``from_dict``).

Seeded (``derandomize``); ``CARNIVAL_FUZZ_EXAMPLES`` sets the examples per property (more for a deep run).
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.scheduler import DEFAULT_CONFIG, InvalidRecord, Scheduler, assignment_id_for
from processors.scheduler.eligibility import NodeState, apply_telemetry, evaluate, is_ready, reading
from processors.scheduler.records import ASSIGNMENTS_TOPIC, LIFECYCLE_TOPIC, NODES_TOPIC, Out
from processors.scheduler.routing import ATTEMPT_LOOKBACK, TaskRouter
from streams.exceptions import CarnivalStreamsError

T0 = 1_736_229_600_000  # 2025-01-07 06:00 UTC
S, MIN, H, DAY = 1000, 60_000, 3_600_000, 86_400_000
YEAR = 365 * DAY
SKEW_MS = int(DEFAULT_CONFIG.max_future_skew_s * 1000)
EXAMPLES = int(os.environ.get("CARNIVAL_FUZZ_EXAMPLES") or 0)

VINS = [f"V{i}" for i in range(5)]
TASKS = [f"T{i}" for i in range(6)]
REGIONS = ["r0", "r1", "", "r" * 300]


def _fuzz(default_examples: int) -> Any:
    return settings(
        max_examples=EXAMPLES or default_examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


extreme_double = st.one_of(
    st.none(),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 100.0, 100.0000001, -1e-9, 1e308, -1e308]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-50, max_value=150),
)
time_offset = st.one_of(
    st.integers(-10 * MIN, 2 * MIN),  # live: around the arrival
    st.sampled_from([SKEW_MS, SKEW_MS + 1, -1000 * YEAR, 1000 * YEAR, -T0 - 1]),  # edges
    st.integers(-30 * YEAR, 30 * YEAR),  # far past and far future
)


# Records are drawn as templates whose times are offsets from their arrival (resolved when fed): one
# draw per example keeps the fuzzer's own cost low.
_telemetry = st.fixed_dictionaries({
    "vin": st.sampled_from(VINS),
    "ts": time_offset,
    "hw": st.sampled_from(["HW3", "HW4", "HW5", "OTHER"]),
    "region": st.sampled_from(REGIONS),
    "charge_state": st.sampled_from(["CHARGING", "COMPLETE", "DISCONNECTED", "NO_POWER", "UNKNOWN", None]),
    "gear": st.sampled_from(["P", "P", "D", "R", "UNKNOWN", None]),
    "soc_pct": extreme_double,
    "charge_limit_pct": extreme_double,
    "minutes_to_full": extreme_double,
    "scheduled_departure": st.one_of(st.none(), time_offset),
    "at_home": st.sampled_from([True, False, None]),
    "opted_in": st.sampled_from([True, True, False]),
    "compute_temp_c": extreme_double,
    "software_version": st.none(),
})  # fmt: skip
_request = st.fixed_dictionaries({
    "task_id": st.sampled_from(TASKS),
    "ts": time_offset,
    "tenant": st.just("acme"),
    "kind": st.just("browse"),
    "priority": st.one_of(st.integers(0, 9), st.sampled_from([-1, 10, 2**31 - 1])),
    "est_duration_s": st.one_of(st.integers(1, 7200), st.sampled_from([0, -5, 2**31 - 1])),
    "deadline": st.one_of(st.none(), time_offset),
    "min_hw": st.sampled_from(["HW3", "HW4", "HW5", "OTHER", None]),
    "region": st.sampled_from(["r0", "r1", None]),
    "min_soc_pct": extreme_double,
    "placement": st.sampled_from(["ANY", "ANY", "FLEET", "DATACENTER", None, "ORBIT"]),
})  # fmt: skip
_status = st.fixed_dictionaries({
    "task_id": st.sampled_from(TASKS),
    "known": st.integers(-1, 4),  # -1: a forged assignment, else the current one or a revoked one
    "attempt": st.integers(0, 2**31 - 1),
    "vin": st.sampled_from(VINS),
    "ts": time_offset,
    "status": st.sampled_from(["STARTED", "COMPLETED", "FAILED"]),
    "error": st.sampled_from([None, "boom", "x" * 5000]),
})  # fmt: skip
SITES = ["dc0", "dc1", "dc0", ""]
POWER = ["GRID", "ISLANDED_BATTERY", "ISLANDED_GENERATOR", "RESERVE", "SHEDDING"]
_capacity = st.fixed_dictionaries({
    "site_id": st.sampled_from(SITES),
    "ts": time_offset,
    "region": st.sampled_from(["r0", "r1", "r0", "", None, "r" * 300]),
    "slots_total": st.one_of(st.integers(0, 4), st.integers(0, 4), st.sampled_from([-1, 2**31 - 1])),
    "slots_free": st.one_of(st.integers(0, 4), st.just(-1)),
    "power_budget_mw": st.one_of(st.none(), st.sampled_from([0.0, 0.0007, 0.0014]), extreme_double),
    "cost_per_slot_hour": st.one_of(st.none(), st.just(0.4), extreme_double),
})  # fmt: skip
_power = st.fixed_dictionaries({
    "site_id": st.sampled_from(SITES),
    "ts": time_offset,
    "state": st.sampled_from([*POWER, *POWER, "ON_FIRE"]),
    "since": st.one_of(st.none(), time_offset),
    "battery_runtime_min": st.one_of(st.none(), extreme_double),
    "load_mw": st.one_of(st.none(), extreme_double),
    "battery_soc_pct": st.one_of(st.none(), extreme_double),
    "incident_id": st.sampled_from([None, "inc-1"]),
    "grid_since": st.none(),
})  # fmt: skip
_events = st.lists(
    st.tuples(
        st.sampled_from([0, 0, S, 10 * S, MIN, 10 * MIN, H, -MIN]),  # arrival step (it may go back)
        st.one_of(
            st.tuples(st.just("telemetry"), _telemetry),
            st.tuples(st.just("telemetry"), _telemetry),
            st.tuples(st.just("request"), _request),
            st.tuples(st.just("status"), _status),
            st.tuples(st.just("capacity"), _capacity),
            st.tuples(st.just("capacity"), _capacity),
            st.tuples(st.just("power"), _power),
            st.tuples(st.just("tick"), st.integers(-H, SKEW_MS)),
        ),
        st.integers(0, 9),  # 0: deliver it twice
    ),
    min_size=1,
    max_size=40,
)


def _resolve(kind: str, template: Any, arrival: int, s: Scheduler) -> dict[str, Any]:
    """The record a template stands for, at ``arrival`` (statuses pick an assignment the task has had)."""
    rec = dict(template)
    rec["ts"] = ts = arrival + template["ts"]
    for name in ("scheduled_departure", "deadline", "since"):
        if rec.get(name) is not None:
            rec[name] = ts + template[name]
    if kind == "status":
        task = s.tasks.get(rec["task_id"])
        known = [(task.assignment_id, task.vin)] if task and task.assignment_id else []
        known += [(aid, vin) for aid, vin, _ in (task.revoked if task else ())]
        pick, attempt = rec.pop("known"), rec.pop("attempt")
        if 0 <= pick < len(known):
            rec["assignment_id"], rec["vin"] = known[pick]
        else:
            rec["assignment_id"] = assignment_id_for(rec["task_id"], attempt)
    return rec


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


def _says_no(out: Out) -> bool:
    """A refusal, an end short of completion or a revoke: each must say why."""
    if out.topic == LIFECYCLE_TOPIC:
        return out.value["state"] in ("REJECTED", "EXPIRED", "FAILED", "PREEMPTED", "REQUEUED")
    return out.topic == ASSIGNMENTS_TOPIC and out.value["command"] == "REVOKE"


def _check_outputs(s: Scheduler, outs: list[Out]) -> None:
    for out in outs:
        assert _finite(out.value), out
        if out.topic == NODES_TOPIC:
            assert out.value["eligible"] or out.value["reason"], out
        if _says_no(out):
            assert out.value["reason"], out
    for out in outs:
        if out.topic != ASSIGNMENTS_TOPIC or out.value["command"] != "ASSIGN":
            continue
        task = s.tasks[out.value["task_id"]]
        if task.assignment_id != out.value["assignment_id"]:
            continue  # taken back later in the same step
        if out.value["vin"].startswith("site:"):
            site = s.sites[out.value["vin"].removeprefix("site:")]
            assert site.region == task.pool and task.placement != "FLEET" and task.task_id in site.running
            assert len(site.running) <= site.slots_total
            assert site.on_grid() or not s.cfg.spillover or task.placement == "DATACENTER", (site, task)
            continue
        node = s.nodes[out.value["vin"]]
        assert is_ready(evaluate(node, s.clock, s.cfg)[1]), (node, s.clock)
        assert node.soc_pct is not None and reading(node.soc_pct, "soc_pct") is not None
        assert node.compute_temp_c is None or reading(node.compute_temp_c, "compute_temp_c") is not None
        assert not node.invalid


def _step(s: Scheduler, kind: str, rec: dict[str, Any] | int, arrival: int) -> list[Out]:
    try:
        if kind == "telemetry":
            assert isinstance(rec, dict)
            return s.on_telemetry(rec, arrival_ms=arrival)
        if kind == "request":
            assert isinstance(rec, dict)
            return s.on_request(rec, arrival_ms=arrival)
        if kind == "status":
            assert isinstance(rec, dict)
            return s.on_status(rec, arrival_ms=arrival)
        if kind == "capacity":
            assert isinstance(rec, dict)
            return s.on_site_capacity(rec, arrival_ms=arrival)
        if kind == "power":
            assert isinstance(rec, dict)
            return s.on_site_power(rec, arrival_ms=arrival)
        assert isinstance(rec, int)
        return s.on_tick(rec)
    except (InvalidRecord, CarnivalStreamsError) as exc:  # the project's own: a rejection with a reason
        assert getattr(exc, "kind", None) and str(exc), exc
        return []


@pytest.mark.parametrize("config", ["default", "tight"])
@_fuzz(300)
@given(start=st.integers(-5 * YEAR, 5 * YEAR), events=_events)
def test_random_interleavings_of_extreme_records_keep_every_invariant(
    config: str, start: int, events: list[tuple[int, tuple[str, Any], int]]
) -> None:
    cfg = DEFAULT_CONFIG
    if config == "tight":  # short leases and timeouts, so that timers fire within a few steps
        cfg = replace(cfg, lease_s=30, claim_timeout_s=20, confirm_s=30, field_ttl_s=60, tombstone_ttl_s=120,
                      spill_after_s=10, late_status_s=60, node_ttl_s=1000, max_queued_tasks=3)  # fmt: skip
    s = Scheduler(cfg)
    arrival = max_arrival = T0 + start
    for step, (kind, template), repeat in events:
        arrival += step
        max_arrival = max(max_arrival, arrival)
        rec: dict[str, Any] | int
        if kind == "tick":  # as the worker's ticks: never past the latest arrival plus the skew
            rec = min(max(s.clock, arrival + template), max_arrival + SKEW_MS)
        else:
            rec = _resolve(kind, template, arrival, s)
        for _ in range(2 if repeat == 0 else 1):  # a duplicate: at-least-once delivery
            outs = _step(s, kind, rec, arrival)
            s.check_invariants()
            _check_outputs(s, outs)
            assert s.clock <= max_arrival + SKEW_MS, (s.clock, max_arrival)
    state = orjson.loads(orjson.dumps(s.to_dict()))
    assert state == s.to_dict()  # JSON-safe: no NaN or infinity in the state
    Scheduler.from_dict(state, cfg).check_invariants()


@_fuzz(1000)
@given(template=_telemetry)
def test_one_telemetry_record_never_makes_a_car_eligible_on_an_unusable_value(
    template: dict[str, Any],
) -> None:
    record = _resolve("telemetry", template, T0, Scheduler())
    record["ts"] = T0
    node = NodeState(vin=record["vin"])
    apply_telemetry(node, record, DEFAULT_CONFIG)
    eligible, reason = evaluate(node, T0, DEFAULT_CONFIG)
    assert eligible or reason
    if eligible:
        soc = reading(record["soc_pct"], "soc_pct")
        assert soc is not None and soc >= DEFAULT_CONFIG.min_soc_pct
        assert (
            record["compute_temp_c"] is None
            or reading(record["compute_temp_c"], "compute_temp_c") is not None
        )


@_fuzz(500)
@given(attempt=st.integers(0, 2**31 - 1), aid_attempt=st.integers(0, 2**31 - 1), done=st.booleans())
def test_status_routing_is_bounded_whatever_the_attempt(attempt: int, aid_attempt: int, done: bool) -> None:
    route = {"pool": "r0", "attempt": attempt, "done": done, "held": []}
    aid = assignment_id_for("T", aid_attempt)
    expected = done or 0 < aid_attempt <= attempt and attempt - aid_attempt < ATTEMPT_LOOKBACK
    assert TaskRouter.routable("T", route, aid) == expected


_site_events = st.lists(
    st.tuples(
        st.sampled_from([0, S, 10 * S, MIN, 3 * MIN]),
        st.one_of(
            st.tuples(st.just("capacity"), st.fixed_dictionaries({
                "slots_total": st.integers(0, 4), "free": st.integers(0, 4),
                "power_budget_mw": st.sampled_from([None, 0.0, 0.00035, 0.0007, 0.0014]),
            })),
            st.tuples(st.just("power"), st.sampled_from(POWER)),
            st.tuples(st.just("request"), st.fixed_dictionaries({
                "task_id": st.sampled_from(TASKS), "priority": st.integers(0, 9),
                "est_duration_s": st.sampled_from([300, 1800, 2 * 3600]),
                "placement": st.sampled_from(["ANY", "ANY", "FLEET", "DATACENTER"]),
            })),
            st.tuples(st.just("telemetry"), st.sampled_from(VINS)),
            st.tuples(st.just("status"), st.tuples(
                st.sampled_from(TASKS),
                st.sampled_from(["STARTED", "COMPLETED", "FAILED", "node_unavailable", "owner_returned"]),
            )),
            st.tuples(st.just("tick"), st.just(0)),
        ),
    ),
    min_size=1,
    max_size=60,
)  # fmt: skip


@pytest.mark.parametrize("spillover", [True, False])
@_fuzz(300)
@given(events=_site_events)
def test_sites_under_random_power_and_capacity_keep_every_invariant(
    spillover: bool, events: list[tuple[int, tuple[str, Any]]]
) -> None:
    """A site of pool r0 beside its cars, its power and capacity changing at random while work comes and
    goes: the invariants hold, and after each power state at RESERVE or SHEDDING the site runs no more
    sessions than its budget allows, except those that may not move (pinned or important ones)."""
    cfg = replace(DEFAULT_CONFIG, spillover=spillover, claim_timeout_s=120, lease_s=600)
    s = Scheduler(cfg)
    now = T0
    for step, (kind, arg) in events:
        now += step
        rec: dict[str, Any] | int
        if kind == "capacity":
            total = arg["slots_total"]
            rec = {"site_id": "dc0", "ts": now, "region": "r0", "slots_total": total,
                   "slots_free": min(arg["free"], total), "power_budget_mw": arg["power_budget_mw"],
                   "cost_per_slot_hour": None}  # fmt: skip
        elif kind == "power":
            rec = {"site_id": "dc0", "ts": now, "state": arg, "since": now, "battery_runtime_min": 10.0,
                   "incident_id": None, "load_mw": 1.0, "battery_soc_pct": None,
                   "grid_since": None}  # fmt: skip
        elif kind == "request":
            rec = {**arg, "ts": now, "tenant": "acme", "kind": "browse", "deadline": None, "min_hw": "HW4",
                   "region": "r0", "min_soc_pct": None}  # fmt: skip
        elif kind == "telemetry":
            rec = {"vin": arg, "ts": now, "hw": "HW4", "region": "r0", "charge_state": "CHARGING",
                   "gear": "P", "soc_pct": 80.0, "charge_limit_pct": 90.0, "minutes_to_full": None,
                   "scheduled_departure": None, "at_home": True, "opted_in": True, "compute_temp_c": 40.0,
                   "software_version": None}  # fmt: skip
        elif kind == "status":
            task = s.tasks.get(arg[0])
            if task is None or task.vin is None or task.assignment_id is None:
                continue
            st_, error = (
                (arg[1], None) if arg[1] in ("STARTED", "COMPLETED", "FAILED") else ("FAILED", arg[1])
            )
            rec = {"task_id": task.task_id, "assignment_id": task.assignment_id, "vin": task.vin, "ts": now,
                   "status": st_, "error": error}  # fmt: skip
        else:
            rec = now
        outs = _step(s, kind, rec, now)
        s.check_invariants()
        _check_outputs(s, outs)
        site = s.sites.get("dc0")
        if kind == "power" and site is not None and site.power_state in ("RESERVE", "SHEDDING") and spillover:
            budget = site.session_budget(cfg)
            movable = [
                t for t in site.running
                if s.tasks[t].placement == "ANY" and s.tasks[t].priority <= cfg.shed_max_priority
            ]  # fmt: skip
            assert not movable or (budget is not None and len(site.running) <= budget), (site, movable)
        if not spillover:
            assert not [o for o in outs if o.topic == "sites.spillover.v1"]
    Scheduler.from_dict(orjson.loads(orjson.dumps(s.to_dict())), cfg).check_invariants()
