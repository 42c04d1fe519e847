"""How a datacenter site appears where the contract speaks of nodes.

A task placed on a site is assigned to the node id ``site:<site_id>`` (the ``vin`` of its assignment,
lifecycle and status records; ``site_id`` is set beside it). A car's VIN is 17 letters and digits, so
the prefix can never name a car. The site's controller consumes ``tasks.assignments.v1`` for that key
and reports ``tasks.status.v1`` with that ``vin``, as a car does.
"""

from __future__ import annotations

__all__ = ["SITE_VIN_PREFIX", "is_site_vin", "site_of", "site_vin"]

SITE_VIN_PREFIX = "site:"


def site_vin(site_id: str) -> str:
    """The node id of ``site_id``."""
    return SITE_VIN_PREFIX + site_id


def is_site_vin(vin: str | None) -> bool:
    return vin is not None and vin.startswith(SITE_VIN_PREFIX)


def site_of(vin: str | None) -> str | None:
    """The site a node id names, or None for a car (or no node)."""
    if vin is None or not vin.startswith(SITE_VIN_PREFIX):
        return None
    return vin[len(SITE_VIN_PREFIX) :]
