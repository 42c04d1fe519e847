"""Per-vin node state, updated from ``fleet.telemetry.v1``, and the eligibility decision.

Not-reported values (the rule, precisely):

* A field that is missing/null, or an enum reported as ``UNKNOWN`` (or any symbol we do not know), is
  *not reported*: it never overwrites the last known value and does not refresh that field's
  report time. It is never read as "unplugged" or "not parked".
* Liveness comes from data: only a record that carries a *live reading* (a known gear, or a usable
  SoC, computer temperature, charge limit or minutes-to-full) renews the node's data-timeout lease
  (``lease_ts``; ``LEASE_EXPIRED`` when ``now - lease_ts > lease_s``), never connectivity hints. A record
  with none of them is the one a car sends as it falls asleep (its readings go UNKNOWN/null; some cars
  keep their last charge state, so that field alone does not count as live): it renews nothing and marks
  the node ``ASLEEP`` (not eligible, not preempting on its own: work it holds is guarded by the lease and
  ``claim_lease_s``) until the next live record. Whatever known value it carries is still folded in.
* Owner presence (``owner_since``, set by the matcher when the node reports its owner back or refuses an
  ASSIGN as unavailable, at the report's event time R): the node is ``OWNER_PRESENT`` until a plug-in
  session that started after R is seen (the car left P or was unplugged, and is parked and plugged again:
  ``session_start > R``), or ``owner_away_s`` after R (the owner came and went without driving off).
  Either way it then needs fresh values (``confirm_s``) like any node becoming eligible.
* Gear, charge state and SoC are the critical fields. A last known *bad* value always counts
  (gear D reported 20 minutes ago still means NOT_PARKED). A last known *good* value counts only
  while it is recent: to make a node **newly** eligible it must have been reported within
  ``confirm_s``; a node that is already eligible (``ready_since`` set) keeps trusting it for
  ``field_ttl_s``. Otherwise the node is ``UNKNOWN_STATE`` (ineligible, but never preempted for it).
  So a not-reported value can keep a node eligible for a while but can never make it newly eligible.
* Computer temperature is optional: unknown or older than ``field_ttl_s`` passes.
* A double that is reported but unusable (NaN, +-inf, or outside its physical range ``READING_RANGES``)
  is *not reported* as well (the last good value stays), and more: until a usable value of that field
  arrives, every rule that needs it fails. A broken SoC makes the node ``SOC_INVALID``, a broken
  computer temperature ``TEMP_INVALID`` (neither preempts running work, like ``UNKNOWN_STATE``).
  ``charge_limit_pct`` and ``minutes_to_full`` feed only the idle-time prediction: unusable = not
  reported, nothing else. So "not reported" never reads as "fine": NaN compares false with every
  threshold, and it never reaches one.
* Telemetry older than the newest seen (``ts`` smaller) is ignored as out of order; the same ``ts``
  again is a duplicate and a no-op. Both are counted by the caller.

Reasons, checked in this order (the first that applies is reported): LEASE_EXPIRED, ASLEEP, NOT_OPTED_IN,
HW_TOO_OLD, NOT_PARKED, NOT_PLUGGED_IN, OWNER_PRESENT, SOC_INVALID, TEMP_INVALID, UNKNOWN_STATE,
SOC_TOO_LOW, TOO_HOT, DEPARTURE_SOON, THROTTLED, AT_CAPACITY. Everything before THROTTLED is about the
car itself ("ready").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from operator import attrgetter
from typing import Any

from processors.scheduler._time import opt_ms, to_ms
from processors.scheduler.config import HW_RANK, SchedulerConfig
from processors.scheduler.prediction import IdleHistory, note

__all__ = [
    "LEASE_EXPIRED",
    "ASLEEP",
    "NOT_OPTED_IN",
    "HW_TOO_OLD",
    "NOT_PARKED",
    "NOT_PLUGGED_IN",
    "OWNER_PRESENT",
    "SOC_INVALID",
    "TEMP_INVALID",
    "UNKNOWN_STATE",
    "READING_RANGES",
    "SOC_TOO_LOW",
    "TOO_HOT",
    "DEPARTURE_SOON",
    "THROTTLED",
    "AT_CAPACITY",
    "REASONS",
    "NodeState",
    "TelemetryResult",
    "apply_telemetry",
    "evaluate",
    "is_ready",
    "next_change_at",
    "owner_present",
]

LEASE_EXPIRED = "LEASE_EXPIRED"
ASLEEP = "ASLEEP"
NOT_OPTED_IN = "NOT_OPTED_IN"
HW_TOO_OLD = "HW_TOO_OLD"
NOT_PARKED = "NOT_PARKED"
NOT_PLUGGED_IN = "NOT_PLUGGED_IN"
OWNER_PRESENT = "OWNER_PRESENT"
SOC_INVALID = "SOC_INVALID"
TEMP_INVALID = "TEMP_INVALID"
UNKNOWN_STATE = "UNKNOWN_STATE"
SOC_TOO_LOW = "SOC_TOO_LOW"
TOO_HOT = "TOO_HOT"
DEPARTURE_SOON = "DEPARTURE_SOON"
THROTTLED = "THROTTLED"
AT_CAPACITY = "AT_CAPACITY"
REASONS = (
    LEASE_EXPIRED,
    ASLEEP,
    NOT_OPTED_IN,
    HW_TOO_OLD,
    NOT_PARKED,
    NOT_PLUGGED_IN,
    OWNER_PRESENT,
    SOC_INVALID,
    TEMP_INVALID,
    UNKNOWN_STATE,
    SOC_TOO_LOW,
    TOO_HOT,
    DEPARTURE_SOON,
    THROTTLED,
    AT_CAPACITY,
)
_NOT_READY_OK = (None, THROTTLED, AT_CAPACITY)

# Physical range of each double of fleet.telemetry.v1; outside it (or NaN/inf) a reading is unusable.
READING_RANGES: dict[str, tuple[float, float]] = {
    "soc_pct": (0.0, 100.0),
    "compute_temp_c": (-100.0, 200.0),
    "charge_limit_pct": (0.0, 100.0),
    "minutes_to_full": (0.0, 7 * 24 * 60.0),
}
# The fields an eligibility rule needs, and the reason a node gets while its latest reading is unusable.
_INVALID_REASON = {"soc_pct": SOC_INVALID, "compute_temp_c": TEMP_INVALID}

_GEARS = frozenset({"P", "R", "N", "D"})
_CHARGE_STATES = frozenset({"DISCONNECTED", "NO_POWER", "STARTING", "CHARGING", "COMPLETE", "STOPPED"})
_CABLE_IN = frozenset({"NO_POWER", "STARTING", "CHARGING", "COMPLETE", "STOPPED"})


class TelemetryResult(Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    OUT_OF_ORDER = "out_of_order"


@dataclass(slots=True)
class NodeState:
    """Everything known about one car as a compute node. ``to_dict``/``from_dict`` are JSON-safe."""

    vin: str
    region: str = ""
    pool: str = ""
    hw: str = "OTHER"
    ts: int = -1  # event time of the newest accepted telemetry (ordering); -1 = never
    lease_ts: int = -1  # event time of the newest record with a live reading (the lease); -1 = never
    asleep: bool = False  # the newest record carried no live reading (the car dozed off)
    owner_since: int | None = None  # event time of the node's last owner-back report / refusal
    opted_in: bool = False
    gear: str | None = None  # last *reported* value (never UNKNOWN), with its report time
    gear_at: int = -1
    charge_state: str | None = None
    charge_at: int = -1
    soc_pct: float | None = None
    soc_at: int = -1
    compute_temp_c: float | None = None
    temp_at: int = -1
    charge_limit_pct: float | None = None
    minutes_to_full: float | None = None
    scheduled_departure: int | None = None
    at_home: bool | None = None
    software_version: str | None = None
    session_start: int | None = None  # start of the current parked + cable-in session
    ready_since: int | None = None  # since when the car itself qualifies (sticky trust of old values)
    eligible: bool = False  # last decision
    reason: str | None = UNKNOWN_STATE
    capacity: int = 1
    running: list[str] = field(default_factory=list)  # task_ids held, len <= capacity
    # reliability (BOINC-like)
    reliability: float = 0.7
    success_streak: int = 0
    failure_streak: int = 0
    throttled_until: int = -1
    completed: int = 0
    failed: int = 0
    history: IdleHistory = field(default_factory=IdleHistory)
    invalid: list[str] = field(default_factory=list)  # fields whose latest reading was unusable (sorted)
    pub_sig: int = 0  # signature and time of the last published fleet.nodes.v1 record
    pub_ts: int = -1
    timer_at: int | None = None  # when the scheduler re-evaluates the node with no new input
    pred_cache: tuple[Any, float, float] | None = None  # not persisted: cache of the habit model
    persisted_cold: int | None = None  # not persisted: ``cold_signature`` when last written in full

    _PERSISTED = (
        "vin",
        "region",
        "pool",
        "hw",
        "ts",
        "lease_ts",
        "asleep",
        "owner_since",
        "opted_in",
        "gear",
        "gear_at",
        "charge_state",
        "charge_at",
        "soc_pct",
        "soc_at",
        "compute_temp_c",
        "temp_at",
        "charge_limit_pct",
        "minutes_to_full",
        "scheduled_departure",
        "at_home",
        "software_version",
        "session_start",
        "ready_since",
        "eligible",
        "reason",
        "capacity",
        "reliability",
        "success_streak",
        "failure_streak",
        "throttled_until",
        "completed",
        "failed",
        "pub_sig",
        "pub_ts",
        "timer_at",
    )

    # What an ordinary telemetry record moves (event times, readings, the session's notes): the rest
    # ("cold") changes only with an eligibility, session or work change. ``wiring_state`` writes the hot
    # part alone (``hot_values``) while ``cold_signature`` is unchanged since the last full write.
    _HOT = (
        "ts",
        "lease_ts",
        "asleep",
        "gear_at",
        "charge_at",
        "soc_pct",
        "soc_at",
        "compute_temp_c",
        "temp_at",
        "charge_limit_pct",
        "minutes_to_full",
    )

    def hot_values(self) -> list[Any]:
        """The hot fields, then the history's notes of the session and its Wi-Fi counters (``note``)."""
        return [*_get_hot(self), self.history.cur, self.history.wifi]

    def cold_signature(self) -> int:
        """A hash of everything persisted but the hot part (in-process only: never stored). The
        history's other parts change only in ``IdleHistory.add`` (``sessions`` grows) and
        ``IdleHistory.remember`` (``asked`` grows)."""
        hist = self.history
        return hash(
            (_get_cold(self), tuple(self.running), tuple(self.invalid), hist.sessions, len(hist.asked))
        )

    @classmethod
    def overlay_hot(cls, d: dict[str, Any], hot: list[Any]) -> None:
        """Put ``hot_values`` (a later write) over node dict ``d`` (``to_dict``), in place."""
        for name, value in zip(cls._HOT, hot, strict=False):
            d[name] = value
        history = d.setdefault("history", {"n": 0, "b": []})
        history["c"], history["w"] = hot[len(cls._HOT)], hot[len(cls._HOT) + 1]

    def to_dict(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in self._PERSISTED}
        d["running"] = list(self.running)
        d["invalid"] = list(self.invalid)
        d["history"] = self.history.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NodeState:
        node = cls(vin=d["vin"])
        for name in cls._PERSISTED:
            if name in d:
                setattr(node, name, d[name])
        if "lease_ts" not in d:  # written before liveness came from data: every record was live
            node.lease_ts = node.ts
        node.running = list(d.get("running", []))
        node.invalid = list(d.get("invalid") or [])
        node.history = IdleHistory.from_dict(d.get("history"))
        return node


_get_hot = attrgetter(*NodeState._HOT)
_get_cold = attrgetter(*(name for name in NodeState._PERSISTED if name not in NodeState._HOT))


def _known(value: Any, allowed: frozenset[str]) -> str | None:
    return value if isinstance(value, str) and value in allowed else None


def reading(value: Any, name: str) -> float | None:
    """``value`` as a usable reading of double field ``name``, or None (NaN, inf, out of range, not a
    number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    lo, hi = READING_RANGES[name]
    number = float(value)
    return number if math.isfinite(number) and lo <= number <= hi else None


def _fold_readings(node: NodeState, rec: dict[str, Any], ts: int) -> bool:
    """The doubles of one record: usable ones are stored, unusable ones mark their field invalid.
    Returns whether any was usable (a live reading)."""
    invalid = set(node.invalid)
    live = False
    for name in READING_RANGES:
        raw = rec.get(name)
        if raw is None:
            continue  # not reported: nothing changes
        value = reading(raw, name)
        if value is None:
            invalid.add(name)
            continue
        invalid.discard(name)
        live = True
        setattr(node, name, value)
        if name == "soc_pct":
            node.soc_at = ts
        elif name == "compute_temp_c":
            node.temp_at = ts
    node.invalid = sorted(invalid)
    return live


def apply_telemetry(
    node: NodeState, rec: dict[str, Any], cfg: SchedulerConfig
) -> tuple[TelemetryResult, tuple[int, float] | None]:
    """Fold one telemetry record into ``node``.

    Returns the result and, when a plug-in session ended with an observed end, ``(start_ms, seconds)``
    (already added to the node's history).
    """
    ts = to_ms(rec["ts"])
    if ts < node.ts:
        return TelemetryResult.OUT_OF_ORDER, None
    if ts == node.ts:
        return TelemetryResult.DUPLICATE, None
    prev_ts = node.ts
    node.ts = ts
    node.region = rec.get("region") or node.region
    hw = rec.get("hw")
    if isinstance(hw, str) and hw in HW_RANK:
        node.hw = hw
    if rec.get("opted_in") is not None:
        node.opted_in = bool(rec["opted_in"])
    gear = _known(rec.get("gear"), _GEARS)
    if gear is not None:
        node.gear, node.gear_at = gear, ts
    charge = _known(rec.get("charge_state"), _CHARGE_STATES)
    if charge is not None:
        node.charge_state, node.charge_at = charge, ts
    live = _fold_readings(node, rec, ts) or gear is not None
    node.asleep = not live
    if live:
        node.lease_ts = ts
    if rec.get("scheduled_departure") is not None:
        node.scheduled_departure = opt_ms(rec["scheduled_departure"])
    if rec.get("at_home") is not None:
        node.at_home = bool(rec["at_home"])
    if rec.get("software_version") is not None:
        node.software_version = rec["software_version"]

    # Plug-in session tracking, from known values only.
    ended: tuple[int, float] | None = None
    in_session = node.gear == "P" and node.charge_state in _CABLE_IN
    left = (gear is not None and gear != "P") or charge == "DISCONNECTED"
    if node.session_start is None:
        if in_session and (gear is not None or charge is not None):
            node.session_start = ts
    elif left:
        start = node.session_start
        node.session_start = None
        # Only record a session whose end we saw: no telemetry gap longer than the stale-field TTL.
        if prev_ts >= 0 and ts - prev_ts <= cfg.field_ttl_s * 1000:
            seconds = (ts - start) / 1000.0
            node.history.add(start, seconds, cfg.utc_offset_h(node.region), cfg.history_decay)
            ended = (start, seconds)
    if node.session_start is not None:
        note(node, ts, cfg, ts - prev_ts if prev_ts >= 0 else None)
    return TelemetryResult.APPLIED, ended


def _fresh(at: int, now: int, ttl_ms: float) -> bool:
    return at >= 0 and now - at <= ttl_ms


def evaluate(node: NodeState, now: int, cfg: SchedulerConfig) -> tuple[bool, str | None]:
    """``(eligible, reason)`` of ``node`` at event time ``now`` (ms); reason is None when eligible. Pure."""
    if node.lease_ts < 0 or now - node.lease_ts > cfg.lease_s * 1000:
        return False, LEASE_EXPIRED
    if node.asleep:
        return False, ASLEEP
    if not node.opted_in:
        return False, NOT_OPTED_IN
    if HW_RANK.get(node.hw, 0) < HW_RANK[cfg.min_hw]:
        return False, HW_TOO_OLD
    if node.gear is not None and node.gear != "P":
        return False, NOT_PARKED
    if node.charge_state is not None and node.charge_state not in cfg.plugged_states:
        return False, NOT_PLUGGED_IN
    if owner_present(node, now, cfg):
        return False, OWNER_PRESENT
    for name, reason in _INVALID_REASON.items():
        if name in node.invalid:
            return False, reason
    ttl = (cfg.field_ttl_s if node.ready_since is not None else cfg.confirm_s) * 1000
    if not (
        _fresh(node.gear_at, now, ttl) and _fresh(node.charge_at, now, ttl) and _fresh(node.soc_at, now, ttl)
    ):
        return False, UNKNOWN_STATE
    if node.soc_pct is not None and node.soc_pct < cfg.min_soc_pct:
        return False, SOC_TOO_LOW
    if (
        node.compute_temp_c is not None
        and _fresh(node.temp_at, now, cfg.field_ttl_s * 1000)
        and node.compute_temp_c > cfg.max_compute_temp_c
    ):
        return False, TOO_HOT
    dep = node.scheduled_departure
    if dep is not None and dep - cfg.departure_guard_s * 1000 <= now < dep + cfg.departure_guard_s * 1000:
        return False, DEPARTURE_SOON
    if node.throttled_until > now:
        return False, THROTTLED
    if len(node.running) >= node.capacity:
        return False, AT_CAPACITY
    return True, None


def owner_present(node: NodeState, now: int, cfg: SchedulerConfig) -> bool:
    """Whether the owner the node reported back (at ``owner_since``) may still be at the car: no plug-in
    session started since the report, and less than ``owner_away_s`` went by."""
    since = node.owner_since
    if since is None or now >= since + cfg.owner_away_s * 1000:
        return False
    return node.session_start is None or node.session_start <= since


def is_ready(reason: str | None) -> bool:
    """Whether the car itself qualifies (eligible, or only throttled / full)."""
    return reason in _NOT_READY_OK


def next_change_at(node: NodeState, now: int, cfg: SchedulerConfig) -> int | None:
    """Earliest time after ``now`` at which ``evaluate`` could change with no new input, or None."""
    best: int | None = None

    def consider(t: float) -> None:
        nonlocal best
        ti = int(t)
        if ti > now and (best is None or ti < best):
            best = ti

    if node.lease_ts >= 0:
        consider(node.lease_ts + cfg.lease_s * 1000 + 1)
        if node.running:
            consider(node.lease_ts + cfg.claim_lease_s * 1000 + 1)
    if node.owner_since is not None:
        consider(node.owner_since + cfg.owner_away_s * 1000)
    ttl = (cfg.field_ttl_s if node.ready_since is not None else cfg.confirm_s) * 1000
    for at in (node.gear_at, node.charge_at, node.soc_at):
        if at >= 0:
            consider(at + ttl + 1)
    if node.temp_at >= 0:
        consider(node.temp_at + cfg.field_ttl_s * 1000 + 1)
    if node.scheduled_departure is not None:
        guard = cfg.departure_guard_s * 1000
        consider(node.scheduled_departure - guard)
        consider(node.scheduled_departure + guard)
    if node.throttled_until >= 0:
        consider(node.throttled_until)
    return best
