"""Stay probabilities for ranking: computed once per node, duration class and time step.

``Scheduler._pick`` scores up to ``max_candidates`` nodes per task with ``prediction.stay_probability``
(10-40 us each: the hour-by-hour hazard walk). At 1,000 tasks/s that is the whole CPU of a worker, and
the same node is scored again for the next task a few milliseconds later. So ranking asks ``StayCache``
for ``stay_probability(node, d_class, t0)``: ``t0`` is ``now`` rounded down to ``rank_time_step_s``,
``d_class`` the task's duration rounded up to the next of ``CLASSES_PER_OCTAVE`` log steps per octave (never
shorter: a rounded duration can only make a node look less likely to stay).

Deterministic: a value is a pure function of (node state, ``d_class``, ``t0``); the cache only saves
recomputing it, so a restored worker (empty cache) ranks exactly as its predecessor did. Every input of
``stay_probability`` changes only with an applied telemetry record, which moves ``node.ts`` (session,
place, departure, charge state and minutes to full, the idle history: ``IdleHistory.add`` runs when a
session ends; ``remember`` adds to ``asked``, which ``stay_probability`` does not read), so an entry is
valid while ``node.ts`` is the one it was computed at. The cache is emptied at each new ``t0``: it holds
at most the nodes ranked within one step.

``rank_time_step_s`` 0 turns it off: exact ``now`` and duration, as before.
"""

from __future__ import annotations

import math

from processors.scheduler.config import SchedulerConfig
from processors.scheduler.eligibility import NodeState
from processors.scheduler.prediction import stay_probability

__all__ = ["CLASSES_PER_OCTAVE", "StayCache", "duration_class"]

CLASSES_PER_OCTAVE = 32  # duration classes 2.2 % apart


def duration_class(duration_s: float) -> float:
    """``duration_s`` rounded up to the next class boundary (2 ** (k / CLASSES_PER_OCTAVE) s)."""
    if duration_s <= 1.0:
        return max(0.0, duration_s)
    k = math.ceil(math.log2(duration_s) * CLASSES_PER_OCTAVE - 1e-9)
    return 2.0 ** (k / CLASSES_PER_OCTAVE)


class StayCache:
    """``stay(node, duration_s, now)`` for ranking (module docstring). Not persisted."""

    def __init__(self, cfg: SchedulerConfig) -> None:
        self.cfg = cfg
        self.step_ms = int(cfg.rank_time_step_s * 1000)
        self.t0 = -1
        self.entries: dict[tuple[str, float], tuple[int, float]] = {}  # (vin, d_class) -> (node.ts, p)
        self.hits = self.misses = 0
        self._last = (-1.0, 0.0)  # the last duration asked and its class (a pick asks one, ~256 times)

    def time_of(self, now: int) -> int:
        """The time ranking evaluates at: ``now`` rounded down to the step."""
        return now - now % self.step_ms if self.step_ms > 0 else now

    def stay(self, node: NodeState, duration_s: float, now: int) -> float:
        if self.step_ms <= 0:
            return stay_probability(node, duration_s, now, self.cfg)
        t0 = now - now % self.step_ms
        if t0 != self.t0:
            self.t0 = t0
            self.entries.clear()
        if duration_s != self._last[0]:
            self._last = (duration_s, duration_class(duration_s))
        d = self._last[1]
        key = (node.vin, d)
        hit = self.entries.get(key)
        if hit is not None and hit[0] == node.ts:
            self.hits += 1
            return hit[1]
        self.misses += 1
        p = stay_probability(node, d, t0, self.cfg)
        self.entries[key] = (node.ts, p)
        return p
