"""The signals power rules pass each other (``Rule.signals`` / ``Rule.on_signal``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from processors.power.events import Event

if TYPE_CHECKING:
    from processors.power.reorder import Gap

__all__ = ["SIGNALS", "Signal"]

SIGNALS = frozenset(
    {
        # published by the FAILOVER rule (the episode)
        "transferred",  # an alternate source took the load after the normal source was lost
        "grid_back",  # the load went back to grid inside an open failover (retransfer)
        "source_change",  # a grid <-> alternate change that counts towards flapping
        "flap",  # grid lost or left again inside the retransfer delay (``why`` says how)
        "episode_end",  # the episode is over: its children resolve now at the latest
        # published by the detector
        "arrival",  # an event arrived (before ordering), published while an incident is open
        "idle",  # a tick: no event for ``idle`` µs, the latest event time is ``last_ts``
        "gap",  # the buffer released an event that reveals a sequence gap
        "gap_filled",  # a late event filled a sequence gap already reported
        "timer",  # a rule's timer fired at ``t`` (after the rule ran): what it changed may matter to others
    }
)


@dataclass(slots=True)
class Signal:
    """Something that happened at the site at event time ``t`` (processing time for ``idle``). Not frozen:
    one is built per event, and a frozen dataclass's ``__init__`` costs several times more."""

    name: str
    t: int
    event: Event | None = None
    lost_at: int | None = None  # transferred: when the normal source was lost
    to: str | None = None  # transferred: the source now on load
    why: str = ""  # flap
    idle: int = 0  # idle
    last_ts: int | None = None  # idle
    gap: Gap | None = None  # gap
