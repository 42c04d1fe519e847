"""How big a chaos run is: ``CARNIVAL_CHAOS_SCALE=short`` (the default, in CI) or ``full`` (`make chaos`).

Every time is wall seconds from the simulator's start. The short form fits about 4-5 minutes on two
loaded cores; the full form is the issue's numbers (10 kills per worker, ClickHouse down 60 s, the
webhook receiver down 30 s).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Scale:
    name: str
    start: str  # simulated window: the seed-7 evening peak of the demo, which holds failovers
    duration: str
    speed: float
    kills_per_worker: int
    poison_at_s: float
    broker_restart_at_s: float
    clickhouse_stop_at_s: float
    clickhouse_down_s: float
    receiver_down_s: float
    receiver_500_s: float
    receiver_malformed_s: float
    catch_up_s: float
    cars: int = 40
    sites: int = 2
    seed: int = 7
    tasks_per_hour: float = 160.0  # a queue that never runs dry: the scheduler always has work to assign
    # Between the two waves of poison records and after the second, no kill: it would blur the recovery
    # times. The second wave (the attempt=2^31-1 task) comes alone: it can block the scheduler for good.
    quiet_after_poison_s: float = 20.0

    @property
    def sim_wall_s(self) -> float:
        hours = float(self.duration.rstrip("h"))
        return hours * 3600 / self.speed


SHORT = Scale(
    "short",
    "2025-01-06T21:30:00Z",
    "2h",
    60.0,
    kills_per_worker=2,
    poison_at_s=15,
    broker_restart_at_s=50,
    clickhouse_stop_at_s=100,
    clickhouse_down_s=15,
    receiver_down_s=10,
    receiver_500_s=8,
    receiver_malformed_s=8,
    catch_up_s=45,
)
FULL = Scale(
    "full",
    "2025-01-06T20:00:00Z",
    "5h",
    60.0,
    kills_per_worker=10,
    poison_at_s=20,
    broker_restart_at_s=100,
    clickhouse_stop_at_s=170,
    clickhouse_down_s=60,
    receiver_down_s=30,
    receiver_500_s=20,
    receiver_malformed_s=20,
    catch_up_s=240,
)


def current() -> Scale:
    name = os.environ.get("CARNIVAL_CHAOS_SCALE", "short").lower()
    if name not in ("short", "full"):
        raise ValueError(f"CARNIVAL_CHAOS_SCALE must be short or full, not {name!r}")
    return FULL if name == "full" else SHORT
