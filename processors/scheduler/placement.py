"""Placement between idle cars and datacenter sites, spillover and shedding: the pure policy.

Where a task may go (``Task.placement``): FLEET = cars only, DATACENTER = sites only, ANY = either.

**On the grid** an ANY task goes where cost and expected completion are best (``choose``):

1. urgent (priority >= ``placement_urgent_priority``) or long (``est_duration_s >=
   placement_long_task_s``) work goes to a site with a free slot: a car that leaves costs it a restart;
2. otherwise to the best car if that car is likely to outlast it (stay probability >=
   ``placement_fleet_min_stay``) and a car slot-hour costs no more than the site's, cost counted per
   *completed* run (``fleet_cost_per_slot_hour / p``: a run lost to a departure is paid again);
3. otherwise to the cheapest site with a free slot, else to the best car, else it waits.

**Spillover.** A site that leaves the grid (any islanded state) takes no new ANY or FLEET work; DATACENTER
work still goes there until RESERVE or SHEDDING. Queued ANY work its region would have sent there goes to
the region's cars instead: that assignment carries the reason ``SPILLOVER_ISLANDED`` (``would_use_site``
tells it apart from work that went to a car anyway).

**Shedding.** At RESERVE or SHEDDING the site's running ANY sessions of priority <= ``shed_max_priority``
are taken back (REVOKE at the site, PREEMPTED and REQUEUED with ``SHED_RESERVE`` / ``SHED_LOAD``, ahead of
newer work of their priority since they keep their request time), lowest priority first and, within a
priority, the newest first (the least work lost), until the sessions left fit the site's emulator power
budget (``SiteState.session_budget``; a site that reports no budget at its reserve sheds all of them).

**Back to the grid.** A site takes work again only when its power state is GRID again; the power processor
publishes GRID only after the site has been stable on utility power for the retransfer delay, so nothing
moves back early (DOMAIN.md: moving work back before that causes flapping of its own). Nothing moved to a
car is moved back: it finishes there.

``cfg.spillover = False`` is the "no spillover" baseline: sites keep taking work whatever their power.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from processors.scheduler.config import SchedulerConfig
from processors.scheduler.sites import ISLANDED, SEVERE, SiteState
from processors.scheduler.tasks import Task

__all__ = [
    "ANY",
    "CAR",
    "DATACENTER",
    "FLEET",
    "PLACEMENTS",
    "SHED_LOAD",
    "SHED_RESERVE",
    "SITE",
    "SPILLOVER_ISLANDED",
    "battery_minutes",
    "choose",
    "open_to_work",
    "pick_site",
    "shed_plan",
    "shed_reason",
    "site_dropped",
    "takes_task",
    "within_budget",
    "would_use_site",
]

ANY, FLEET, DATACENTER = "ANY", "FLEET", "DATACENTER"
PLACEMENTS = (ANY, FLEET, DATACENTER)
CAR, SITE = "car", "site"
SPILLOVER_ISLANDED = "SPILLOVER_ISLANDED"  # queued work sent to cars because its site left the grid
SHED_RESERVE = "SHED_RESERVE"  # a session taken off a site whose battery is at its reserve
SHED_LOAD = "SHED_LOAD"  # a session taken off a site that sheds load


def takes_task(site: SiteState, task: Task, now: int, cfg: SchedulerConfig, *, power: bool = True) -> bool:
    """Whether ``site`` may get ``task`` now. ``power=False``: as if it were on the grid (what the policy
    would do without the islanding, to name a spillover)."""
    if task.placement == FLEET or site.region is None or not site.capacity_fresh(now, cfg):
        return False
    if site.free_slots() <= 0 or site.vin in task.excluded:  # it refused this task as unavailable
        return False
    if not power or not cfg.spillover:
        return True
    if within_budget(site, cfg) <= 0:  # one more session would draw more than the site can give now
        return False
    return site.on_grid() or (task.placement == DATACENTER and site.power_state not in SEVERE)


def within_budget(site: SiteState, cfg: SchedulerConfig) -> int:
    """Sessions the site's power budget still carries beside those it runs (a large number: no budget)."""
    budget = site.session_budget(cfg)
    return 1 << 30 if budget is None else budget - len(site.running)


def open_to_work(site: SiteState, now: int, cfg: SchedulerConfig) -> bool:
    """Whether ``site`` could take some task now (so a pool with no free car is still worth matching)."""
    if site.region is None or not site.capacity_fresh(now, cfg) or site.free_slots() <= 0:
        return False
    return not cfg.spillover or (site.power_state not in SEVERE and within_budget(site, cfg) > 0)


def pick_site(
    sites: Iterable[SiteState], task: Task, now: int, cfg: SchedulerConfig, *, power: bool = True
) -> SiteState | None:
    """The cheapest site that takes ``task``, then the one with most free slots (then a stable hash)."""
    best: SiteState | None = None
    best_key: tuple[float, int, int] | None = None
    for site in sites:
        if not takes_task(site, task, now, cfg, power=power):
            continue
        key = (site.cost(cfg), -site.free_slots(), zlib.crc32(site.site_id.encode()))
        if best_key is None or key < best_key:
            best, best_key = site, key
    return best


def _prefers_site(task: Task, cfg: SchedulerConfig) -> bool:
    return task.priority >= cfg.placement_urgent_priority or task.est_duration_s >= cfg.placement_long_task_s


def choose(task: Task, car_stay: float | None, site: SiteState | None, cfg: SchedulerConfig) -> str | None:
    """``CAR``, ``SITE`` or None (wait): where ``task`` goes, given the best car's stay probability over
    the task (None: no car) and the best site that takes it (None: none)."""
    if task.placement == FLEET or site is None:
        return None if car_stay is None or task.placement == DATACENTER else CAR
    if task.placement == DATACENTER or car_stay is None or _prefers_site(task, cfg):
        return SITE
    car_cost = cfg.fleet_cost_per_slot_hour / max(car_stay, 1e-6)
    if car_stay >= cfg.placement_fleet_min_stay and car_cost <= site.cost(cfg):
        return CAR
    return SITE


def would_use_site(
    task: Task, car_stay: float, sites: Iterable[SiteState], now: int, cfg: SchedulerConfig
) -> SiteState | None:
    """The islanded site ``task`` would have gone to on the grid, when it goes to a car now because that
    site left the grid (a spillover), else None."""
    if task.placement != ANY or not cfg.spillover:
        return None
    site = pick_site(sites, task, now, cfg, power=False)
    if site is None or site.power_state not in ISLANDED:
        return None
    return site if choose(task, car_stay, site, cfg) == SITE else None


def site_dropped(error: object) -> bool:
    """Whether a site's FAILED report says the site itself ended the session (``abandoned: ...``, e.g. it
    cut its emulator hall at the battery's last reserve): the site's loss, not the task's failure."""
    return isinstance(error, str) and error.startswith("abandoned:")


def shed_reason(site: SiteState) -> str:
    return SHED_RESERVE if site.power_state == "RESERVE" else SHED_LOAD


def shed_plan(site: SiteState, running: Iterable[Task], cfg: SchedulerConfig) -> list[Task]:
    """The sessions to take off ``site`` now (empty unless it is at RESERVE or SHEDDING), in order: first
    the flexible low-priority ones (they go to cars); if the site is still over a budget it reported, the
    others too, lowest priority first (pinned work then waits for a site on the grid: the site would cut
    those sessions itself at its battery's last reserve, and a requeued task is not a lost one)."""
    if not cfg.spillover or site.power_state not in SEVERE:
        return []
    tasks = list(running)
    budget = site.session_budget(cfg)
    excess = len(tasks) - budget if budget is not None else len(tasks)
    if excess <= 0:
        return []

    def order(t: Task) -> tuple[int, int, str]:
        return (t.priority, -(t.assigned_ts or 0), t.task_id)

    flexible = sorted(
        (t for t in tasks if t.placement == ANY and t.priority <= cfg.shed_max_priority), key=order
    )
    if budget is None or len(flexible) >= excess:
        return flexible[:excess]
    rest = sorted((t for t in tasks if t not in flexible), key=order)
    return flexible + rest[: excess - len(flexible)]


def battery_minutes(runtime_min: float | None, load_mw: float | None, shed_mw: float) -> float | None:
    """Battery runtime (minutes) at ``load_mw - shed_mw``, from ``runtime_min`` at ``load_mw``: the energy
    above the reserve is the same, so runtime scales with 1 / load. None when either is not known."""
    if runtime_min is None or load_mw is None or load_mw <= 0:
        return None
    return runtime_min * load_mw / max(load_mw - shed_mw, load_mw * 0.01)
