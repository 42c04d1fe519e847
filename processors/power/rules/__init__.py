"""The power rules: one small class per incident kind behind one interface (``rules.base.Rule``).

``RULES`` is the order the detector runs them in: typed event rules see an event in this order, then
the ``EVERY_EVENT`` rules; signals go to their listeners in this order; timer ties go to the first.
The FAILOVER episode comes first (every other rule reads ``site.ep``); the episode's children resolve
in this order when the episode ends.

``SitePowerRule`` comes last and fires no incident: it follows what the others decided and publishes
the site's power state (``sites.power_state.v1``, see ``processors/power/site_state.py``).

To add an incident kind: a symbol in ``schemas/power.incidents.v1.avsc``, its line in
``processors/power/kinds.py``, a module here with its ``Rule``, and its class in ``RULES``.
"""

from __future__ import annotations

from processors.power.config import PowerConfig
from processors.power.rules.base import EVERY_EVENT, Rule
from processors.power.rules.battery import BatteryReserveRule
from processors.power.rules.failed_transfer import FailedTransferRule
from processors.power.rules.failover import FailoverRule
from processors.power.rules.flapping import FlappingRule
from processors.power.rules.generator import GeneratorRule
from processors.power.rules.load_shed import LoadShedRule
from processors.power.rules.power_quality import PowerQualityRule
from processors.power.rules.power_state import SitePowerRule
from processors.power.rules.sequence_gap import SequenceGapRule
from processors.power.rules.signals import SIGNALS, Signal
from processors.power.rules.site import Site
from processors.power.rules.site_silent import SiteSilentRule
from processors.power.rules.slow_transfer import SlowTransferRule

__all__ = ["EVERY_EVENT", "RULES", "SIGNALS", "Rule", "Signal", "Site", "build_rules"]

RULES: tuple[type[Rule], ...] = (
    FailoverRule,
    FailedTransferRule,
    SlowTransferRule,
    GeneratorRule,
    BatteryReserveRule,
    PowerQualityRule,
    LoadShedRule,
    FlappingRule,
    SequenceGapRule,
    SiteSilentRule,
    SitePowerRule,
)


def build_rules(config: PowerConfig) -> list[Rule]:
    """A fresh set of rules for one site's detector (rules keep per-site state)."""
    return [cls(config) for cls in RULES]
