"""How long will a parked, plugged-in car stay idle? P(idle for at least the task's duration).

The model (telemetry and the car's own history only), as competing exit causes whose survival
functions multiply: ``P(stay >= d) = S_hist(d) * S_dep(d) * S_full(d)``.

1. **Habit** ``S_hist``: the length of a plug-in session is log-normal. Its parameters come from the car's
   own history of finished sessions, kept per 4-hour block of the local week (42 buckets, each an
   exponentially decayed mean and variance of ``ln(duration)``, so 3 floats per bucket seen), per
   4-hour block of the day (6) and for the whole week (1): at most 49 small entries per car. Each level
   is shrunk toward the coarser one by pseudo-counts: prior -> car-wide -> time of day -> week block.
   The prior depends on ``at_home`` and the local start hour: home in the evening/night lasts until
   the next morning, home in the day about 2.5 h, work (away, weekday morning) about 7 h, any other
   away charge about 1 h, unknown 2 h. Given the session already lasted ``a`` seconds the estimate is
   conditional: ``S(a + d) / S(a)``.
2. **Scheduled departure** ``S_dep``: trusted, with noise. The node is lost ``departure_guard_s``
   before the departure (the guard preempts), and owners leave early or late with a normal error of
   ``departure_sigma_s``: ``S_dep(d) = 1 - Phi((now + d - (dep - guard)) / sigma)``. A departure that
   is more than one guard in the past is ignored (a stale, probably recurring, setting).
3. **Minutes to full** ``S_full`` (weak hint): some owners come back when charging completes. A share
   ``q`` of them (0.5 away from home, 0.15 at home, 0.3 unknown) leaves around ``full + 10 min`` (sd 15 min).

Sessions are recorded when they end with a known gear change or unplug (see ``eligibility``);
sessions whose end was not observed (telemetry gap) are not recorded. Hour of week is local time,
from ``SchedulerConfig.region_utc_offset_h``. Everything is pure and cheap (a few ``erfc`` calls), and
the per-session habit parameters are cached on the node.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from processors.scheduler.config import SchedulerConfig

if TYPE_CHECKING:
    from processors.scheduler.eligibility import NodeState

__all__ = [
    "IdleHistory",
    "bucket_of",
    "habit_params",
    "idle_until",
    "prior_params",
    "stay_probability",
]

BUCKET_HOURS = 4
N_BUCKETS = 168 // BUCKET_HOURS
_MS_H = 3_600_000
_SQRT2 = math.sqrt(2.0)
_MIN_VAR = 0.05  # floor on ln-duration variance (sd ~0.22): no history is that certain
_PRIOR_SIGMA = 0.8
_ALL = -1  # key of the all-week aggregate
_TOD = 100  # keys 100..105: the same 4-hour block of the day, any weekday
_PER_DAY = 24 // BUCKET_HOURS


def _norm_sf(z: float) -> float:
    return 0.5 * math.erfc(z / _SQRT2)


def _local_hours(ts_ms: int, offset_h: float) -> float:
    """Hours since the local Monday-00:00 of the week (epoch day 0 was a Thursday)."""
    hours = ts_ms / _MS_H + offset_h + 72.0  # shift so that 0 is a Monday
    return hours % 168.0


def bucket_of(ts_ms: int, offset_h: float) -> int:
    return int(_local_hours(ts_ms, offset_h) // BUCKET_HOURS) % N_BUCKETS


def prior_params(start_ms: int, offset_h: float, at_home: bool | None) -> tuple[float, float]:
    """(mu, sigma) of ln(session seconds) before any history: at_home + hour-of-week prior."""
    how = _local_hours(start_ms, offset_h)
    day, hour = int(how // 24), how % 24
    if at_home is None:
        median_h = 2.0
    elif at_home:
        if hour >= 17 or hour < 4:
            weekend_next = (day + (1 if hour >= 17 else 0)) % 7 >= 5
            wake = 9.0 if weekend_next else 7.5
            median_h = max(4.0, (wake - hour) % 24)
        else:
            median_h = 2.5
    elif day < 5 and 6 <= hour < 11:
        median_h = 7.0
    else:
        median_h = 1.0
    return math.log(median_h * 3600.0), _PRIOR_SIGMA


class IdleHistory:
    """Decayed per-bucket statistics of ln(plug-in session duration): ``{bucket: [weight, mean, var]}``."""

    __slots__ = ("stats", "sessions")

    def __init__(self, stats: dict[int, list[float]] | None = None, sessions: int = 0) -> None:
        self.stats: dict[int, list[float]] = stats if stats is not None else {}
        self.sessions = sessions

    def add(self, start_ms: int, duration_s: float, offset_h: float, decay: float) -> None:
        if duration_s <= 0:
            return
        x = math.log(max(duration_s, 60.0))
        bucket = bucket_of(start_ms, offset_h)
        for key in (bucket, _TOD + bucket % _PER_DAY, _ALL):
            w, mu, var = self.stats.get(key, (0.0, x, 0.0))
            w = w * decay + 1.0
            a = 1.0 / w
            delta = x - mu
            mu += a * delta
            var = (1.0 - a) * (var + a * delta * delta)
            self.stats[key] = [w, mu, var]
        self.sessions += 1

    def params(self, bucket: int, prior: tuple[float, float], k: float) -> tuple[float, float]:
        """(mu, sigma): prior -> car-wide -> same time of day -> same block of the week, each level
        shrunk toward the previous one with ``k`` pseudo-sessions."""
        mu, var = prior[0], prior[1] ** 2
        for key in (_ALL, _TOD + bucket % _PER_DAY, bucket):
            s = self.stats.get(key)
            if s is None:
                continue
            w, m, v = s
            mu = (w * m + k * mu) / (w + k)
            var = (w * max(v, _MIN_VAR) + k * var) / (w + k)
        return mu, math.sqrt(max(var, _MIN_VAR))

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.sessions,
            "b": [[k, w, m, v] for k, (w, m, v) in sorted(self.stats.items())],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> IdleHistory:
        if not d:
            return cls()
        return cls(
            {int(row[0]): [float(row[1]), float(row[2]), float(row[3])] for row in d["b"]}, int(d["n"])
        )


def habit_params(node: NodeState, now_ms: int, cfg: SchedulerConfig) -> tuple[float, float, float]:
    """(mu, sigma, elapsed_s) of the current session's habit model; cached on the node."""
    start = node.session_start if node.session_start is not None else now_ms
    key = (start, node.at_home, node.history.sessions, node.region)
    cached = node.pred_cache
    if cached is not None and cached[0] == key:
        mu, sigma = cached[1], cached[2]
    else:
        offset = cfg.utc_offset_h(node.region)
        prior = prior_params(start, offset, node.at_home)
        mu, sigma = node.history.params(bucket_of(start, offset), prior, cfg.history_prior_weight)
        node.pred_cache = (key, mu, sigma)
    return mu, sigma, max(0.0, (now_ms - start) / 1000.0)


def _ln_sf(t: float, mu: float, sigma: float) -> float:
    if t <= 0:
        return 1.0
    return _norm_sf((math.log(t) - mu) / sigma)


def stay_probability(node: NodeState, duration_s: float, now_ms: int, cfg: SchedulerConfig) -> float:
    """P(the node is still idle ``duration_s`` seconds after ``now_ms``)."""
    mu, sigma, elapsed = habit_params(node, now_ms, cfg)
    s_a = _ln_sf(elapsed, mu, sigma)
    p = min(1.0, _ln_sf(elapsed + duration_s, mu, sigma) / s_a) if s_a > 1e-12 else 1.0
    dep = node.scheduled_departure
    if dep is not None:
        guard_ms = cfg.departure_guard_s * 1000.0
        if now_ms < dep + guard_ms:
            end = dep - guard_ms
            p *= _norm_sf((now_ms + duration_s * 1000.0 - end) / (cfg.departure_sigma_s * 1000.0))
    mtf = node.minutes_to_full
    if mtf is not None and mtf > 0 and node.charge_state in ("CHARGING", "STARTING"):
        q = 0.3 if node.at_home is None else (0.15 if node.at_home else 0.5)
        p *= 1.0 - q * (1.0 - _norm_sf((duration_s - (mtf * 60.0 + 600.0)) / 900.0))
    return max(0.0, min(1.0, p))


def idle_until(node: NodeState, now_ms: int, cfg: SchedulerConfig, horizon_s: float = 7 * 86400.0) -> int:
    """Median estimate of when the node stops being idle (epoch ms): solves P(stay >= d) = 0.5."""
    if stay_probability(node, horizon_s, now_ms, cfg) >= 0.5:
        return now_ms + int(horizon_s * 1000)
    lo, hi = 0.0, math.log1p(horizon_s)
    for _ in range(22):
        mid = (lo + hi) / 2
        if stay_probability(node, math.expm1(mid), now_ms, cfg) >= 0.5:
            lo = mid
        else:
            hi = mid
    return now_ms + int(math.expm1(lo) * 1000)
