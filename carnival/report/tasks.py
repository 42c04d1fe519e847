"""Tasks: what was asked and what became of it, checked against what the emulators really did.

Also the eligibility check: no ASSIGN may go to a car the truth says could not take work at that
moment (not opted in, older than HW4, or not plugged in and parked). The scheduler can only know what
telemetry told it, so a car counts as eligible for ``tolerance_s`` after its cable came out: the data
timeout lease (``lease_s`` of the scheduler, 120 s by default) is how long the scheduler trusts a car's
last report. Before a car plugs in there is no tolerance: nothing could have reported it plugged.
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Any

from carnival.report.model import Section, pct, quantile
from carnival.report.runs import Run
from carnival.report.truth import GroundTruth
from streams.sites import is_site_vin

QUEUED_STATES = ("REQUESTED", "QUEUED", "REQUEUED")
RUNNING_STATES = ("ASSIGNED", "STARTED")
END_GRACE_MS = 1_000  # a completion reported within this of the run's end may not have been emitted


def check_tasks(
    truth: GroundTruth,
    requested_ids: set[str],
    latest_state: dict[str, str],
    waits: list[tuple[int, float | None]],
    lifecycle_runs: dict[str, Run],
    preemptions: dict[str, int],
    withdrawn: dict[str, int] | None = None,
    reported: dict[str, int] | None = None,
) -> Section:
    """``waits``: (priority, seconds from request to first ASSIGNED or None) per requested task;
    ``preemptions``: PREEMPTED lifecycle events by reason; ``withdrawn``: assignment_id -> when the
    scheduler first ended it (REQUEUED, PREEMPTED or EXPIRED); ``reported``: assignment_id -> the event
    time of the node's first COMPLETED status (the time the pipeline judges it by)."""
    section = Section("Tasks")
    truth_ids = {str(t["task_id"]) for t in truth.tasks}
    states = Counter(latest_state.get(t, "NO_STATE") for t in requested_ids)
    queued = sum(states[s] for s in QUEUED_STATES)
    running = sum(states[s] for s in RUNNING_STATES)
    section.lines.append(
        f"requested {len(truth_ids):,} (simulator) / {len(requested_ids):,} (task_requests); "
        f"completed {states['COMPLETED']:,}, failed {states['FAILED']:,}, expired {states['EXPIRED']:,}, "
        f"rejected {states['REJECTED']:,}, still queued {queued:,}, running {running:,}"
    )
    missing = truth_ids - requested_ids
    section.check("every requested task reached ClickHouse", not missing, f"{len(missing)} missing")
    section.check(
        "every task has a lifecycle state",
        states["NO_STATE"] == 0,
        f"{states['NO_STATE']} requested tasks the scheduler never recorded",
    )
    _completions(section, truth, latest_state, withdrawn or {}, reported or {})
    _waits(section, waits)
    _preemptions(section, truth, lifecycle_runs, preemptions)
    return section


def _completions(
    section: Section,
    truth: GroundTruth,
    latest_state: dict[str, str],
    withdrawn: dict[str, int],
    reported: dict[str, int],
) -> None:
    """A task an emulator completed must end COMPLETED, unless the scheduler had already taken that
    assignment back (requeued, preempted or expired it) before the completion: the REVOKE reached the
    node too late, and the work is wasted but not lost by the pipeline. The completion's time is the
    event time of the node's COMPLETED status where it reached ClickHouse (the node reports a moment
    after the session ends, and that report is all the pipeline sees), else the session's end."""
    completing = [s for s in truth.sessions if s["outcome"] == "COMPLETED"]
    done = {s["task_id"] for s in completing}
    marked = {t for t, s in latest_state.items() if s == "COMPLETED"}
    late_revoke, lost = set(), set()
    for s in completing:
        task = s["task_id"]
        if task in marked or s["ended_at"] >= truth.end_ms - END_GRACE_MS:
            continue
        taken_back = withdrawn.get(s["assignment_id"])
        completed_at = reported.get(s["assignment_id"], s["ended_at"])
        if taken_back is not None and taken_back <= completed_at:
            late_revoke.add(task)
        else:
            lost.add(task)
    lost -= marked
    late_revoke -= lost
    invented = marked - done
    section.lines.append(
        f"completed by an emulator: {len(done):,} tasks; COMPLETED in the lifecycle {len(marked):,}; "
        f"{len(late_revoke):,} finished after the scheduler had taken the assignment back (wasted work)"
    )
    section.check(
        "completions match the emulators' truth",
        not lost and not invented,
        f"{len(lost)} completed in time but not marked COMPLETED, {len(invented)} marked but never completed"
        + (f" (e.g. {sorted(lost | invented)[0]})" if lost or invented else ""),
    )


def _waits(section: Section, waits: list[tuple[int, float | None]]) -> None:
    section.lines.append("wait to first assignment by priority (s):  tasks  never   p50     p95     p99")
    for priority in sorted({p for p, _ in waits}, reverse=True):
        values = [w for p, w in waits if p == priority and w is not None]
        never = sum(1 for p, w in waits if p == priority and w is None)
        cells = [quantile(values, q) for q in (0.5, 0.95, 0.99)]
        section.lines.append(
            f"  priority {priority}: {len(values) + never:>31,} {never:>6,} "
            + " ".join(f"{c:>7,.0f}" if c is not None else "      -" for c in cells)
        )


def _preemptions(
    section: Section, truth: GroundTruth, runs: dict[str, Run], preemptions: dict[str, int]
) -> None:
    task_hours = sum(r.seconds(truth.end_ms) for r in runs.values()) / 3600
    per_100 = (
        ", ".join(
            f"{reason} {100 * n / task_hours:.1f}"
            for reason, n in sorted(preemptions.items(), key=lambda x: -x[1])
        )
        if task_hours
        else "n/a"
    )
    section.lines.append(
        f"preemptions: {sum(preemptions.values())} over {task_hours:,.1f} task-hours; per 100 task-hours "
        f"by cause: {per_100 or 'none'}"
    )
    idle_hours = eligible_node_hours(truth)
    section.lines.append(
        f"eligible idle node-hours (truth: opted in, HW4+, plugged in): {idle_hours:,.1f}; used by tasks "
        f"{task_hours:,.1f} ({pct(task_hours, idle_hours)})"
    )


def eligible_node_hours(truth: GroundTruth) -> float:
    total_ms = 0
    for vin, intervals in truth.plugged.items():
        if truth.can_compute(vin):
            for plug, unplug in intervals:
                total_ms += max(0, min(unplug, truth.end_ms) - max(plug, truth.start_ms))
    return total_ms / 3_600_000


def ineligible_assignments(
    truth: GroundTruth, assigns: list[dict[str, Any]], tolerance_s: float
) -> list[tuple[dict[str, Any], str]]:
    """(ASSIGN row, why) for each assignment to a car that could not take work at its ``ts_ms``. A
    datacenter site (node id ``site:<site_id>``) is no car: its capacity is its own report."""
    starts = {vin: [p for p, _ in iv] for vin, iv in truth.plugged.items()}
    out = []
    for row in assigns:
        vin, ts = row["vin"], int(row["ts_ms"])
        car = truth.cars.get(vin)
        if is_site_vin(vin):
            continue
        if car is None:
            out.append((row, "not a simulated car"))
        elif not car.get("opted_in"):
            out.append((row, "not opted in"))
        elif not truth.can_compute(vin):
            out.append((row, f"hardware {car.get('hw')}"))
        else:
            intervals = truth.plugged.get(vin, [])
            i = bisect.bisect_right(starts.get(vin, []), ts) - 1
            if i < 0 or ts > intervals[i][1] + tolerance_s * 1000:
                gone = "" if i < 0 else f", unplugged {(ts - intervals[i][1]) / 1000:,.0f} s before"
                out.append((row, "not plugged in" + gone))
    return out


def check_eligibility(truth: GroundTruth, assigns: list[dict[str, Any]], tolerance_s: float) -> Section:
    section = Section("Assignments vs the truth's eligibility")
    bad = ineligible_assignments(truth, assigns, tolerance_s)
    to_sites = sum(is_site_vin(row["vin"]) for row in assigns)
    section.lines.append(
        f"{len(assigns):,} ASSIGN commands ({to_sites:,} to datacenter sites, not checked here); a car "
        f"counts as plugged in up to {tolerance_s:g} s after its cable came out (the scheduler's "
        "data-timeout lease: it acts on the last report it has)"
    )
    for row, why in bad[:10]:
        section.lines.append(f"  {row['assignment_id']} -> {row['vin']} at ts {row['ts_ms']}: {why}")
    section.check(
        "no task assigned to an ineligible car",
        not bad,
        f"{len(bad)} of {len(assigns):,} assignments went to a car that could not take work",
    )
    return section


def round_trips(
    assigns: list[dict[str, Any]], status_runs: dict[str, Run], claim_timeout_s: float
) -> Section:
    """How long an ASSIGN took to come back as STARTED, in simulated time (no check: a measurement).

    The scheduler stamps an ASSIGN with its own event-time clock, so its lag behind the simulator counts
    here too; a run that starts after the claim timeout was already revoked and requeued."""
    section = Section("Assignment round trip (ASSIGN -> STARTED, simulated seconds)")
    at = {r["assignment_id"]: int(r["ts_ms"]) for r in assigns}
    trips = [(run.started_ms - at[aid]) / 1000 for aid, run in status_runs.items() if aid in at]
    cells = " ".join(
        f"p{int(q * 100)} {v:,.0f}" for q in (0.5, 0.95, 0.99) if (v := quantile(trips, q)) is not None
    )
    late = sum(1 for t in trips if t > claim_timeout_s)
    section.lines.append(
        f"{len(trips):,} runs: {cells or 'none'}; {late:,} started after the {claim_timeout_s:g} s claim "
        "timeout (revoked and requeued while running: their work is not counted)"
    )
    return section
