"""How long will a parked, plugged-in car stay idle? P(idle for at least the task's duration).

``stay_probability`` is the context model (issue 13); ``habit_stay_probability`` the session model it
builds on (the one before issue 13, kept for comparison: ``bench/bench_idle_model.py`` scores both).

**Context model** (``stay_probability``), telemetry and the car's own history only:
``P = S_hist(d + lead) * S_ann(d + lead) * S_full(d + lead) * S_wifi(d)``, or ``DOZING_P`` when the car's
newest record reported neither gear nor SoC (the record a car sends as it dozes off: it will not hear
an ASSIGN). ``lead`` (``OWNER_LEAD_S``): owners are back at the car minutes before the cable comes out,
and the work is lost then, not at the drive-off the history records.

- ``S_hist``: the session model's habit term below (log-normal by hour of week + own leave-by-hour rate).
- ``S_ann``, the announced departure, **per car**: the scheduler's own guard preempts at
  ``departure - departure_guard_s`` (a near step), and the owner may leave before that: the car's
  departure error (actual drive-off - announcement) is normal with this car's learned bias and spread,
  shrunk toward (0, ``departure_sigma_s``) with ``ANN_PRIOR_N`` pseudo-departures. Announcements the
  car did not keep (still plugged 2 h after) count as skips and do not widen the spread.
- ``S_full``, charge state and time to full, **per car and place** (at home / away / unknown): the share
  of this car's sessions there that ended within minutes of charging completing (fast-charge stops end
  at full), Beta-shrunk toward the session model's hint shares; the owner leaves ``FULL_OFFSET`` after
  full with sd ``FULL_SD``, conditional on not having left yet (so a car that is full and still there
  loses risk as time passes).
- ``S_wifi``, recent Wi-Fi behaviour **per car and place**: the share of this car's reports in a
  session (at most one counted a minute) that came after a silence longer than ``SILENT_S`` and than
  ``SILENT_CADENCES`` times its usual reporting period there (a weak-Wi-Fi gap), as a hazard of losing
  the claim lease: ``exp(-share * LONG_GAP_SHARE / MEAN_GAP_S * d)``. No evidence, no penalty.

Finally the product goes through the car's own **recalibration** (``IdleHistory.calibrated``): a
logistic correction (slope, offset) learned by SGD from this car's earlier predictions (a few per
session, ``remember``) against how its sessions really ended, shrunk toward none over the first
``CAL_PRIOR_N`` sessions; then ``S_wifi`` applies.

What the model learns beyond the session history it notes from each telemetry record
(``note``, called by ``eligibility.apply_telemetry``: the announced departure of the current session,
when charging completed, silences), and the prediction the scheduler acted on when it assigns a node
(``remember_pick``); when the session ends (``IdleHistory.add``) both are scored against the observed
end. ``stay_probability`` itself changes nothing: the scheduler asks it for every candidate of every
pick, and a node whose learned state changed without being persisted would restore different from what
decided (a replay after a crash must decide the same).

**Session model** (``habit_stay_probability``), as competing exit causes whose survival functions
multiply: ``P(stay >= d) = S_hist(d) * S_dep(d) * S_full(d)``.

1. **Habit** ``S_hist``: the length of a plug-in session is log-normal. Its parameters come from the car's
   own history of finished sessions, kept per 4-hour block of the local week (42 buckets, each an
   exponentially decayed mean and variance of ``ln(duration)``, so 3 floats per bucket seen), per
   4-hour block of the day (6) and for the whole week (1): at most 49 small entries per car. Each level
   is shrunk toward the coarser one by pseudo-counts: prior -> car-wide -> time of day -> week block.
   The prior depends on ``at_home`` and the local start hour: home in the evening/night lasts until
   the next morning, home in the day about 2.5 h, work (away, weekday morning) about 7 h, any other
   away charge about 1 h, unknown 2 h. Given the session already lasted ``a`` seconds the estimate is
   conditional: ``S(a + d) / S(a)``.
   **Hour of day**: the history also keeps, per local hour (weekday and weekend apart, 4 x 24 floats,
   decayed by ``HAZARD_DECAY`` per session), the hours the car spent idle and the sessions that ended
   there: its own rate of leaving at that hour. Over the task's window, hour by hour, the log-normal's
   cumulative hazard is blended with that rate (``hazard_prior_hours`` pseudo-hours of the log-normal),
   so a commuter who left at 07:30 on the last weekdays is a bad bet for a 1-hour task at 07:00, however
   long the night session has lasted.
2. **Scheduled departure** ``S_dep``: trusted, with noise. The node is lost ``departure_guard_s``
   before the departure (the guard preempts), and owners leave early or late with a normal error of
   ``departure_sigma_s``: ``S_dep(d) = 1 - Phi((now + d - (dep - guard)) / sigma)``. A departure that
   is more than one guard in the past is ignored (a stale, probably recurring, setting).
3. **Minutes to full** ``S_full`` (weak hint, off by default: ``full_hint_weight`` = 0): some owners come
   back when charging completes. A share ``q`` of them (0.5 away from home, 0.15 at home, 0.3 unknown,
   times ``full_hint_weight``) leaves around ``full + 10 min`` (sd 15 min).

Sessions are recorded when they end with a known gear change or unplug (see ``eligibility``);
sessions whose end was not observed (telemetry gap) are not recorded. Hour of week is local time,
from ``SchedulerConfig.region_utc_offset_h``. Everything is pure and cheap (a few ``erfc`` calls), and
the per-session habit parameters are cached on the node.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from processors.scheduler.config import SchedulerConfig

__all__ = [
    "IdleHistory",
    "bucket_of",
    "habit_params",
    "habit_stay_probability",
    "idle_until",
    "note",
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


OWNER_LEAD_S = 300.0  # owners are back at the car about this long before the drive-off
DOZING_P = 0.02  # P(stay) of a car whose newest record is a doze-off record
ANN_PRIOR_N = 2.0  # pseudo-departures of the prior (bias 0, sd departure_sigma_s)
ANN_DECAY = 0.9  # weight kept by older departure errors at each new one
ANN_SKIP_S = 2 * 3600.0  # still there this long after the announcement: skipped, not late
FULL_PRIOR_N = 2.0  # pseudo-sessions of the leave-at-full prior
FULL_DECAY = 0.9
FULL_WINDOW_S = (-600.0, 1500.0)  # a session "ended at full" if it ended this close to completion
FULL_OFFSET_S = 600.0  # owners who come back at full do so this long after it, on average
FULL_SD_S = 900.0
SILENT_S = 90.0  # a report after a silence longer than this (reports come every 10-30 s) ends a gap ...
SILENT_CADENCES = 1.5  # ... and longer than this many times the car's usual period there
CADENCE_RATE = 0.1  # EWMA weight of a new reporting period
WIFI_DECAY = 0.995  # per counted report (at most one a minute): a memory of a few days
LONG_GAP_SHARE = 0.15  # share of weak-Wi-Fi gaps long enough to lose the claim lease
MEAN_GAP_S = 600.0
_PLACES = {True: "home", False: "away", None: "unknown"}
CAL_RATE = 0.1  # SGD step of the per-car recalibration (per scored prediction)
CAL_PRIOR_N = 10.0  # sessions before the per-car correction has half its weight
CAL_MIN_SLOPE, CAL_MAX_SLOPE, CAL_MAX_OFFSET = 0.3, 2.0, 3.0
CAL_MAX_ASKED = 12  # predictions kept per session for recalibration
CAL_MAX_D_S = 12 * 3600.0


class NodeState(Protocol):
    """What prediction reads of a node (``eligibility.NodeState`` is the one implementation; it owns an
    ``IdleHistory``, so this module cannot import it back)."""

    region: str
    charge_state: str | None
    minutes_to_full: float | None
    scheduled_departure: int | None
    at_home: bool | None
    session_start: int | None
    history: IdleHistory
    pred_cache: tuple[Any, float, float] | None
    ts: int
    gear_at: int
    soc_at: int


_TOD = 100  # keys 100..105: the same 4-hour block of the day, any weekday
_PER_DAY = 24 // BUCKET_HOURS
HAZARD_DECAY = 0.97  # per recorded session (a car records ~2-4 a day): a half-life of about a week
_MAX_EXPOSURE_S = 3 * 86400.0  # longer sessions add exposure up to here and no departure
_MAX_HAZARD_SEGMENTS = 48  # hourly steps of the hazard integral; beyond, the log-normal alone


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


def _day_hour(ts_ms: int, offset_h: float) -> tuple[int, int, float]:
    """(day type 0 = Mon-Fri / 1 = Sat-Sun, local hour of day 0-23, hours until the next local hour)."""
    how = _local_hours(ts_ms, offset_h)
    hour = int(how) % 168
    return (1 if hour >= 120 else 0), hour % 24, 1.0 - (how - int(how))


class IdleHistory:
    """Decayed per-bucket statistics of ln(plug-in session duration): ``{bucket: [weight, mean, var]}``,
    and the car's departure rate by local hour of the day (``haz``, see ``add``)."""

    __slots__ = ("stats", "sessions", "haz", "ann", "full", "wifi", "cur", "asked", "cal")

    def __init__(
        self,
        stats: dict[int, list[float]] | None = None,
        sessions: int = 0,
        haz: list[list[float]] | None = None,
    ) -> None:
        self.stats: dict[int, list[float]] = stats if stats is not None else {}
        self.sessions = sessions
        # [exposure hours, sessions ended] x [weekday, weekend], 24 local hours each, decayed by
        # HAZARD_DECAY per recorded session: the car's own hazard of leaving at each hour of the day.
        self.haz: list[list[float]] = haz if haz is not None else []
        # Context (see ``note``): departure errors [weight, mean s, var, skips]; per place leave-at-full
        # [weight, ended at full, mean offset s]; per place Wi-Fi [looks, silent looks]; notes of the
        # current session [start, announced departure, estimated full time, completed at (-1: unknown),
        # last look, at_home].
        self.ann: list[float] = []
        self.full: dict[str, list[float]] = {}
        self.wifi: dict[str, list[float]] = {}
        self.cur: list[float | None] = []
        # Per-car recalibration: predictions asked this session [t, d, p] (a few, see ``_remember``) and
        # the car's learned logistic correction [slope, offset, sessions scored].
        self.asked: list[list[float]] = []
        self.cal: list[float] = []

    def _add_hazard(self, start_ms: int, duration_s: float, offset_h: float) -> None:
        if not self.haz:
            self.haz = [[0.0] * 24 for _ in range(4)]
        for row in self.haz:
            for i in range(24):
                row[i] *= HAZARD_DECAY
        t, end = start_ms, start_ms + int(min(duration_s, _MAX_EXPOSURE_S) * 1000)
        while t < end:
            dt, hour, to_next = _day_hour(t, offset_h)
            step = min(end - t, max(1, math.ceil(to_next * _MS_H)))
            self.haz[2 * dt][hour] += step / _MS_H
            t += step
        if duration_s <= _MAX_EXPOSURE_S:
            dt, hour, _ = _day_hour(start_ms + int(duration_s * 1000), offset_h)
            self.haz[2 * dt + 1][hour] += 1.0

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
        self._add_hazard(start_ms, duration_s, offset_h)
        self._score_notes(start_ms, start_ms + duration_s * 1000.0)

    def _score_notes(self, start_ms: int, end_ms: float) -> None:
        """The session ended at ``end_ms``: score its announced departure and charge completion."""
        cur, self.cur = self.cur, []
        asked, self.asked = self.asked, []
        if asked and cur and cur[0] == start_ms:
            self._recalibrate(asked, end_ms)
        if not cur or cur[0] != start_ms:
            return
        dep, full_est, full_at, place = cur[1], cur[2], cur[3], cur[5]
        if full_at is not None and full_at < 0:  # complete when first seen: when it completed is unknown
            full_est = full_at = None
        if dep is not None:
            err = end_ms - dep
            if not self.ann:
                self.ann = [0.0, 0.0, 0.0, 0.0]
            if err > ANN_SKIP_S * 1000:
                self.ann[3] += 1.0
            elif err > -6 * _MS_H:
                w, mu, var, skips = self.ann
                w = w * ANN_DECAY + 1.0
                a, x = 1.0 / w, err / 1000.0
                delta = x - mu
                mu += a * delta
                var = (1.0 - a) * (var + a * delta * delta)
                self.ann = [w, mu, var, skips]
        full = full_at if full_at is not None else full_est
        if full is not None and full <= end_ms + FULL_WINDOW_S[1] * 1000:
            key = "unknown" if place is None else ("home" if place else "away")
            w, ended, off = self.full.get(key, [0.0, 0.0, FULL_OFFSET_S])
            gap = (end_ms - full) / 1000.0
            at_full = FULL_WINDOW_S[0] <= gap <= FULL_WINDOW_S[1]
            w, ended = w * FULL_DECAY + 1.0, ended * FULL_DECAY + at_full
            if at_full:
                off += (gap - off) / max(1.0, ended)
            self.full[key] = [w, ended, off]

    def _recalibrate(self, asked: list[list[float]], end_ms: float) -> None:
        """One pass of logistic-regression SGD on this session's predictions: did the car stay (until
        ``OWNER_LEAD_S`` before the observed end) for each asked duration?"""
        a, b, n = self.cal or [1.0, 0.0, 0.0]
        for t, d, p in asked:
            y = 1.0 if t + (d + OWNER_LEAD_S) * 1000.0 <= end_ms else 0.0
            x = _logit(p)
            q = _sigmoid(a * x + b)
            a = min(CAL_MAX_SLOPE, max(CAL_MIN_SLOPE, a - CAL_RATE * (q - y) * x / 4.0))
            b = min(CAL_MAX_OFFSET, max(-CAL_MAX_OFFSET, b - CAL_RATE * (q - y)))
        self.cal = [a, b, n + 1.0]

    def calibrated(self, p: float) -> float:
        """``p`` through this car's learned correction, shrunk toward none with ``CAL_PRIOR_N`` sessions."""
        if not self.cal:
            return p
        a, b, n = self.cal
        w = n / (n + CAL_PRIOR_N)
        return _sigmoid((1.0 + (a - 1.0) * w) * _logit(p) + b * w)

    def remember(self, now_ms: int, duration_s: float, p: float) -> None:
        """Keep a few of this session's predictions (one per duration band per half hour) for
        ``_recalibrate``."""
        if duration_s > CAL_MAX_D_S or len(self.asked) >= CAL_MAX_ASKED:
            return
        band = int(math.log2(max(60.0, duration_s)))
        for t, d, _ in self.asked:
            if int(math.log2(max(60.0, d))) == band and now_ms - t < 1_800_000:
                return
        self.asked.append([float(now_ms), duration_s, p])

    def ann_params(self, sigma0_s: float) -> tuple[float, float]:
        """(bias s, sd s) of this car's departure error, shrunk toward (0, ``sigma0_s``)."""
        if not self.ann or self.ann[0] <= 0:
            return 0.0, sigma0_s
        w, mu, var, _ = self.ann
        k = ANN_PRIOR_N
        bias = w * mu / (w + k)
        v = (w * (var + (mu - bias) ** 2) + k * (sigma0_s**2 + bias**2)) / (w + k)
        return bias, math.sqrt(max(v, 60.0**2))

    def full_share(self, place: str, prior: float) -> tuple[float, float]:
        """(share of sessions at ``place`` that ended at full, mean offset s), Beta-shrunk to ``prior``."""
        w, ended, off = self.full.get(place, [0.0, 0.0, FULL_OFFSET_S])
        return (ended + FULL_PRIOR_N * prior) / (w + FULL_PRIOR_N), off

    def silent_share(self, place: str) -> float:
        looks, silent = (list(self.wifi.get(place, ())) + [0.0, 0.0])[:2]
        return silent / (looks + 5.0)  # 5 pseudo-looks of a silent-free car

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

    def hazard(self, day_type: int, hour: int, k: float) -> tuple[float, float]:
        """(sessions ended, exposure hours) at this local hour: the day type's own counts with ``k``
        pseudo-hours of both day types pooled (Mon-Fri and weekends differ, but one learns from the other)."""
        if not self.haz:
            return 0.0, 0.0
        e_all = self.haz[0][hour] + self.haz[2][hour]
        n_all = self.haz[1][hour] + self.haz[3][hour]
        e, n = self.haz[2 * day_type][hour], self.haz[2 * day_type + 1][hour]
        if e_all <= 0:
            return 0.0, 0.0
        return n + k * n_all / (e_all + k), e + k * e_all / (e_all + k)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "n": self.sessions,
            "b": [[k, w, m, v] for k, (w, m, v) in sorted(self.stats.items())],
        }
        if self.haz:
            d["h"] = [row[:] for row in self.haz]
        if self.ann:
            d["a"] = self.ann[:]
        if self.full:
            d["f"] = {k: v[:] for k, v in sorted(self.full.items())}
        if self.wifi:
            d["w"] = {k: v[:] for k, v in sorted(self.wifi.items())}
        if self.cur:
            d["c"] = self.cur[:]
        if self.asked:
            d["q"] = [row[:] for row in self.asked]
        if self.cal:
            d["k"] = self.cal[:]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> IdleHistory:
        if not d:
            return cls()
        haz = [[float(x) for x in row] for row in d["h"]] if d.get("h") else None
        hist = cls(
            {int(row[0]): [float(row[1]), float(row[2]), float(row[3])] for row in d["b"]}, int(d["n"]), haz
        )
        hist.ann = [float(x) for x in d.get("a") or []]
        hist.full = {k: [float(x) for x in v] for k, v in (d.get("f") or {}).items()}
        hist.wifi = {k: [float(x) for x in v] for k, v in (d.get("w") or {}).items()}
        hist.cur = list(d.get("c") or [])
        hist.asked = [[float(x) for x in row] for row in d.get("q") or []]
        hist.cal = [float(x) for x in d.get("k") or []]
        return hist


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


def _habit_survival(
    node: NodeState,
    mu: float,
    sigma: float,
    elapsed: float,
    duration_s: float,
    now_ms: int,
    cfg: SchedulerConfig,
) -> float:
    """P(the session lasts ``duration_s`` more | it lasted ``elapsed``).

    Hour by hour, the log-normal's cumulative hazard over the step is blended with the car's own rate of
    leaving at that local hour: ``H = (ended * dt + k * H_lognormal) / (exposure + k)``, ``k`` =
    ``hazard_prior_hours``. With no history this is the log-normal; with a few days it is the car's habit
    (a commuter who left at 07:30 on the last weekdays will likely leave at 07:30 today)."""
    if duration_s <= 0:
        return 1.0
    k = cfg.hazard_prior_hours
    if k <= 0 or not node.history.haz:
        s_a = _ln_sf(elapsed, mu, sigma)
        return min(1.0, _ln_sf(elapsed + duration_s, mu, sigma) / s_a) if s_a > 1e-12 else 1.0
    offset = cfg.utc_offset_h(node.region)
    hist = node.history
    total = 0.0  # cumulative hazard
    t_ms, end_ms = now_ms, now_ms + int(duration_s * 1000)
    ln_prev = _ln_logsf(elapsed, mu, sigma)
    for _ in range(_MAX_HAZARD_SEGMENTS):
        if t_ms >= end_ms:
            break
        day_type, hour, to_next = _day_hour(t_ms, offset)
        step_ms = min(end_ms - t_ms, max(1, math.ceil(to_next * _MS_H)))
        t_ms += step_ms
        ln_next = _ln_logsf(elapsed + (t_ms - now_ms) / 1000.0, mu, sigma)
        h_ln = ln_prev - ln_next
        ln_prev = ln_next
        ended, exposure = hist.hazard(day_type, hour, cfg.hazard_pool_hours)
        total += (ended * step_ms / _MS_H + k * h_ln) / (exposure + k)
    if t_ms < end_ms:
        total += ln_prev - _ln_logsf(elapsed + duration_s, mu, sigma)
    return math.exp(-total)


def _ln_logsf(t: float, mu: float, sigma: float) -> float:
    """ln P(log-normal > t), finite far in the tail."""
    if t <= 0:
        return 0.0
    z = (math.log(t) - mu) / sigma
    if z < 8.0:
        return math.log(max(_norm_sf(z), 1e-300))
    return -0.5 * z * z - math.log(z * math.sqrt(2.0 * math.pi))  # Mills ratio


def habit_stay_probability(node: NodeState, duration_s: float, now_ms: int, cfg: SchedulerConfig) -> float:
    """The session model (before issue 13): P(the node is still idle ``duration_s`` after ``now_ms``)."""
    mu, sigma, elapsed = habit_params(node, now_ms, cfg)
    p = _habit_survival(node, mu, sigma, elapsed, duration_s, now_ms, cfg)
    dep = node.scheduled_departure
    if dep is not None:
        guard_ms = cfg.departure_guard_s * 1000.0
        if now_ms < dep + guard_ms:
            end = dep - guard_ms
            p *= _norm_sf((now_ms + duration_s * 1000.0 - end) / (cfg.departure_sigma_s * 1000.0))
    mtf = node.minutes_to_full
    if (
        cfg.full_hint_weight > 0
        and mtf is not None
        and mtf > 0
        and node.charge_state in ("CHARGING", "STARTING")
    ):
        q = cfg.full_hint_weight * (0.3 if node.at_home is None else (0.15 if node.at_home else 0.5))
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


def _logit(p: float) -> float:
    p = min(1.0 - 1e-4, max(1e-4, p))
    return math.log(p / (1.0 - p))


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def _place(node: NodeState) -> str:
    return _PLACES[node.at_home]


def _full_prior(node: NodeState) -> float:
    """The session model's share of owners back when charging ends, by place (before any history)."""
    return 0.3 if node.at_home is None else (0.15 if node.at_home else 0.5)


def note(node: NodeState, now_ms: int, cfg: SchedulerConfig, gap_ms: int | None = None) -> None:
    """Note what a telemetry record shows that the model scores when its session ends
    (``IdleHistory.add``): the earliest announced departure of this session, when charging completes, and
    (at most once a minute) whether the record came after a silence (``gap_ms`` since the car's previous
    one). Cheap and idempotent; called by ``eligibility.apply_telemetry`` for every applied record."""
    start = node.session_start
    hist = node.history
    if start is None:
        return
    cur = hist.cur
    if not cur or cur[0] != start:
        cur = hist.cur = [start, None, None, None, None, None]
    dep = node.scheduled_departure
    if dep is not None and dep > start and (cur[1] is None or dep < cur[1]):
        cur[1] = dep
    if node.charge_state in ("CHARGING", "STARTING") and node.minutes_to_full:
        cur[2] = now_ms + node.minutes_to_full * 60_000.0
    elif node.charge_state == "COMPLETE" and cur[3] is None:
        est = cur[2]
        cur[3] = min(float(now_ms), est) if est is not None else -1.0
    cur[5] = node.at_home
    if gap_ms is None or start >= now_ms:  # the session's first record: its gap was a drive, not Wi-Fi
        return
    looks, silent, cadence = (list(hist.wifi.get(_place(node), ())) + [0.0, 0.0, 0.0])[:3]
    gap_s = gap_ms / 1000.0
    quiet = cadence > 0 and gap_s > max(SILENT_S, SILENT_CADENCES * cadence)
    if not quiet:  # the car's usual reporting period here (a silence does not stretch it; the first gap
        # seen sets it)
        cadence = gap_s if cadence <= 0 else cadence + CADENCE_RATE * (gap_s - cadence)
    last = cur[4]
    if quiet or last is None or now_ms - last >= 60_000:  # a silence always counts; reports once a minute
        cur[4] = now_ms
        looks, silent = looks * WIFI_DECAY + 1.0, silent * WIFI_DECAY + quiet
    hist.wifi[_place(node)] = [looks, silent, cadence]


def _dozing(node: NodeState) -> bool:
    """The newest record reported neither gear nor SoC: the record a car sends as it dozes off."""
    return node.ts >= 0 and node.gear_at < node.ts and node.soc_at < node.ts


def _announced_survival(node: NodeState, d_s: float, now_ms: int, cfg: SchedulerConfig) -> float:
    dep = node.scheduled_departure
    guard_ms = cfg.departure_guard_s * 1000.0
    if dep is None or now_ms >= dep + guard_ms:
        return 1.0
    end = now_ms + d_s * 1000.0
    bias, sd = node.history.ann_params(cfg.departure_sigma_s)
    s_guard = _norm_sf((end - (dep - guard_ms)) / 120_000.0) if now_ms < dep - guard_ms else 1.0
    return s_guard * _norm_sf((end - (dep + bias * 1000.0)) / (sd * 1000.0))


def _full_survival(node: NodeState, d_s: float, now_ms: int, cfg: SchedulerConfig) -> float:
    if cfg.full_hint_weight <= 0 or node.charge_state not in ("CHARGING", "STARTING", "COMPLETE"):
        return 1.0
    share, offset = node.history.full_share(_place(node), _full_prior(node))
    q = min(1.0, cfg.full_hint_weight * share)
    if q <= 0:
        return 1.0
    mtf = node.minutes_to_full
    if node.charge_state == "COMPLETE":
        cur = node.history.cur
        full = cur[3] if cur and cur[0] == node.session_start and cur[3] is not None else None
        if full is None or full < 0:
            return 1.0  # complete since before the first look: when it completed is unknown
    elif mtf is not None and mtf > 0:
        full = now_ms + mtf * 60_000.0
    else:
        return 1.0
    center, sd = full + offset * 1000.0, FULL_SD_S * 1000.0
    gone_by_now = q * (1.0 - _norm_sf((now_ms - center) / sd))
    gone_by_end = q * (1.0 - _norm_sf((now_ms + d_s * 1000.0 - center) / sd))
    return max(0.0, 1.0 - (gone_by_end - gone_by_now) / max(1e-9, 1.0 - gone_by_now))


def _wifi_survival(node: NodeState, d_s: float) -> float:
    share = node.history.silent_share(_place(node))
    return math.exp(-share * LONG_GAP_SHARE / MEAN_GAP_S * d_s) if share > 0 else 1.0


def _uncalibrated(node: NodeState, duration_s: float, now_ms: int, cfg: SchedulerConfig) -> float:
    d = duration_s + OWNER_LEAD_S
    mu, sigma, elapsed = habit_params(node, now_ms, cfg)
    p = _habit_survival(node, mu, sigma, elapsed, d, now_ms, cfg)
    p *= _announced_survival(node, d, now_ms, cfg)
    p *= _full_survival(node, d, now_ms, cfg)
    return max(0.0, min(1.0, p))


def stay_probability(node: NodeState, duration_s: float, now_ms: int, cfg: SchedulerConfig) -> float:
    """P(the node is still idle and holding work ``duration_s`` seconds after ``now_ms``): the context
    model (module docstring). Pure: reads the node, changes nothing."""
    if _dozing(node):
        return DOZING_P
    p = node.history.calibrated(_uncalibrated(node, duration_s, now_ms, cfg))
    return max(0.0, min(1.0, p * _wifi_survival(node, duration_s)))


def remember_pick(node: NodeState, duration_s: float, now_ms: int, cfg: SchedulerConfig) -> None:
    """The scheduler assigned ``node`` work of ``duration_s``: keep the model's prediction for this car's
    recalibration (``IdleHistory.remember``). Called where the node is written anyway (an assignment)."""
    if node.session_start is not None and not _dozing(node):
        node.history.remember(now_ms, duration_s, _uncalibrated(node, duration_s, now_ms, cfg))
