"""Shared builders for the scheduler tests (imported by the other test_scheduler_* modules)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from processors.scheduler import DEFAULT_CONFIG, Out, Scheduler, SchedulerConfig

# Monday 2025-01-06 22:00 in us-west (UTC-8) = Tuesday 06:00 UTC.
T0 = int(datetime(2025, 1, 7, 6, 0, tzinfo=UTC).timestamp() * 1000)
S = 1000  # one second in ms
MIN = 60 * S
H = 60 * MIN


def tel(vin: str, ts: int, **kw: Any) -> dict[str, Any]:
    """A telemetry record of an eligible car; keyword arguments override fields (None = not reported)."""
    rec: dict[str, Any] = {
        "vin": vin,
        "ts": ts,
        "hw": "HW4",
        "region": "us-west",
        "charge_state": "CHARGING",
        "gear": "P",
        "soc_pct": 80.0,
        "charge_limit_pct": 90.0,
        "minutes_to_full": None,
        "scheduled_departure": None,
        "at_home": True,
        "opted_in": True,
        "compute_temp_c": 50.0,
        "software_version": "2025.2.1",
    }
    rec.update(kw)
    return rec


def req(task_id: str, ts: int, **kw: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "task_id": task_id,
        "ts": ts,
        "tenant": "acme",
        "kind": "browse",
        "priority": 5,
        "est_duration_s": 1800,
        "deadline": None,
        "min_hw": "HW4",
        "region": "us-west",
        "min_soc_pct": None,
    }
    rec.update(kw)
    return rec


def status(task_id: str, aid: str, vin: str, ts: int, st: str, error: str | None = None) -> dict[str, Any]:
    return {"task_id": task_id, "assignment_id": aid, "vin": vin, "ts": ts, "status": st, "error": error}


def capacity(site_id: str, ts: int, **kw: Any) -> dict[str, Any]:
    """A sites.capacity.v1 record of a us-west site with 10 free slots of 10; keywords override."""
    rec: dict[str, Any] = {"site_id": site_id, "ts": ts, "region": "us-west", "slots_total": 10,
                           "slots_free": 10, "power_budget_mw": None, "cost_per_slot_hour": 0.4}  # fmt: skip
    rec.update(kw)
    return rec


def power_state(site_id: str, ts: int, state: str, **kw: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"site_id": site_id, "ts": ts, "state": state, "since": ts,
                           "battery_runtime_min": None, "incident_id": None, "load_mw": None,
                           "battery_soc_pct": None, "grid_since": None}  # fmt: skip
    rec.update(kw)
    return rec


def cfg(**kw: Any) -> SchedulerConfig:
    return replace(DEFAULT_CONFIG, **kw)


class Harness:
    """A Scheduler that checks its invariants after every call and keeps every output."""

    def __init__(self, config: SchedulerConfig | None = None, sched: Scheduler | None = None) -> None:
        self.s = sched or Scheduler(config)
        self.log: list[Out] = []

    def _run(self, outs: list[Out]) -> list[Out]:
        self.s.check_invariants()
        self.log.extend(outs)
        return outs

    def tel(self, vin: str, ts: int, **kw: Any) -> list[Out]:
        return self._run(self.s.on_telemetry(tel(vin, ts, **kw)))

    def req(self, task_id: str, ts: int, **kw: Any) -> list[Out]:
        return self._run(self.s.on_request(req(task_id, ts, **kw)))

    def status(self, task_id: str, ts: int, st: str, aid: str | None = None, vin: str | None = None,
               error: str | None = None) -> list[Out]:  # fmt: skip
        task = self.s.tasks[task_id]
        aid = aid or task.assignment_id or "none"
        vin = vin or task.vin or "none"
        return self._run(self.s.on_status(status(task_id, aid, vin, ts, st, error)))

    def tick(self, now: int) -> list[Out]:
        return self._run(self.s.on_tick(now))

    def cap(self, site_id: str, ts: int, **kw: Any) -> list[Out]:
        return self._run(self.s.on_site_capacity(capacity(site_id, ts, **kw)))

    def power(self, site_id: str, ts: int, state: str, **kw: Any) -> list[Out]:
        return self._run(self.s.on_site_power(power_state(site_id, ts, state, **kw)))

    def holder(self, task_id: str) -> str | None:
        return self.s.tasks[task_id].vin


def states(outs: list[Out], task_id: str | None = None) -> list[str]:
    return [o.value["state"] for o in outs if o.topic == "tasks.lifecycle.v1" and task_id in (None, o.key)]


def commands(outs: list[Out]) -> list[tuple[str, str, str]]:
    return [
        (o.value["command"], o.value["task_id"], o.key) for o in outs if o.topic == "tasks.assignments.v1"
    ]


def node_records(outs: list[Out], vin: str) -> list[dict[str, Any]]:
    return [o.value for o in outs if o.topic == "fleet.nodes.v1" and o.key == vin]


def test_support_builds_an_eligible_node() -> None:
    h = Harness()
    recs = node_records(h.tel("V1", T0), "V1")
    assert recs[-1]["eligible"] is True and recs[-1]["reason"] is None
