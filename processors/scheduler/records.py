"""Output records: plain dicts shaped like the derived topics' Avro schemas (timestamps as epoch ms)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from processors.scheduler.config import SchedulerConfig
from processors.scheduler.eligibility import NodeState
from processors.scheduler.prediction import idle_until
from processors.scheduler.sites import SiteState
from processors.scheduler.tasks import Task
from streams.sites import site_of
from streams.topics import ALERTS_TOPIC, ASSIGNMENTS_TOPIC, LIFECYCLE_TOPIC, NODES_TOPIC, SPILLOVER_TOPIC

__all__ = [
    "ASSIGNMENTS_TOPIC",
    "HANDOFF",
    "LIFECYCLE_TOPIC",
    "NODES_TOPIC",
    "Out",
    "assignment_record",
    "lifecycle_record",
    "node_record",
    "spillover_alert",
    "spillover_record",
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
        "site_id": site_of(vin),
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
    site_id: str | None = None,
) -> Out:
    """``attempt``: the attempt ``aid`` belongs to, when it is not the task's latest (a late report).
    ``site_id``: the site involved when ``vin`` is not that site (the one a task moved off to a car)."""
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
        "site_id": site_id or site_of(vin),
    }
    return Out(LIFECYCLE_TOPIC, task.task_id, value)


def _episode_summary(site: SiteState, ended: bool) -> str:
    ep = site.episode
    assert ep is not None
    text = (
        f"{site.site_id} off the grid ({ep.worst_state} at worst): {ep.tasks_spilled} queued tasks spilled "
        f"and {ep.sessions_shed} sessions shed to {site.region} cars, {ep.slot_hours_shifted:.1f} slot-hours"
    )
    if ep.battery_minutes_saved:
        text += f", {ep.battery_minutes_saved:.1f} battery minutes saved"
    return text + ("; back on the grid, taking work again" if ended else "")


def spillover_record(site: SiteState, state: str, now: int) -> Out:
    """The ``sites.spillover.v1`` record of ``site``'s episode so far (OPEN, UPDATE or RESOLVED)."""
    ep = site.episode
    assert ep is not None and site.region is not None
    value = {
        "episode_id": f"{site.site_id}:{ep.started_at}",
        "site_id": site.site_id,
        "region": site.region,
        "state": state,
        "started_at": ep.started_at,
        "ended_at": now if state == "RESOLVED" else None,
        "updated_at": now,
        "worst_state": ep.worst_state,
        "tasks_spilled": ep.tasks_spilled,
        "sessions_shed": ep.sessions_shed,
        "slot_hours_shifted": round(ep.slot_hours_shifted, 4),
        "battery_minutes_saved": None
        if ep.battery_minutes_saved is None
        else round(ep.battery_minutes_saved, 2),
        "incident_id": ep.incident_id,
        "summary": _episode_summary(site, state == "RESOLVED"),
    }
    return Out(SPILLOVER_TOPIC, site.site_id, value)


def spillover_alert(site: SiteState, resolved: bool, now: int) -> Out:
    """One alert per episode: FIRING when the site stops taking work, RESOLVED with the episode's summary."""
    ep = site.episode
    assert ep is not None
    episode_id = f"{site.site_id}:{ep.started_at}"
    fingerprint = hashlib.sha256(f"spillover|{episode_id}".encode()).hexdigest()[:16]
    labels = {
        "alertname": "CarnivalSpillover",
        "kind": "SPILLOVER",
        "site_id": site.site_id,
        "region": site.region or "",
        "episode_id": episode_id,
        "power_state": ep.worst_state,
        "tasks_moved": str(ep.moved),
        "team": "fleet-scheduling",
        "runbook": "docs/spillover.md",
    }
    value = {
        "fingerprint": fingerprint,
        "status": "RESOLVED" if resolved else "FIRING",
        "severity": "warning",
        "kind": "SPILLOVER",
        "site_id": site.site_id,
        "region": site.region,
        "summary": _episode_summary(site, resolved),
        "starts_at": ep.started_at,
        "ends_at": now if resolved else None,
        "labels": labels,
        "incident_id": ep.incident_id,
    }
    return Out(ALERTS_TOPIC, fingerprint, value)
