"""The one interface every power rule implements.

A rule is a small stateful step in the shape of bytewax's ``StatefulLogic``:

* ``watches``: the event types it is given (``on_event``), in event-time order; ``EVERY_EVENT`` for
  rules that look at every applied event (measurements while islanded). Typed rules see an event before
  the ``EVERY_EVENT`` rules, so the latter see the phase the event led to.
* ``signals``: the site happenings it is given (``on_signal``): what the FAILOVER episode did
  (``transferred``, ``grid_back``, ``source_change``, ``flap``, ``episode_end``) and what the detector
  saw (``arrival``, ``idle``, ``gap``, ``gap_filled``, ``timer`` after any rule's timer); see
  ``rules/signals.py``.
* ``notify_at``: its next timer in event time ("when I next need to wake up"), ``on_notify`` when it is
  due. The detector fires the earliest timer of all rules between released events (ties: rule order).
* ``snapshot``/``restore``: state the rule keeps outside the site's open incidents, stored under
  ``state_key`` in ``Detector.to_dict`` (most rules keep everything in their open incident).

Rules never return outputs: they open, update and resolve incidents through the ``Site`` they are
given, which collects the records of the current call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from processors.power.events import Event, to_datetime
from processors.power.kinds import BY_NAME, IncidentKind
from processors.power.rules.signals import SIGNALS, Signal

if TYPE_CHECKING:
    from processors.power.config import PowerConfig
    from processors.power.rules.site import Site

__all__ = ["EVERY_EVENT", "SIGNALS", "Rule", "Signal", "fmt_duration", "fmt_time"]

EVERY_EVENT = "*"


class Rule:
    """Base class: a rule that watches nothing and fires nothing. Subclasses override what they use."""

    kinds: ClassVar[tuple[IncidentKind, ...]] = ()
    """The incident kinds this rule fires (each kind is fired by exactly one rule)."""
    watches: ClassVar[frozenset[str]] = frozenset()
    signals: ClassVar[frozenset[str]] = frozenset()
    state_key: ClassVar[str | None] = None

    def __init__(self, config: PowerConfig) -> None:
        self.config = config

    def on_event(self, site: Site, e: Event) -> None:
        """An applied event of a watched type (in event-time order; ``site.late`` for a late SOE event)."""

    def on_signal(self, site: Site, sig: Signal) -> None:
        """A signal this rule listens to."""

    def notify_at(self, site: Site) -> tuple[int, str] | None:
        """The next due timer ``(event time µs, tag)``, or None."""
        return None

    def on_notify(self, site: Site, due: int, tag: str) -> None:
        """The timer ``tag`` returned by ``notify_at`` is due at ``due``."""

    def forget(self, site: Site, devices: list[str]) -> None:
        """``devices`` went silent for ``device_forget_s``: drop what this rule keeps per device."""

    def snapshot(self) -> Any:
        """JSON-able state kept outside the site (only for rules with a ``state_key``)."""
        return None

    def restore(self, data: Any) -> None:
        """Take back a ``snapshot``; ``None`` when the stored state predates this rule's state."""

    # -- helpers for episode children ----------------------------------------------------------
    def resolve_with_episode(self, site: Site, key: str, t: int, summary: str | None = None) -> None:
        """Resolve the open incident ``key`` because its episode ended (generic text by default)."""
        inc = site.open.get(key)
        if inc is None:
            return
        if summary is None:
            summary = f"{site.site_id}: {BY_NAME[inc['kind']].title} over, site back on GRID"
        site.emit(key, "RESOLVED", t, summary, ended=t)


def fmt_time(us: int) -> str:
    return to_datetime(us).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def fmt_duration(us: float) -> str:
    s = us / 1e6
    if s < 1:
        return f"{us / 1e3:.1f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"
