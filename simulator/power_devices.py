"""The devices of a site's power system and the timed steps a failover is made of (shared by the scripts).

Timestamps are microseconds; ``S`` and ``MS`` are a second and a millisecond in them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

S = 1_000_000  # microseconds per second
MS = 1_000
GM, ATS, STS, BRK_UTIL, BRK_GEN, BESS, CTL = (
    "gm-1",
    "ats-1",
    "sts-1",
    "brk-utility",
    "brk-gen",
    "bess-1",
    "ctl-1",
)
_TYPES = {
    GM: "GRID_METER",
    ATS: "ATS",
    STS: "STS",
    BRK_UTIL: "BREAKER",
    BRK_GEN: "BREAKER",
    BESS: "BATTERY",
    CTL: "CONTROLLER",
}


def device_type(device_id: str) -> str:
    return "GENERATOR" if device_id.startswith("gen-") else _TYPES[device_id]


@dataclass(order=True)
class Step:
    ts_us: int
    order: int
    device_id: str = field(compare=False)
    event_type: str = field(compare=False)
    fields: dict[str, Any] = field(compare=False, default_factory=dict)
    state: dict[str, Any] | None = field(compare=False, default=None)


@dataclass
class Failover:
    site_id: str
    start_us: int
    end_us: int
    fault: str | None
    steps: list[Step]
    detail: dict[str, Any]


# add(at_us, device, event, state=None, **fields): how a script appends one step.
AddStep = Callable[..., None]


def retransfer(add: AddStep, at: float, stop_gens: list[str] | None, source_from: str = "GENERATOR") -> None:
    """The closed-transition return to grid at ``at``, then the generators' cool-down stops."""
    add(at, BRK_UTIL, "BREAKER_CLOSE", detail="utility breaker closed in sync window")
    add(
        at + 60 * MS,
        ATS,
        "TRANSFER",
        {"source": "GRID"},
        source_from=source_from,
        source_to="GRID",
        detail="closed-transition retransfer, paralleled 60 ms",
    )
    add(at + 70 * MS, CTL, "ISLAND_EXIT", source_from=source_from, source_to="GRID")
    for i, g in enumerate(stop_gens or []):
        add(at + 300 * S + i * S, g, "GEN_STOP", {"gens": 0}, detail="cool-down complete")
