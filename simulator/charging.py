"""State-of-charge physics: constant power below 80 %, a linear taper above, a trickle near full.

``rate(soc) = a`` (percent per hour) below ``TAPER_START``, ``a * (100 - soc) / 20`` above it, never
below ``a * TRICKLE``. Everything here is closed-form so a sleeping car can be advanced by hours at once.
"""

from __future__ import annotations

import math

TAPER_START = 80.0
TRICKLE = 0.1
_TRICKLE_SOC = 100.0 - 20.0 * TRICKLE  # 98 %: where the taper meets the trickle floor


def pct_per_hour(power_kw: float, capacity_kwh: float) -> float:
    return power_kw / capacity_kwh * 100.0


def hours_to(soc: float, target: float, power_kw: float, capacity_kwh: float) -> float:
    """Hours to charge from ``soc`` to ``target`` (0 if already there)."""
    if target <= soc or power_kw <= 0:
        return 0.0 if target <= soc else math.inf
    a = pct_per_hour(power_kw, capacity_kwh)
    hours = 0.0
    s = soc
    if s < TAPER_START:
        end = min(target, TAPER_START)
        hours += (end - s) / a
        s = end
    if s < target and s < _TRICKLE_SOC:
        end = min(target, _TRICKLE_SOC)
        hours += 20.0 / a * math.log((100.0 - s) / (100.0 - end))
        s = end
    if s < target:
        hours += (target - s) / (a * TRICKLE)
    return hours


def soc_after(soc: float, limit: float, power_kw: float, capacity_kwh: float, hours: float) -> float:
    """State of charge after charging ``hours`` from ``soc`` toward ``limit`` (never above it)."""
    if soc >= limit or power_kw <= 0 or hours <= 0:
        return soc
    a = pct_per_hour(power_kw, capacity_kwh)
    s, left = soc, hours
    if s < TAPER_START:
        need = (min(limit, TAPER_START) - s) / a
        if left <= need:
            return s + a * left
        s, left = min(limit, TAPER_START), left - need
    if s < limit and s < _TRICKLE_SOC:
        end = min(limit, _TRICKLE_SOC)
        need = 20.0 / a * math.log((100.0 - s) / (100.0 - end))
        if left <= need:
            return 100.0 - (100.0 - s) * math.exp(-a * left / 20.0)
        s, left = end, left - need
    if s < limit:
        s = min(limit, s + a * TRICKLE * left)
    return s


def power_at(soc: float, power_kw: float) -> float:
    """Charging power (kW) the car draws at ``soc``."""
    if soc < TAPER_START:
        return power_kw
    return power_kw * max(TRICKLE, (100.0 - soc) / 20.0)


def drive_consumption_pct(minutes: float, capacity_kwh: float, kwh_per_km: float, kmh: float = 45.0) -> float:
    return minutes / 60.0 * kmh * kwh_per_km / capacity_kwh * 100.0
