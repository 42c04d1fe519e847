"""The demo report's checks, on small hand-made rows: each passes on consistent data and fails when
the pipeline got it wrong."""

from __future__ import annotations

from typing import Any

from carnival.report.alerts import check_alerts
from carnival.report.ledger import check_ledger
from carnival.report.model import quantile
from carnival.report.power import Incident, check_power, skipped_seqs
from carnival.report.runs import LIFECYCLE_ENDS, STATUS_ENDS, build_runs
from carnival.report.spillover import spillover_section
from carnival.report.tasks import check_eligibility, check_tasks, ineligible_assignments, round_trips
from carnival.report.truth import GroundTruth, from_rows

T0 = 1_736_172_000_000  # 2025-01-06T14:00Z, ms
H = 3_600_000
S = 1_000


def _checks(section: Any) -> dict[str, bool]:
    return {c.name: c.ok for c in section.checks}


def _truth(*extra: dict[str, Any]) -> GroundTruth:
    return from_rows(
        [
            {"type": "config", "start": T0, "end": T0 + 4 * H},
            {"type": "car", "vin": "CAR1", "hw": "HW4", "opted_in": True},
            {"type": "car", "vin": "OLD", "hw": "HW3", "opted_in": True},
            {"type": "car", "vin": "NOPE", "hw": "HW5", "opted_in": False},
            {"type": "charge_session", "vin": "CAR1", "plug_in": T0 + H, "unplug": T0 + 2 * H},
            {"type": "charge_open", "vin": "CAR1", "plug_in": T0 + 3 * H, "at": T0 + 4 * H},
            *extra,
        ]
    )


# ------------------------------------------------------------------------------------------- power
FAILOVER = {
    "type": "failover",
    "site_id": "dc-1",
    "started_at_us": (T0 + H) * 1000,
    "ended_at_us": (T0 + 2 * H) * 1000,
    "fault": "SLOW_TRANSFER",
    "expected_incidents": ["FAILOVER", "SLOW_TRANSFER"],
    "transfer_ms": 55.0,
}
LATE = [{"site_id": "dc-1", "device_id": "gm-1", "seq": s, "ts_us": 0, "delay_ms": 9000} for s in (7, 8)]


def _incident(kind: str, at_ms: int, transfer: float | None = None, **kw: Any) -> Incident:
    return Incident(f"dc-1/{kind}/{at_ms}", "dc-1", kind, at_ms, transfer, **kw)


def test_power_every_fault_found_and_noise_explained() -> None:
    incidents = [
        _incident("FAILOVER", T0 + H, 55.3),
        _incident("SLOW_TRANSFER", T0 + H, 55.3),
        _incident(
            "SEQUENCE_GAP", T0 + H // 2, device_id="gm-1", summaries=("dc-1: device gm-1 skipped seq 7-8",)
        ),
        _incident("SITE_SILENT", T0 + 4 * H - 20 * S),
    ]
    section = check_power([FAILOVER], incidents, LATE, [("dc-1", "gm-1", 7)], T0 + 4 * H)
    assert all(_checks(section).values()), section
    assert any("explained: 1 SEQUENCE_GAP" in line for line in section.lines)


def test_power_missed_fault_and_unexplained_incident_fail() -> None:
    incidents = [_incident("FAILOVER", T0 + H, 55.3), _incident("PQ_EXCURSION", T0 + H + 60 * S)]
    checks = _checks(check_power([FAILOVER], incidents, LATE, [], T0 + 4 * H))
    assert checks["every injected failover and fault found"] is False
    assert checks["no incident without an injected cause"] is False


def test_power_transfer_time_off_fails() -> None:
    incidents = [_incident("FAILOVER", T0 + H, 4.0), _incident("SLOW_TRANSFER", T0 + H, 4.0)]
    checks = _checks(check_power([FAILOVER], incidents, [], [], T0 + 4 * H))
    assert checks["every injected failover and fault found"] is True
    assert checks["measured transfer times match the injected ones"] is False


def test_power_gap_not_caused_by_late_delivery_and_stray_late_dead_letter_fail() -> None:
    gap = _incident("SEQUENCE_GAP", T0, device_id="gm-1", summaries=("skipped seq 7", "skipped seq 9 too"))
    assert skipped_seqs(gap) == {7, 9}
    checks = _checks(check_power([], [gap], LATE, [("dc-1", "ats-1", 3)], T0 + 4 * H))
    assert checks["no incident without an injected cause"] is False
    assert checks["every LATE dead letter is an injected late delivery"] is False


def test_power_silence_mid_run_is_unexplained() -> None:
    checks = _checks(check_power([], [_incident("SITE_SILENT", T0 + H)], [], [], T0 + 4 * H))
    assert checks["no incident without an injected cause"] is False


# ------------------------------------------------------------------------------------------- tasks
def _status(aid: str, task: str, vin: str, *events: tuple[str, int]) -> list[dict[str, Any]]:
    return [{"assignment_id": aid, "task_id": task, "vin": vin, "status": s, "ts_ms": t} for s, t in events]


def test_runs_start_at_started_and_end_at_the_next_end() -> None:
    rows = _status("a1", "t1", "CAR1", ("STARTED", 10), ("COMPLETED", 70)) + _status(
        "a2", "t2", "CAR1", ("FAILED", 5)
    )
    runs = build_runs(rows, "status", STATUS_ENDS)
    assert set(runs) == {"a1"} and runs["a1"].seconds(0) == 0.06


def test_tasks_consistent() -> None:
    truth = _truth(
        {"type": "task", "task_id": "t1", "priority": 5},
        {"type": "task", "task_id": "t2", "priority": 1},
        {
            "type": "session",
            "task_id": "t1",
            "assignment_id": "a1",
            "outcome": "COMPLETED",
            "ended_at": T0 + H,
        },
    )
    lifecycle = [
        {"assignment_id": "a1", "task_id": "t1", "vin": "CAR1", "state": s, "ts_ms": t}
        for s, t in (("STARTED", T0 + H - 600 * S), ("COMPLETED", T0 + H))
    ]
    runs = build_runs(lifecycle, "state", LIFECYCLE_ENDS)
    section = check_tasks(
        truth,
        {"t1", "t2"},
        {"t1": "COMPLETED", "t2": "QUEUED"},
        [(5, 30.0), (1, None)],
        runs,
        {"NOT_PARKED": 1},
    )
    assert all(_checks(section).values()), section
    assert any("NOT_PARKED 600.0" in line for line in section.lines)  # 1 per 10 minutes of runs


def test_tasks_lost_request_lost_state_and_unmarked_completion_fail() -> None:
    truth = _truth(
        {"type": "task", "task_id": "t1", "priority": 5},
        {"type": "task", "task_id": "t2", "priority": 1},
        {
            "type": "session",
            "task_id": "t1",
            "assignment_id": "a1",
            "outcome": "COMPLETED",
            "ended_at": T0 + H,
        },
    )
    checks = _checks(check_tasks(truth, {"t1"}, {}, [(5, None)], {}, {}))
    assert checks == {
        "every requested task reached ClickHouse": False,
        "every task has a lifecycle state": False,
        "completions match the emulators' truth": False,
    }


def test_a_completion_after_the_scheduler_took_the_assignment_back_is_wasted_not_lost() -> None:
    session = {
        "type": "session",
        "task_id": "t1",
        "assignment_id": "a1",
        "outcome": "COMPLETED",
        "ended_at": T0 + H,
    }
    truth = _truth({"type": "task", "task_id": "t1", "priority": 5}, session)
    requeued_before = {"a1": T0 + H - 60 * S}
    section = check_tasks(truth, {"t1"}, {"t1": "QUEUED"}, [(5, 1.0)], {}, {}, requeued_before)
    assert _checks(section)["completions match the emulators' truth"] is True
    assert any(
        "1 finished after the scheduler had taken the assignment back" in line for line in section.lines
    )
    requeued_after = {"a1": T0 + H + 60 * S}  # the node's COMPLETED came first: the pipeline lost it
    section = check_tasks(truth, {"t1"}, {"t1": "QUEUED"}, [(5, 1.0)], {}, {}, requeued_after)
    assert _checks(section)["completions match the emulators' truth"] is False


def test_a_completion_is_judged_by_the_status_the_node_sent_not_the_session_end() -> None:
    """The session ended before the scheduler took the assignment back, but the node's COMPLETED was
    stamped after it: by event time the revoke came first, so the work is wasted, not lost."""
    session = {"type": "session", "task_id": "t1", "assignment_id": "a1", "outcome": "COMPLETED",
               "ended_at": T0 + H}  # fmt: skip
    truth = _truth({"type": "task", "task_id": "t1", "priority": 5}, session)
    withdrawn = {"a1": T0 + H + 200}  # expired 200 ms after the session ended ...
    reported_after = {"a1": T0 + H + 300}  # ... and 100 ms before the node's report
    section = check_tasks(truth, {"t1"}, {"t1": "EXPIRED"}, [(5, 1.0)], {}, {}, withdrawn, reported_after)
    assert _checks(section)["completions match the emulators' truth"] is True
    reported_before = {"a1": T0 + H + 100}  # the report came first: the pipeline lost a completion
    section = check_tasks(truth, {"t1"}, {"t1": "EXPIRED"}, [(5, 1.0)], {}, {}, withdrawn, reported_before)
    assert _checks(section)["completions match the emulators' truth"] is False


def test_a_completion_nobody_did_fails() -> None:
    truth = _truth({"type": "task", "task_id": "t1", "priority": 5})
    checks = _checks(check_tasks(truth, {"t1"}, {"t1": "COMPLETED"}, [(5, 1.0)], {}, {}))
    assert checks["completions match the emulators' truth"] is False


def test_round_trip_counts_runs_started_after_the_claim_timeout() -> None:
    status = build_runs(
        _status("a1", "t1", "CAR1", ("STARTED", T0 + 100 * S))
        + _status("a2", "t2", "CAR1", ("STARTED", T0 + 5000 * S)),
        "status",
        STATUS_ENDS,
    )
    assigns = [{"assignment_id": a, "vin": "CAR1", "ts_ms": T0} for a in ("a1", "a2")]
    line = round_trips(assigns, status, 960.0).lines[0]
    assert "2 runs" in line and "1 started after the 960 s claim timeout" in line


# ------------------------------------------------------------------------------------- eligibility
def test_assignments_to_plugged_in_cars_pass_with_the_lease_tolerance() -> None:
    assigns = [
        {"assignment_id": "a1", "vin": "CAR1", "ts_ms": T0 + H + 1},
        {"assignment_id": "a2", "vin": "CAR1", "ts_ms": T0 + 2 * H + 100 * S},  # 100 s after unplug
        {"assignment_id": "a3", "vin": "CAR1", "ts_ms": T0 + 4 * H},  # open session at the end
    ]
    assert _checks(check_eligibility(_truth(), assigns, 120.0)) == {
        "no task assigned to an ineligible car": True
    }


def test_assignments_to_ineligible_cars_fail() -> None:
    assigns = [
        {"assignment_id": "a1", "vin": "CAR1", "ts_ms": T0 + H - 1},  # before plug-in: no tolerance
        {"assignment_id": "a2", "vin": "CAR1", "ts_ms": T0 + 2 * H + 121 * S},  # past the lease
        {"assignment_id": "a3", "vin": "OLD", "ts_ms": T0 + H},
        {"assignment_id": "a4", "vin": "NOPE", "ts_ms": T0 + H},
        {"assignment_id": "a5", "vin": "GHOST", "ts_ms": T0 + H},
    ]
    bad = ineligible_assignments(_truth(), assigns, 120.0)
    assert [(row["assignment_id"], why.split(",")[0]) for row, why in bad] == [
        ("a1", "not plugged in"),
        ("a2", "not plugged in"),
        ("a3", "hardware HW3"),
        ("a4", "not opted in"),
        ("a5", "not a simulated car"),
    ]
    assert (
        _checks(check_eligibility(_truth(), assigns, 120.0))["no task assigned to an ineligible car"] is False
    )


def test_assignments_to_datacenter_sites_are_not_judged_as_cars() -> None:
    assigns = [{"assignment_id": "a1", "vin": "site:dc-1", "ts_ms": T0},
               {"assignment_id": "a2", "vin": "GHOST", "ts_ms": T0}]  # fmt: skip
    assert [row["assignment_id"] for row, _ in ineligible_assignments(_truth(), assigns, 120.0)] == ["a2"]
    assert "(1 to datacenter sites, not checked here)" in check_eligibility(_truth(), assigns, 120.0).lines[0]


# ------------------------------------------------------------------------------------------ ledger
def _ledger_row(aid: str, start: int, end: int, **kw: Any) -> dict[str, Any]:
    row = {"vin": "CAR1", "assignment_id": aid, "started_ms": start, "ended_ms": end, "energy_kwh": 0.01}
    row.update(compute_seconds=(end - start) / 1000, amount=0.05)
    row.update(kw)
    return row


def test_ledger_consistent_with_runs() -> None:
    status = build_runs(
        _status("a1", "t1", "CAR1", ("STARTED", T0 + H), ("COMPLETED", T0 + H + 60 * S)),
        "status",
        STATUS_ENDS,
    )
    lifecycle = build_runs(
        [{"assignment_id": "a2", "task_id": "t2", "vin": "CAR1", "state": s, "ts_ms": t}
         for s, t in (("STARTED", T0 + H), ("PREEMPTED", T0 + H + 30 * S))],
        "state", LIFECYCLE_ENDS,
    )  # fmt: skip
    section = check_ledger(_truth(), [_ledger_row("a1", T0 + H, T0 + H + 60 * S)], status, lifecycle)
    assert all(_checks(section).values()), section
    assert any("1 runs ended by preemption" in line for line in section.lines)
    assert "60 compute-seconds" in section.lines[0]


def test_ledger_overbilling_and_unbilled_runs_fail() -> None:
    status = build_runs(
        _status("a1", "t1", "CAR1", ("STARTED", T0 + H), ("COMPLETED", T0 + H + 60 * S))
        + _status("a2", "t2", "CAR1", ("STARTED", T0 + H + 100 * S), ("FAILED", T0 + H + 200 * S)),
        "status",
        STATUS_ENDS,
    )
    ledger = [_ledger_row("a1", T0 + H, T0 + H + 90 * S), _ledger_row("zz", T0, T0 + S)]
    checks = _checks(check_ledger(_truth(), ledger, status, {}))
    assert checks == {
        "every entry is a run and bills no more than it lasted": False,
        "every run on a plugged-in car is billed": False,
    }


# ------------------------------------------------------------------------------------------ alerts
ALERTS = [
    {"fingerprint": "f1", "status": "FIRING", "kind": "FAILOVER", "severity": "info"},
    {"fingerprint": "f1", "status": "RESOLVED", "kind": "FAILOVER", "severity": "info"},
    {"fingerprint": "f2", "status": "FIRING", "kind": "SEQUENCE_GAP", "severity": "warning"},
]


def test_alerts_all_delivered() -> None:
    deliveries = [
        {"fingerprint": f, "status": s} for f, s in (("f1", "FIRING"), ("f1", "RESOLVED"), ("f2", "FIRING"))
    ]
    assert all(_checks(check_alerts(ALERTS, deliveries)).values())


def test_alerts_not_delivered_fail() -> None:
    checks = _checks(check_alerts(ALERTS, [{"fingerprint": "f1", "status": "FIRING"}]))
    assert checks == {
        "every FIRING alert reached the receiver": False,
        "every RESOLVED alert reached the receiver": False,
    }


# --------------------------------------------------------------------------------------- spillover
def _episode(site: str, start: int, end: int | None, spilled: int, shed: int, **kw: Any) -> dict[str, Any]:
    row = {"site_id": site, "started_ms": start, "ended_ms": end, "worst_state": "RESERVE",
           "tasks_spilled": spilled, "sessions_shed": shed, "slot_hours_shifted": 0.5,
           "battery_minutes_saved": None}  # fmt: skip
    return {**row, **kw}


def _moves(*rows: tuple[str, str]) -> list[dict[str, Any]]:
    return [{"task_id": t, "site_id": "dc-1", "reason": r} for t, r in rows]


def test_spillover_without_episodes_says_so() -> None:
    section = spillover_section([], [])
    assert section.lines == ["No spillover episodes in this run: no site stopped taking work."]
    assert section.checks == []


def test_spillover_totals_and_one_line_per_episode() -> None:
    episodes = [
        _episode("dc-2", T0 + 2 * H, None, 1, 0, slot_hours_shifted=0.25, worst_state="ISLANDED_BATTERY"),
        _episode("dc-1", T0, T0 + H, 2, 2, slot_hours_shifted=1.0, battery_minutes_saved=3.0),
    ]
    moves = _moves(("t1", "SPILLOVER_ISLANDED"), ("t2", "SPILLOVER_ISLANDED"), ("t3", "SPILLOVER_ISLANDED"),
                   ("t4", "SHED_RESERVE"), ("t4", "SHED_RESERVE"), ("t5", "SHED_LOAD"))  # fmt: skip
    lines = spillover_section(episodes, moves).lines
    assert lines[0] == (
        "2 episodes at 2 sites (1 still open): 5 tasks moved (3 spilled, 2 shed), 1.25 slot-hours shifted "
        "to the fleet, 3.0 battery minutes saved"
    )
    assert " ".join(lines[1].split()) == (
        "dc-1 2025-01-06 14:00:00 -> 2025-01-06 15:00:00 (60.0 min) worst RESERVE: 4 tasks moved "
        "(2 spilled, 2 shed), 1.00 slot-hours, 3.0 battery min saved"
    )
    assert "-> still open" in lines[2] and "n/a battery min saved" in lines[2]
    # A task shed with two records counts once; the lifecycle agrees with the episodes: nothing added.
    assert (
        lines[3]
        == "lifecycle: tasks moved off sites by reason: SPILLOVER_ISLANDED 3, SHED_RESERVE 1, SHED_LOAD 1"
    )


def test_spillover_lifecycle_that_disagrees_with_the_episodes_is_shown() -> None:
    section = spillover_section([_episode("dc-1", T0, T0 + H, 2, 0)], _moves(("t1", "SPILLOVER_ISLANDED")))
    assert "battery minutes saved not known" in section.lines[0]
    assert section.lines[-1] == (
        "lifecycle: tasks moved off sites by reason: SPILLOVER_ISLANDED 1 "
        "(the episodes count 2 spilled, 0 shed)"
    )


def test_quantile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (quantile(values, 0.5), quantile(values, 0.95), quantile(values, 0.99)) == (50.0, 95.0, 99.0)
    assert quantile([], 0.5) is None
