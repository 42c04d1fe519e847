"""Tasks as the matcher sees them: requirements, state, queue order, deterministic assignment ids.

Queue order is *effective priority* with aging: ``priority + aging_per_min * minutes_waited``, where
the wait counts from the original request. Because every waiting task ages at the same rate, the
order between two tasks never changes over time, so it is a static sort key: the "virtual request
time" ``requested_ts - priority * 60000 / aging_per_min`` (earlier = first), ties by request time and
task_id. A priority-0 task therefore overtakes a newer priority-9 task once it has waited
``9 / aging_per_min`` minutes longer: low priority work is never starved. A preempted or failed task
keeps its original request time, so it goes back ahead of newer work of equal priority.

``revoked`` remembers the last ``MAX_REVOKED`` assignments the scheduler took back (assignment_id, vin,
event time of the REVOKE): a node's COMPLETED that was sent before that moment but arrives after it
still completes the task (``late_status_s`` in the config), as it would have in order.

``excluded`` lists the nodes that must not get the task again (the last ``MAX_EXCLUDED``): each one
reported its owner back or refused the task as unavailable during this task's life.

Deadlines: a task can finish in time only if it starts by ``latest_start = deadline - fit *
est_duration_s`` (``fit`` = ``SchedulerConfig.deadline_fit``, 1 = the whole estimate). A task that
cannot (at its request, when requeued or handed over, or while it waits) ends EXPIRED with reason
``CANNOT_FINISH_BY_DEADLINE`` instead of being started and killed at the deadline.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

from processors.scheduler._time import opt_ms, to_ms
from processors.scheduler.config import HW_RANK, SchedulerConfig

__all__ = [
    "ACTIVE",
    "CANNOT_FINISH",
    "MAX_ATTEMPT",
    "MAX_EXCLUDED",
    "MAX_REVOKED",
    "TERMINAL",
    "Task",
    "assignment_id_for",
    "effective_priority",
    "finishes_in_time",
    "order_key",
    "validate_request",
]

# Internal task states. QUEUED/ASSIGNED/RUNNING are active; MOVED = handed to another pool's instance.
QUEUED, ASSIGNED, RUNNING = "QUEUED", "ASSIGNED", "RUNNING"
COMPLETED, FAILED, EXPIRED, REJECTED, MOVED = "COMPLETED", "FAILED", "EXPIRED", "REJECTED", "MOVED"
ACTIVE = frozenset({QUEUED, ASSIGNED, RUNNING})
TERMINAL = frozenset({COMPLETED, FAILED, EXPIRED, REJECTED, MOVED})

MAX_REVOKED = 4  # previous assignments remembered per task (for late COMPLETED reports)
MAX_ATTEMPT = 1000  # assignments of one task; at that many the task ends FAILED (MAX_ATTEMPTS)
MAX_EXCLUDED = 8  # nodes a task remembers never to go back to (owner back, refused): a bounded list
CANNOT_FINISH = "CANNOT_FINISH_BY_DEADLINE"  # EXPIRED reason: now + est_duration_s is past the deadline

_PLACEMENTS = frozenset({"ANY", "FLEET", "DATACENTER"})  # a symbol added later reads as ANY (the default)
_NAMESPACE = uuid.UUID("6f1c2f8e-6a55-4d0b-9c7e-2b8f3c5a9d10")  # Carnival assignments


def assignment_id_for(task_id: str, attempt: int) -> str:
    """Deterministic, so a replayed decision produces the very same id (downstream dedups by it)."""
    return str(uuid.uuid5(_NAMESPACE, f"{task_id}/{attempt}"))


@dataclass(slots=True)
class Task:
    task_id: str
    pool: str
    requested_ts: int
    priority: int
    est_duration_s: int
    min_hw: str = "OTHER"
    region: str | None = None
    min_soc_pct: float | None = None
    deadline: int | None = None
    tenant: str | None = None
    kind: str | None = None
    state: str = QUEUED
    attempt: int = 0  # assignments made so far; the current one is number ``attempt``
    failures: int = 0
    preemptions: int = 0
    vin: str | None = None
    assignment_id: str | None = None
    assigned_ts: int | None = None
    queued_ts: int | None = None  # when it (re)entered the current pool's queue
    done_ts: int | None = None
    hops: int = 0  # any-region pool hand-offs
    revoked: tuple[tuple[str, str, int], ...] = ()  # (assignment_id, vin, revoked at), oldest first
    excluded: tuple[str, ...] = ()  # vins never to be offered this task again, oldest first
    placement: str = "ANY"  # ANY, FLEET or DATACENTER (processors/scheduler/placement.py)
    moved_by: str | None = None  # why it left a site (SHED_*), named again when it is next assigned
    moved_from: str | None = None  # the site it left (with moved_by)

    def to_dict(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]
        d["revoked"] = [list(r) for r in self.revoked]
        d["excluded"] = list(self.excluded)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Task:
        """Also reads states written before ``revoked`` existed (no previous assignments known)."""
        kw = {k: v for k, v in d.items() if k in cls.__slots__}  # type: ignore[attr-defined]
        kw["revoked"] = tuple((str(a), str(v), int(t)) for a, v, t in d.get("revoked") or ())
        kw["excluded"] = tuple(str(v) for v in d.get("excluded") or ())
        return cls(**kw)

    def exclude(self, vin: str) -> None:
        if vin not in self.excluded:
            self.excluded = (*self.excluded, vin)[-MAX_EXCLUDED:]

    def latest_start(self, fit: float = 1.0) -> int | None:
        """The last event time (ms) at which the task can start and still finish by its deadline, if it
        runs ``fit`` x its estimate."""
        return None if self.deadline is None else self.deadline - int(self.est_duration_s * 1000 * fit)

    def remember_revoke(self, aid: str, vin: str, at: int) -> None:
        self.revoked = (*self.revoked, (aid, vin, at))[-MAX_REVOKED:]

    def revoked_at(self, aid: str, vin: str | None) -> int | None:
        """When assignment ``aid`` held by ``vin`` was taken back, or None if it is not remembered."""
        return next((at for a, v, at in self.revoked if a == aid and v == vin), None)

    @classmethod
    def from_request(cls, rec: dict[str, Any], pool: str) -> Task:
        return cls(
            task_id=rec["task_id"],
            pool=pool,
            requested_ts=to_ms(rec["ts"]),
            priority=int(rec["priority"]),
            est_duration_s=int(rec["est_duration_s"]),
            min_hw=rec.get("min_hw") or "OTHER",
            region=rec.get("region"),
            min_soc_pct=None if rec.get("min_soc_pct") is None else float(rec["min_soc_pct"]),
            deadline=opt_ms(rec.get("deadline")),
            tenant=rec.get("tenant"),
            kind=rec.get("kind"),
            placement=str(rec["placement"]) if rec.get("placement") in _PLACEMENTS else "ANY",
        )


def validate_request(rec: dict[str, Any], cfg: SchedulerConfig) -> str | None:
    """A REJECTED reason for an impossible request, or None. (A passed deadline is EXPIRED instead.)"""
    if not rec.get("task_id"):
        return "INVALID_TASK_ID"
    prio = rec.get("priority")
    if not isinstance(prio, int) or isinstance(prio, bool) or not 0 <= prio <= 9:
        return "INVALID_PRIORITY"
    dur = rec.get("est_duration_s")
    if not isinstance(dur, int) or isinstance(dur, bool) or dur <= 0:
        return "INVALID_DURATION"
    if dur > cfg.max_task_duration_s:
        return "DURATION_TOO_LONG"
    if (rec.get("min_hw") or "OTHER") not in HW_RANK:
        return "INVALID_MIN_HW"
    soc = rec.get("min_soc_pct")
    if soc is not None and (not isinstance(soc, int | float) or math.isnan(soc) or not 0 <= soc <= 100):
        return "INVALID_MIN_SOC"
    region = rec.get("region")
    if region is not None and cfg.pools and region not in cfg.pools:
        return "UNKNOWN_REGION"
    return None


def order_key(task: Task, cfg: SchedulerConfig) -> tuple[float, int, str]:
    """Static queue key (smaller = served first); see the module docstring."""
    if cfg.aging_per_min > 0:
        virtual = task.requested_ts - task.priority * 60_000.0 / cfg.aging_per_min
    else:
        virtual = -task.priority * 1e15 + task.requested_ts
    return (virtual, task.requested_ts, task.task_id)


def finishes_in_time(task: Task, now: int, fit: float = 1.0) -> bool:
    """Whether ``task``, started at ``now``, can end by its deadline (always, without one)."""
    start_by = task.latest_start(fit)
    return start_by is None or now <= start_by


def effective_priority(task: Task, now: int, cfg: SchedulerConfig) -> float:
    return task.priority + cfg.aging_per_min * max(0, now - task.requested_ts) / 60_000.0
