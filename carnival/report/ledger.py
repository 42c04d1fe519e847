"""The owner ledger: totals, top owners, and whether the amounts agree with the task run times.

The ledger bills a run from the node's STARTED to its COMPLETED/FAILED report, clipped to the charging
session it started in (sinks/ledger.py). So, per assignment:

* every ledger entry is a node-reported run, and bills no more than that run lasted;
* every node-reported run that started while the car was really plugged in (the truth) is billed;
* runs the scheduler ended by preemption (no node report) are not billed by that rule: counted apart.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from carnival.report.model import Section
from carnival.report.runs import Run
from carnival.report.truth import GroundTruth

TOLERANCE_S = 0.01  # rounding of DateTime64(3) differences


def _plugged_at(truth: GroundTruth, vin: str | None, ts_ms: int) -> bool:
    return any(p <= ts_ms <= u for p, u in truth.plugged.get(vin or "", []))


def check_ledger(
    truth: GroundTruth,
    ledger: list[dict[str, Any]],
    status_runs: dict[str, Run],
    lifecycle_runs: dict[str, Run],
    top: int = 5,
) -> Section:
    """``ledger``: owner_ledger rows (FINAL) with vin, assignment_id, started_ms, ended_ms,
    compute_seconds, energy_kwh, amount."""
    section = Section("Owner ledger")
    seconds = sum(r["compute_seconds"] for r in ledger)
    kwh = sum(r["energy_kwh"] for r in ledger)
    amount = sum(r["amount"] or 0.0 for r in ledger)
    owners: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    for r in ledger:
        o = owners[r["vin"]]
        o[0] += 1
        o[1] += r["compute_seconds"]
        o[2] += r["energy_kwh"]
        o[3] += r["amount"] or 0.0
    section.lines.append(
        f"{len(ledger):,} entries for {len(owners):,} owners: {seconds:,.0f} compute-seconds, "
        f"{kwh:,.3f} kWh, {amount:,.2f} USD"
    )
    for vin, (n, s, e, a) in sorted(owners.items(), key=lambda kv: -kv[1][3])[:top]:
        section.lines.append(f"  {vin}: {int(n)} runs, {s:,.0f} s, {e:,.3f} kWh, {a:,.2f} USD")

    bad = []
    for r in ledger:
        run = status_runs.get(r["assignment_id"])
        if run is None or run.ended_ms is None:
            bad.append(f"{r['assignment_id']}: no node-reported run")
        elif (
            r["started_ms"] < run.started_ms
            or r["ended_ms"] > run.ended_ms
            or abs(r["compute_seconds"] - (r["ended_ms"] - r["started_ms"]) / 1000) > TOLERANCE_S
        ):
            bad.append(f"{r['assignment_id']}: bills {r['compute_seconds']:.1f} s of a "
                       f"{run.seconds(run.ended_ms):.1f} s run")  # fmt: skip
    section.check(
        "every entry is a run and bills no more than it lasted", not bad,
        f"{len(ledger) - len(bad)}/{len(ledger)} consistent" + (f"; e.g. {bad[0]}" if bad else ""),
    )  # fmt: skip

    billed = {r["assignment_id"] for r in ledger}
    ended = [
        r for r in status_runs.values()
        if r.ended_ms is not None and truth.start_ms <= r.ended_ms < truth.end_ms
    ]  # fmt: skip
    due = [r for r in ended if _plugged_at(truth, r.vin, r.started_ms)]
    unbilled = [r for r in due if r.assignment_id not in billed]
    run_s = sum(r.seconds(truth.end_ms) for r in ended)
    section.lines.append(
        f"node-reported runs ended in the run: {len(ended):,} ({run_s:,.0f} s); billed {seconds:,.0f} s"
    )
    section.check(
        "every run on a plugged-in car is billed",
        not unbilled,
        f"{len(due) - len(unbilled)}/{len(due)} billed"
        + (f"; e.g. {unbilled[0].assignment_id} on {unbilled[0].vin}" if unbilled else ""),
    )
    preempted = [r for r in lifecycle_runs.values() if r.end == "PREEMPTED" and r.assignment_id not in billed]
    if preempted:
        section.lines.append(
            f"not billed by the ledger's rule: {len(preempted)} runs ended by preemption without a node "
            f"report, {sum(r.seconds(truth.end_ms) for r in preempted):,.0f} compute-seconds"
        )
    return section
