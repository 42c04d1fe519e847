"""Task runs rebuilt from event rows: one interval per assignment, from STARTED to what ended it.

Two sources, two meanings: the lifecycle (``task_events``: the scheduler's view, which also knows
PREEMPTED and REQUEUED) and the node's own reports (``task_status``: STARTED -> COMPLETED/FAILED, what
the owner ledger bills).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LIFECYCLE_ENDS = frozenset({"COMPLETED", "FAILED", "PREEMPTED", "REQUEUED", "EXPIRED"})
STATUS_ENDS = frozenset({"COMPLETED", "FAILED"})


@dataclass(frozen=True)
class Run:
    assignment_id: str
    task_id: str
    vin: str | None
    started_ms: int
    ended_ms: int | None  # None: still running when the data ends
    end: str | None  # the state or status that ended it

    def seconds(self, until_ms: int) -> float:
        end = self.ended_ms if self.ended_ms is not None else max(until_ms, self.started_ms)
        return max(0, end - self.started_ms) / 1000


def build_runs(rows: list[dict[str, Any]], state_key: str, ends: frozenset[str]) -> dict[str, Run]:
    """assignment_id -> Run from rows with assignment_id, task_id, vin, ts_ms and ``state_key``.

    A run starts at the first STARTED of its assignment and ends at the first ending state at or after
    it; assignments that never started are not runs.
    """
    by_assignment: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("assignment_id"):
            by_assignment.setdefault(row["assignment_id"], []).append(row)
    runs: dict[str, Run] = {}
    for aid, events in by_assignment.items():
        events.sort(key=lambda r: r["ts_ms"])
        start = next((r for r in events if r[state_key] == "STARTED"), None)
        if start is None:
            continue
        end = next((r for r in events if r[state_key] in ends and r["ts_ms"] >= start["ts_ms"]), None)
        runs[aid] = Run(
            aid,
            start["task_id"],
            start.get("vin"),
            int(start["ts_ms"]),
            None if end is None else int(end["ts_ms"]),
            None if end is None else end[state_key],
        )
    return runs
