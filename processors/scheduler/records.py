"""Output records: plain dicts shaped like the derived topics' Avro schemas (timestamps as epoch ms)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from processors.scheduler.config import SchedulerConfig
from processors.scheduler.eligibility import NodeState
from processors.scheduler.prediction import idle_until
from processors.scheduler.tasks import Task
from streams.topics import ASSIGNMENTS_TOPIC, LIFECYCLE_TOPIC, NODES_TOPIC

__all__ = [
    "ASSIGNMENTS_TOPIC",
    "HANDOFF",
    "LIFECYCLE_TOPIC",
    "NODES_TOPIC",
    "Out",
    "assignment_record",
    "lifecycle_record",
    "node_record",
]

# Not a public topic: an any-region task handed to another pool's scheduler instance. The wiring
# re-publishes ``value`` (a Task dict) on the matcher's internal request topic under key = pool.
HANDOFF = "scheduler.handoff"


@dataclass(frozen=True, slots=True)
class Out:
    topic: str
    key: str
    value: dict[str, Any]


def node_record(node: NodeState, now: int, cfg: SchedulerConfig) -> Out:
    value = {
        "vin": node.vin,
        "ts": max(node.ts, 0),
        "eligible": node.eligible,
        "reason": node.reason,
        "region": node.region,
        "hw": node.hw,
        "soc_pct": node.soc_pct,
        "charge_state": node.charge_state,
        "gear": node.gear,
        "scheduled_departure": node.scheduled_departure,
        "at_home": node.at_home,
        "minutes_to_full": node.minutes_to_full,
        "idle_until": idle_until(node, now, cfg) if node.eligible or node.running else None,
        "lease_expires_at": node.lease_ts + int(cfg.lease_s * 1000) if node.lease_ts >= 0 else None,
        "reliability": round(node.reliability, 4),
        "capacity": node.capacity,
        "running": len(node.running),
        "pool": node.pool,
    }
    return Out(NODES_TOPIC, node.vin, value)


def assignment_record(
    task: Task, command: str, vin: str, aid: str, now: int, cfg: SchedulerConfig, reason: str | None = None
) -> Out:
    value = {
        "assignment_id": aid,
        "command": command,
        "task_id": task.task_id,
        "vin": vin,
        "ts": now,
        "reason": reason,
        "tenant": task.tenant,
        "kind": task.kind,
        "priority": task.priority,
        "deadline": task.deadline,
        "lease_expires_at": (task.assigned_ts or now) + int(cfg.claim_timeout_s * 1000)
        if command == "ASSIGN"
        else None,
        "pool": task.pool,
        "attempt": task.attempt,
        "est_duration_s": task.est_duration_s,
    }
    return Out(ASSIGNMENTS_TOPIC, vin, value)


def lifecycle_record(
    task: Task,
    state: str,
    now: int,
    *,
    vin: str | None = None,
    aid: str | None = None,
    reason: str | None = None,
    attempt: int | None = None,
) -> Out:
    """``attempt``: the attempt ``aid`` belongs to, when it is not the task's latest (a late report)."""
    value = {
        "task_id": task.task_id,
        "ts": now,
        "state": state,
        "vin": vin,
        "assignment_id": aid,
        "reason": reason,
        "tenant": task.tenant,
        "kind": task.kind,
        "priority": task.priority,
        "attempt": attempt or task.attempt or None,
        "pool": task.pool,
    }
    return Out(LIFECYCLE_TOPIC, task.task_id, value)
