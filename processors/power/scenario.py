"""A small factory of ``power.events.v1`` records for tests, benches and demos.

``SiteEvents`` numbers each device's events (``seq``) and places them at offsets in seconds from a
start time, so a failover reads like the timeline an operator would write::

    site = SiteEvents("dc-1")
    events = [site.lost(1.0), site.transfer(1.004, "BATTERY", device="sts-1"), ...]
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEVICE_TYPES_BY_NAME", "SiteEvents"]

T0_US = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z
DEVICE_TYPES_BY_NAME = {
    "meter": "GRID_METER", "ats": "ATS", "sts": "STS", "brk": "BREAKER", "gen": "GENERATOR", "bat": "BATTERY",
    "ctl": "CONTROLLER",
}  # fmt: skip


class SiteEvents:
    """Builds events of one site; the device type is taken from the device id's prefix (``gen-2``)."""

    def __init__(self, site_id: str = "dc-1", t0_us: int = T0_US) -> None:
        self.site_id = site_id
        self.t0_us = t0_us
        self.seq: dict[str, int] = {}

    def at(self, seconds: float) -> int:
        return self.t0_us + round(seconds * 1_000_000)

    def event(self, device: str, event_type: str, at_s: float, **fields: Any) -> dict[str, Any]:
        self.seq[device] = self.seq.get(device, 0) + 1
        prefix = device.split("-")[0]
        return {
            "site_id": self.site_id,
            "device_id": device,
            "device_type": fields.pop("device_type", DEVICE_TYPES_BY_NAME.get(prefix, "CONTROLLER")),
            "event_type": event_type,
            "ts": self.at(at_s),
            "seq": self.seq[device],
            **fields,
        }

    # Shorthands for the common timeline steps.
    def lost(self, at_s: float, device: str = "meter-1", source: str = "GRID") -> dict[str, Any]:
        return self.event(device, "SOURCE_LOST", at_s, source_from=source)

    def restored(self, at_s: float, device: str = "meter-1") -> dict[str, Any]:
        return self.event(device, "SOURCE_RESTORED", at_s, source_to="GRID")

    def transfer(self, at_s: float, to: str, device: str = "ats-1", source_from: str | None = None,
                 **fields: Any) -> dict[str, Any]:  # fmt: skip
        return self.event(device, "TRANSFER", at_s, source_from=source_from, source_to=to, **fields)

    def measure(self, at_s: float, device: str = "meter-1", **fields: Any) -> dict[str, Any]:
        return self.event(device, "MEASUREMENT", at_s, **fields)
