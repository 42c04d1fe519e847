"""Untrusted nodes, BOINC style: trust is earned by consecutive successes, failure streaks throttle.

* ``reliability`` is an exponentially weighted success rate (prior ``reliability_prior``); ranking
  uses it as a tie-breaker after the stay probability.
* A node is *trusted* after ``trust_after_successes`` consecutive successes; a task that already
  failed once is preferably re-sent to trusted nodes.
* ``throttle_after_failures`` consecutive failures (FAILED reports or claim timeouts) throttle the node:
  no new work for ``throttle_base_s * 2**(streak - threshold)`` (capped at ``throttle_max_s``). One
  success resets the streak. Preemptions (owner back, lease lost) are not the node's fault and do not count.
"""

from __future__ import annotations

from processors.scheduler.config import SchedulerConfig
from processors.scheduler.eligibility import NodeState

__all__ = ["is_trusted", "record_failure", "record_success"]


def is_trusted(node: NodeState, cfg: SchedulerConfig) -> bool:
    return node.success_streak >= cfg.trust_after_successes


def record_success(node: NodeState, cfg: SchedulerConfig) -> None:
    node.completed += 1
    node.success_streak += 1
    node.failure_streak = 0
    node.reliability += cfg.reliability_alpha * (1.0 - node.reliability)


def record_failure(node: NodeState, now: int, cfg: SchedulerConfig) -> bool:
    """Count a failure; returns True when this failure (re)throttled the node."""
    node.failed += 1
    node.success_streak = 0
    node.failure_streak += 1
    node.reliability -= cfg.reliability_alpha * node.reliability
    over = node.failure_streak - cfg.throttle_after_failures
    if over < 0:
        return False
    backoff_s = min(cfg.throttle_max_s, cfg.throttle_base_s * (2.0 ** min(over, 30)))
    node.throttled_until = max(node.throttled_until, now + int(backoff_s * 1000))
    return True
