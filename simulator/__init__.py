"""A seeded, deterministic simulator of the Carnival world: cars, tasks, emulator sessions and site power.

Public entry points:

- ``SimConfig``: every knob of a run (counts, mixes, rates, noise), plain data.
- ``World``: the discrete-event world on simulated time; emits records to a ``Sink``.
- ``run_simulation`` / ``run_rate``: the paced runners behind ``carnival simulate``.
- ``simulate``: the click command (``simulator.cli``), registered by ``carnival.cli``.

- ``ClosedLoop`` (``simulator.loop``): the world against an in-process decision maker, for benches.

Sites as emulator capacity (``SimConfig.site_compute``, off by default): ``site_compute`` (pure),
``site_controller``, ``site``, ``islands``.

The pure generators (``habits``, ``charging``, ``tasks``, ``emulator``, ``power``) never do I/O and draw
from ``random.Random`` instances derived from the seed, so the same seed gives the same events.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SimConfig", "World"]


def __getattr__(name: str) -> Any:  # lazy, so `carnival --help` does not load the world
    if name == "SimConfig":
        from simulator.config import SimConfig

        return SimConfig
    if name == "World":
        from simulator.world import World

        return World
    raise AttributeError(name)
