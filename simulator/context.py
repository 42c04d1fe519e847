"""What the agents of the world (cars, emulator hosts, power sites) see of it.

``World`` builds the agents and satisfies this protocol; the agents import only the protocol, so the
world and its agents do not import each other.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any, Protocol

from simulator.config import SimConfig
from simulator.engine import EventQueue
from simulator.truth import Truth


class OwnerAware(Protocol):
    def owner_returned(self, car: Any) -> None: ...


class WorldContext(Protocol):
    config: SimConfig
    q: EventQueue
    truth: Truth
    emitting: bool
    recording: bool
    counters: Counter[str]
    sessions_log: list[tuple[int, int, str]]
    emulators: OwnerAware
    by_vin: Mapping[str, Any]

    def emit(self, topic: str, key: str, record: dict[str, Any], delay_ms: int = 0) -> None: ...
