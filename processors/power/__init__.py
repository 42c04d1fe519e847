"""Datacenter power failover detection: pure decision logic, no Kafka or Faust imports.

Public API::

    from processors.power import Detector, PowerConfig, Incident, LateEvent, alert_for_incident

    det = Detector("dc-ams-1", PowerConfig())          # one per site (table key: site_id)
    outputs = det.on_event(decoded_power_event)         # -> [Incident | LateEvent | SitePowerState]
    outputs += det.on_tick(now_us)                      # timers, silence; call every ~1 s
    state = det.to_dict(); det = Detector.from_dict(state, config)
    alert = alert_for_incident(incident)                # -> alerts.v1 record or None (UPDATE)

The incident kinds are declared once in ``processors.power.kinds``; each kind's rule is a small class in
``processors.power.rules``. See docs/power.md for the rules, their thresholds and how to add a kind,
and for the site power state (``sites.power_state.v1``, ``processors.power.site_state``).
"""

from processors.power.alerts import alert_for_incident, fingerprint, severity_for
from processors.power.config import PowerConfig
from processors.power.detector import STATE_VERSION, Detector
from processors.power.events import (
    Incident,
    InvalidPowerEvent,
    LateEvent,
    Output,
    SitePowerState,
    normalize_event,
)

__all__ = [
    "STATE_VERSION",
    "Detector",
    "Incident",
    "InvalidPowerEvent",
    "LateEvent",
    "Output",
    "PowerConfig",
    "SitePowerState",
    "alert_for_incident",
    "fingerprint",
    "normalize_event",
    "severity_for",
]
