"""Customer task arrivals: a daily pattern (US business hours), quieter weekends, bursts, tenants.

Arrivals are a Poisson process whose rate is constant within each UTC hour; drawing the next gap with
the current hour's rate and restarting at the hour boundary is exact (memorylessness).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from simulator.config import DAY_MS, HOUR_MS, SimConfig
from simulator.rng import rng_for, uuid_from

# Relative arrival rate by UTC hour: US working day (13:00-01:00 UTC) plus a nightly batch at 06-08 UTC.
HOURLY_WEIGHT_UTC: tuple[float, ...] = (
    0.9,
    0.6,
    0.4,
    0.3,
    0.3,
    0.4,
    0.8,
    0.8,
    0.5,
    0.4,
    0.5,
    0.7,
    1.0,
    1.4,
    1.8,
    2.0,
    2.0,
    1.9,
    1.9,
    1.8,
    1.7,
    1.5,
    1.3,
    1.1,
)
WEEKEND_FACTOR = 0.4
_MEAN_WEIGHT = sum(HOURLY_WEIGHT_UTC) / 24

# kind -> median duration (s)
KINDS: dict[str, float] = {
    "form_fill": 180,
    "data_entry": 420,
    "browser_qa": 600,
    "spreadsheet_update": 300,
    "email_triage": 240,
    "crm_update": 200,
    "invoice_processing": 360,
    "ui_regression": 900,
    "research_browse": 1200,
}
_TENANT_NAMES = (
    "acme-rpa",
    "globex-qa",
    "initech-ops",
    "umbrella-data",
    "hooli-test",
    "stark-finance",
    "wayne-support",
    "wonka-crm",
    "tyrell-research",
    "soylent-hr",
    "cyberdyne-labs",
    "oscorp-billing",
    "vandelay-import",
    "dunder-sales",
    "pied-piper-ci",
    "massive-dynamic",
)


@dataclass(frozen=True)
class Tenant:
    name: str
    weight: float
    kinds: tuple[str, ...]
    priority: int
    region: str | None
    deadline_share: float


def make_tenants(config: SimConfig) -> list[Tenant]:
    rng = rng_for(config.seed, "tenants")
    regions = list(config.region_mix)
    tenants = []
    for i in range(max(1, config.tenants)):
        name = _TENANT_NAMES[i] if i < len(_TENANT_NAMES) else f"tenant-{i:03d}"
        tenants.append(
            Tenant(
                name=name,
                weight=1.0 / (i + 1),  # Zipf: a few big customers
                kinds=tuple(rng.sample(list(KINDS), rng.randint(1, 3))),
                priority=rng.choices(range(10), weights=[3, 4, 6, 8, 9, 8, 6, 4, 2, 1])[0],
                region=rng.choice(regions) if rng.random() < 0.4 else None,
                deadline_share=rng.uniform(0.4, 0.95),
            )
        )
    return tenants


def rate_per_ms(config: SimConfig, t_ms: int) -> float:
    hour = (t_ms // HOUR_MS) % 24
    weekday = ((t_ms // DAY_MS) + 3) % 7  # 1970-01-01 was a Thursday
    factor = WEEKEND_FACTOR if weekday >= 5 else 1.0
    return config.tasks_per_hour * HOUR_WEIGHT_NORM[hour] * factor / HOUR_MS


HOUR_WEIGHT_NORM = tuple(w / _MEAN_WEIGHT for w in HOURLY_WEIGHT_UTC)


class TaskSource:
    """Draws arrival times and task records; all randomness from the run seed."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.rng = rng_for(config.seed, "tasks")
        self.tenants = make_tenants(config)
        self._weights = [t.weight for t in self.tenants]
        self.count = 0
        # Placement and long tasks (sites as compute) draw from their own stream: with sites off nothing
        # is drawn from it and the task stream is what it always was.
        self.sites = config.site_compute if config.site_compute.enabled else None
        self.placement_rng = rng_for(config.seed, "placement")

    def next_arrival(self, now_ms: int) -> int:
        t = now_ms
        rng = self.rng
        while True:
            rate = rate_per_ms(self.config, t)
            boundary = (t // HOUR_MS + 1) * HOUR_MS
            if rate <= 0:
                t = boundary
                continue
            gap = rng.expovariate(rate)
            if t + gap < boundary:
                return int(t + gap) + 1
            t = boundary

    def bursts_for_day(self, day_start_ms: int) -> list[tuple[int, int, Tenant, str]]:
        """(start_ms, n_tasks, tenant, kind) for the bursts of one UTC day."""
        rng = self.rng
        out = []
        lam = self.config.bursts_per_day
        n = 0
        p, limit = rng.random(), math.exp(-lam)
        while p > limit:
            n += 1
            p *= rng.random()
        for _ in range(n):
            tenant = rng.choices(self.tenants, weights=self._weights)[0]
            out.append(
                (
                    day_start_ms + rng.randrange(DAY_MS),
                    int(rng.lognormvariate(4.8, 0.6)),
                    tenant,
                    rng.choice(tenant.kinds),
                )
            )
        return sorted(out, key=lambda b: b[0])

    def make_task(
        self,
        now_ms: int,
        tenant: Tenant | None = None,
        kind: str | None = None,
        rng: random.Random | None = None,
    ) -> tuple[dict[str, object], float]:
        """A tasks.requests.v1 record and the task's true run time (s), which only the emulator knows."""
        rng = rng or self.rng
        tenant = tenant or rng.choices(self.tenants, weights=self._weights)[0]
        kind = kind or rng.choice(tenant.kinds)
        median = KINDS[kind] * self.config.task_duration_scale
        est = int(min(4 * 3600, max(10, rng.lognormvariate(math.log(median), 0.8))))
        priority = min(9, max(0, tenant.priority + rng.choice((-1, 0, 0, 0, 1))))
        deadline = None
        if rng.random() < tenant.deadline_share:
            deadline = now_ms + int(est * 1000 * rng.uniform(3.0, 20.0)) + rng.randrange(5, 120) * 60_000
        region = tenant.region if rng.random() < 0.9 else None
        self.count += 1
        record: dict[str, object] = {
            "task_id": uuid_from(rng),
            "ts": now_ms,
            "tenant": tenant.name,
            "kind": kind,
            "priority": priority,
            "est_duration_s": est,
            "deadline": deadline,
            "min_hw": rng.choices(("HW4", "HW5", "HW3"), weights=(85, 12, 3))[0],
            "region": region,
            "min_soc_pct": round(rng.uniform(20, 60), 0) if rng.random() < 0.5 else None,
        }
        duration = est * rng.lognormvariate(0.0, 0.35)
        if self.sites is not None:
            record["placement"], factor = self._placement()
            record["est_duration_s"] = int(min(12 * 3600, est * factor))
            duration *= factor
        return record, duration

    def _placement(self) -> tuple[str, float]:
        """A request's placement preference and its duration factor (``long_task_factor`` for a share)."""
        sites, rng = self.sites, self.placement_rng
        assert sites is not None
        names = list(sites.placement_mix)
        placement = rng.choices(names, weights=[sites.placement_mix[n] for n in names])[0]
        long = rng.random() < sites.long_task_share
        return placement, sites.long_task_factor if long else 1.0
