"""Owner presence: a node's own report that its owner is back, or that it cannot take the work.

Two FAILED reports on ``tasks.status.v1`` are not the node's fault (docs/simulator.md, the emulator
runtime): ``abandoned: owner_returned`` (the owner walked up or drove off while the task ran) and
``node_unavailable: ...`` (the car refused an ASSIGN: not parked, not plugged in, busy). Neither is
charged to the node's reliability or to the task's failure count. The task goes back to the queue with
its original request time (ahead of newer work of its priority), never again to that node
(``Task.excluded``); the node is ``OWNER_PRESENT`` until fresh telemetry shows the owner gone
(``eligibility.owner_present``). A crash, a wrong result or a claim timeout still counts as a failure.
"""

from __future__ import annotations

from processors.scheduler.eligibility import NodeState

__all__ = ["NODE_UNAVAILABLE", "OWNER_RETURNED", "mark_owner_back", "presence_reason"]

OWNER_RETURNED = "OWNER_RETURNED"  # lifecycle reason: the node abandoned the task, its owner is back
NODE_UNAVAILABLE = "NODE_UNAVAILABLE"  # lifecycle reason: the node refused the ASSIGN as unavailable


def presence_reason(error: str | None) -> str | None:
    """The lifecycle reason of a FAILED report that means "owner back / unavailable", else None."""
    text = (error or "").strip().lower()
    if text.startswith("node_unavailable"):
        return NODE_UNAVAILABLE
    if "owner_returned" in text:
        return OWNER_RETURNED
    return None


def mark_owner_back(node: NodeState, at: int) -> None:
    """The node reported its owner back at event time ``at`` (the newest report wins)."""
    if node.owner_since is None or at > node.owner_since:
        node.owner_since = at
