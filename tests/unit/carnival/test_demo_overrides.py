"""The demo's scheduler overrides for an accelerated closed loop (ASSIGN -> emulator -> STARTED)."""

from __future__ import annotations

from carnival.demo import LOOP_BUDGET_WALL_S, worker_overrides
from simulator.config import SimConfig


def test_claim_timeout_covers_the_round_trip_in_simulated_time() -> None:
    env = worker_overrides(240.0, environ={})
    assert float(env["CARNIVAL_SCHEDULER_CLAIM_TIMEOUT_S"]) == 240.0 * LOOP_BUDGET_WALL_S


def test_real_time_keeps_the_default_claim_timeout() -> None:
    assert worker_overrides(1.0, environ={})["CARNIVAL_SCHEDULER_CLAIM_TIMEOUT_S"] == "60.0"


def test_pools_are_the_simulated_regions() -> None:
    pools = worker_overrides(240.0, environ={})["CARNIVAL_SCHEDULER_POOLS"].split(",")
    assert sorted(pools) == sorted(SimConfig().region_mix)


def test_an_operator_setting_wins() -> None:
    env = {"CARNIVAL_SCHEDULER_CLAIM_TIMEOUT_S": "30", "CARNIVAL_SCHEDULER_POOLS": "us-west"}
    assert worker_overrides(240.0, environ=env) == {}
