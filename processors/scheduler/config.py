"""Every threshold of the scheduler, in one frozen dataclass (defaults from DOMAIN.md).

Times are in seconds here (operators think in seconds); the scheduler works in epoch milliseconds
internally. Build a variant with ``dataclasses.replace(DEFAULT_CONFIG, lease_s=60)`` or
``SchedulerConfig.from_mapping({...})`` (unknown keys raise, so typos in settings fail loudly).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["DEFAULT_CONFIG", "HW_RANK", "PLUGGED_STATES", "PREEMPT_REASONS", "SchedulerConfig"]

# Hardware generations, oldest first. OTHER (unknown or foreign computer) ranks lowest.
HW_RANK: dict[str, int] = {"OTHER": 0, "HW3": 1, "HW4": 2, "HW5": 3}

# Charge states that mean "a cable is in and the charger powers the car" (DOMAIN: eligibility).
# NO_POWER (cable in, charger gives nothing) would drain the battery, so it does not qualify.
PLUGGED_STATES: frozenset[str] = frozenset({"STARTING", "CHARGING", "COMPLETE", "STOPPED"})

# Ineligibility reasons that mean "the owner is back" (or the node is gone / unsafe): a node that
# holds work and turns ineligible for one of these gets its tasks revoked and requeued.
# UNKNOWN_STATE, ASLEEP, THROTTLED, AT_CAPACITY and HW_TOO_OLD never preempt running work.
PREEMPT_REASONS: frozenset[str] = frozenset(
    {
        "NOT_OPTED_IN",
        "NOT_PARKED",
        "NOT_PLUGGED_IN",
        "SOC_TOO_LOW",
        "TOO_HOT",
        "DEPARTURE_SOON",
        "LEASE_EXPIRED",
        "OWNER_PRESENT",
    }
)

# Rough standard-time UTC offsets of the regions the simulator and tests use (hour-of-week is local).
_REGION_OFFSETS: tuple[tuple[str, float], ...] = (
    ("us-west", -8.0),
    ("us-mountain", -7.0),
    ("us-central", -6.0),
    ("us-east", -5.0),
    ("ca-east", -5.0),
    ("ca-west", -8.0),
)


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Thresholds and knobs of eligibility, matching, preemption, reliability and prediction."""

    # --- eligibility (HTCondor START expression for a car) --------------------------------------
    min_hw: str = "HW4"  # oldest computer generation that may take work
    min_soc_pct: float = 30.0  # battery floor
    max_compute_temp_c: float = 85.0  # computer temperature ceiling
    lease_s: float = 120.0  # data-timeout lease: no telemetry for this long -> LEASE_EXPIRED
    # A node that holds work keeps its claim (is not preempted) while silent for up to claim_lease_s:
    # parked cars drop off weak Wi-Fi for minutes; it gets no new work after lease_s all the same.
    # 15 minutes, HTCondor's stale-ad expiry: at 10, 40 % of 2-15 minute Wi-Fi gaps preempted running work.
    claim_lease_s: float = 900.0
    # A gear / charge-state / SoC value must have been *reported* within confirm_s for a node to become
    # eligible; an already-eligible node keeps trusting its last good values for field_ttl_s while
    # the car reports those fields as missing/UNKNOWN (a record with no live reading at all: ASLEEP).
    confirm_s: float = 120.0
    field_ttl_s: float = 900.0  # HTCondor's stale-ad expiry is 15 minutes
    # A node that reported its owner back (FAILED "abandoned: owner_returned") or refused an ASSIGN as
    # "node_unavailable" gets no work until a plug-in session started after that report is seen, or this
    # long after it (the owner came and went without driving off).
    owner_away_s: float = 1800.0
    departure_guard_s: float = 1200.0  # owner "returns" this long before the scheduled departure
    plugged_states: frozenset[str] = PLUGGED_STATES  # charge states that count as plugged in
    preempt_reasons: frozenset[str] = PREEMPT_REASONS  # ineligibility reasons that revoke running work
    default_capacity: int = 1  # tasks a node runs at once
    # A record (telemetry, request, status) whose ts is more than this past its arrival (Kafka timestamp)
    # is dead-lettered (FUTURE_TIMESTAMP) and moves no clock, lease or route (direct calls with no arrival:
    # telemetry is judged against the scheduler's own clock).
    max_future_skew_s: float = 300.0
    # A node silent this long (event time) that holds no work is forgotten, history and all (memory bound).
    node_ttl_s: float = 30 * 24 * 3600.0

    # --- queue, claims, deadlines ----------------------------------------------------------------
    aging_per_min: float = 0.1  # priority points a waiting task gains per minute (0 = strict priority)
    claim_timeout_s: float = 60.0  # ASSIGNED but not STARTED within this -> REVOKE + REQUEUED
    # A COMPLETED report for an assignment the scheduler already took back (claim timeout, preemption,
    # deadline) still completes the task if its ts is before the REVOKE and it arrives at most this late
    # (scheduler clock - report ts): statuses reach the matcher later than the telemetry driving its clock.
    late_status_s: float = 3600.0
    # A task is started only if deadline - now >= deadline_fit x est_duration_s; else it ends EXPIRED
    # (CANNOT_FINISH_BY_DEADLINE). 1 = the whole estimate must fit; lower also starts tasks that finish in
    # time only if they run shorter than estimated (est_duration_s is an estimate, not a bound).
    deadline_fit: float = 1.0
    max_failures: int = 3  # FAILED reports before a task is given up (final FAILED)
    max_task_duration_s: float = 24 * 3600.0  # longer est_duration_s is REJECTED
    tombstone_ttl_s: float = 24 * 3600.0  # finished tasks are remembered this long (duplicate requests)
    spill_after_s: float = 60.0  # an any-region task waiting this long moves on (doubling per hop)
    pools: tuple[str, ...] = ()  # known pools, for routing any-region tasks (empty: pools seen so far)
    local_pools: frozenset[str] | None = None  # pools this instance owns (None: all; else handoffs)
    max_queued_tasks: int = 100_000  # tasks waiting per pool; a request beyond it is REJECTED (QUEUE_FULL)
    max_scan_tasks: int = 2000  # queue entries examined per matching pass
    max_candidates: int = 256  # feasible nodes ranked per task (free set is scanned in hash shards)
    # Ranking evaluates stay probabilities at now rounded down to this step and durations rounded up to
    # 2 % classes, memoized per node until its next telemetry (``stay_cache``); 0: exact, no memo.
    rank_time_step_s: float = 10.0
    node_republish_s: float = 600.0  # re-publish an unchanged node at least this often

    # --- reliability (BOINC-like) -----------------------------------------------------------------
    reliability_prior: float = 0.7  # score of a node with no history
    reliability_alpha: float = 0.2  # EWMA weight of each new outcome
    trust_after_successes: int = 5  # consecutive successes that make a node "trusted" (retries go there)
    throttle_after_failures: int = 3  # consecutive failures that throttle a node
    throttle_base_s: float = 600.0  # first backoff; doubles with each further failure
    throttle_max_s: float = 24 * 3600.0  # longest throttle backoff

    # --- ranking and prediction ---------------------------------------------------------------------
    ranking: Literal["predictive", "random"] = "predictive"  # how feasible nodes are ordered
    seed: int = 0  # seeds the random ranking (stateless: hash of seed, task, attempt, vin)
    min_stay_probability: float = 0.0  # predictive: leave a task queued rather than use a worse node
    # Predictive: nodes whose risk (1 - p) is within rank_tolerance x the best risk + rank_tolerance_abs
    # count as equally good for the task; among them the least over-qualified hardware (hw_best_fit: keep
    # HW5 nodes for HW5-only tasks), then reliability (in 0.05 steps), then p wins.
    rank_tolerance: float = 0.0
    rank_tolerance_abs: float = 0.025  # see rank_tolerance
    hw_best_fit: bool = True  # see rank_tolerance
    departure_sigma_s: float = 600.0  # noise of a scheduled departure (owners leave early or late)
    hazard_prior_hours: float = 1.0  # pseudo-hours of the log-normal vs the car's own leave-by-hour rate
    hazard_pool_hours: float = 1.0  # pseudo-hours of all days pooled vs weekday / weekend alone
    # Scales the minutes-to-full hint (a share of owners back when charging ends; DOMAIN.md lists time to
    # full as one of the cars' strong hints). 0 turns it off: the simulator has no such owners, so the
    # policy bench sees it only as a small cost (docs/scheduler.md, "Measuring the ranking").
    full_hint_weight: float = 1.0
    history_decay: float = 0.9  # weight kept by older sessions at each new one in the same bucket
    history_prior_weight: float = 1.0  # pseudo-sessions of the prior when blending with history
    region_utc_offset_h: tuple[tuple[str, float], ...] = _REGION_OFFSETS  # region -> UTC offset (JSON form)
    default_utc_offset_h: float = 0.0  # UTC offset of a region not listed

    # --- datacenter sites: placement, spillover, shedding (processors/scheduler/placement.py) -------------
    spillover: bool = True  # False: the "no spillover" baseline (sites take work whatever their power)
    placement_urgent_priority: int = 8  # ANY tasks of this priority or more go to a site first
    placement_long_task_s: float = 3600.0  # ANY tasks this long or longer go to a site first
    placement_fleet_min_stay: float = 0.8  # a car takes an ANY task over a site only if this likely to stay
    fleet_cost_per_slot_hour: float = 0.10  # what a car's slot-hour costs (owner pay), site cost units
    site_cost_per_slot_hour: float = 0.40  # a site's slot-hour when its report gives no cost
    site_capacity_ttl_s: float = 300.0  # a site not reporting capacity for this long takes no new work
    site_session_kw: float = 0.35  # power one emulator session draws at a site (budget -> sessions)
    shed_max_priority: int = 5  # at RESERVE / SHEDDING, running ANY sessions up to this priority move
    max_sites: int = 10_000  # sites kept; a record naming one more is refused (site ids come from input)

    offsets: dict[str, float] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.min_hw not in HW_RANK:
            raise ValueError(f"min_hw must be one of {sorted(HW_RANK)}, got {self.min_hw!r}")
        if self.ranking not in ("predictive", "random"):
            raise ValueError(f"ranking must be 'predictive' or 'random', got {self.ranking!r}")
        if self.default_capacity < 1:
            raise ValueError("default_capacity must be >= 1")
        if self.aging_per_min < 0:
            raise ValueError("aging_per_min must be >= 0")
        if self.max_future_skew_s < 0 or self.node_ttl_s <= self.claim_lease_s:
            raise ValueError("max_future_skew_s must be >= 0 and node_ttl_s > claim_lease_s")
        if self.max_queued_tasks < 1:
            raise ValueError("max_queued_tasks must be >= 1")
        if self.deadline_fit < 0:
            raise ValueError("deadline_fit must be >= 0")
        if self.late_status_s < 0:
            raise ValueError("late_status_s must be >= 0")
        if self.rank_time_step_s < 0:
            raise ValueError("rank_time_step_s must be >= 0")
        if self.site_session_kw < 0 or self.site_capacity_ttl_s <= 0:
            raise ValueError("site_session_kw must be >= 0 and site_capacity_ttl_s > 0")
        object.__setattr__(self, "offsets", dict(self.region_utc_offset_h))

    def utc_offset_h(self, region: str | None) -> float:
        return self.offsets.get(region or "", self.default_utc_offset_h)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SchedulerConfig:
        """Build from settings/env values; unknown keys raise ``TypeError``."""
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = set(values) - names
        if unknown:
            raise TypeError(f"unknown scheduler settings: {sorted(unknown)}")
        conv: dict[str, Any] = dict(values)
        for key in ("plugged_states", "preempt_reasons", "local_pools"):
            if conv.get(key) is not None:
                conv[key] = frozenset(conv[key])
        if "pools" in conv:
            conv["pools"] = tuple(conv["pools"])
        return cls(**conv)


DEFAULT_CONFIG = SchedulerConfig()
