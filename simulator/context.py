"""What the agents of the world (cars, emulator hosts, power sites) see of it.

``World`` builds the agents and satisfies this protocol; the agents import only the protocol, so the
world and its agents do not import each other.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from simulator.config import SimConfig
from simulator.engine import EventQueue
from simulator.truth import Truth


class OwnerAware(Protocol):
    def owner_returned(self, car: Any, always_report: bool = False) -> None: ...


class WorldContext(Protocol):
    """Read-only views: the agents call and mutate what these return, never rebind them."""

    @property
    def config(self) -> SimConfig: ...
    @property
    def q(self) -> EventQueue: ...
    @property
    def truth(self) -> Truth: ...
    @property
    def emitting(self) -> bool: ...
    @property
    def recording(self) -> bool: ...
    @property
    def counters(self) -> Counter[str]: ...
    @property
    def sessions_log(self) -> list[tuple[int, int, str]]: ...
    @property
    def emulators(self) -> OwnerAware: ...
    @property
    def by_vin(self) -> Mapping[str, Any]: ...
    @property
    def site_controllers(self) -> Mapping[str, Any]: ...
    @property
    def cars(self) -> Sequence[Any]: ...
    @property
    def task_durations(self) -> dict[str, float]: ...

    def emit(self, topic: str, key: str, record: dict[str, Any], delay_ms: int = 0) -> None: ...
