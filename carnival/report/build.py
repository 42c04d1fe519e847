"""From fetched rows and the truth to report sections: the glue between queries and checks."""

from __future__ import annotations

from collections import Counter
from typing import Any

from carnival.report.alerts import check_alerts
from carnival.report.ledger import check_ledger
from carnival.report.model import Section
from carnival.report.power import check_power, incident_from_row
from carnival.report.runs import LIFECYCLE_ENDS, STATUS_ENDS, build_runs
from carnival.report.spillover import spillover_section
from carnival.report.tasks import check_eligibility, check_tasks, round_trips
from carnival.report.truth import GroundTruth

WITHDRAWN = ("REQUEUED", "PREEMPTED", "EXPIRED")  # the scheduler took an assignment back


def build_sections(
    truth: GroundTruth,
    rows: dict[str, list[dict[str, Any]]],
    late_dead_letters: list[tuple[str, str, int]],
    lease_s: float,
    claim_timeout_s: float,
) -> list[Section]:
    """Every checked section; ``rows`` as returned by ``queries.fetch``. Task rows are kept to the
    tasks this run requested, ledger rows to its cars."""
    tasks = {r["task_id"] for r in rows["requests"]}
    mine = {name: [r for r in rows[name] if r["task_id"] in tasks]
            for name in ("task_states", "lifecycle_runs", "assigns", "status", "task_moves")}  # fmt: skip
    ledger = [r for r in rows["ledger"] if r["vin"] in truth.cars]
    states = {r["task_id"]: r for r in mine["task_states"]}
    waits: list[tuple[int, float | None]] = []
    for r in rows["requests"]:
        s = states.get(r["task_id"])
        assigned = s["assigned_ms"] if s is not None and s["assignments"] else None
        waits.append(
            (int(r["priority"]), None if assigned is None else (assigned - r["requested_ms"]) / 1000)
        )
    lifecycle_runs = build_runs(mine["lifecycle_runs"], "state", LIFECYCLE_ENDS)
    withdrawn: dict[str, int] = {}
    for r in mine["lifecycle_runs"]:
        if r["state"] in WITHDRAWN and r["assignment_id"]:
            withdrawn[r["assignment_id"]] = min(r["ts_ms"], withdrawn.get(r["assignment_id"], r["ts_ms"]))
    reported: dict[str, int] = {}
    for r in mine["status"]:
        if r["status"] == "COMPLETED" and r["assignment_id"]:
            reported[r["assignment_id"]] = min(r["ts_ms"], reported.get(r["assignment_id"], r["ts_ms"]))
    status_runs = build_runs(mine["status"], "status", STATUS_ENDS)
    return [
        check_power(
            truth.failovers,
            [incident_from_row(r) for r in rows["incidents"]],
            truth.late_power,
            late_dead_letters,
            truth.end_ms,
        ),
        check_tasks(
            truth,
            tasks,
            {t: s["latest"] for t, s in states.items()},
            waits,
            lifecycle_runs,
            dict(
                Counter(r["reason"] or "unknown" for r in mine["lifecycle_runs"] if r["state"] == "PREEMPTED")
            ),
            withdrawn,
            reported,
        ),
        round_trips(mine["assigns"], status_runs, claim_timeout_s),
        check_eligibility(truth, mine["assigns"], lease_s),
        check_ledger(truth, ledger, status_runs, lifecycle_runs),
        spillover_section(rows["spillover"], mine["task_moves"]),
        check_alerts(rows["alerts"], rows["deliveries"]),
    ]
