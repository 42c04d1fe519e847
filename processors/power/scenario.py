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


SITE_DEVICES = ("meter-1", "sts-1", "ats-1", "gen-1", "gen-2", "bat-1", "ctl-1")


def rich_failover_timeline(site: SiteEvents | None = None) -> list[dict[str, Any]]:
    """A failover touching most rules (battery reserve, generator failure, load shed, PQ excursion, a
    retransfer and a second loss), every device of ``SITE_DEVICES`` reporting at 4 Hz."""
    site = site or SiteEvents()
    ev = site.event
    key: list[tuple[float, str, str, dict[str, Any]]] = [
        (1.0, "meter-1", "SOURCE_LOST", {"source_from": "GRID"}),
        (1.0042, "sts-1", "TRANSFER", {"source_from": "GRID", "source_to": "BATTERY"}),
        (1.5, "gen-1", "GEN_START", {}),
        (1.5, "gen-2", "GEN_START", {}),
        (6.0, "gen-2", "GEN_FAIL", {"detail": "breaker trip"}),
        (9.0, "bat-1", "MEASUREMENT", {"battery_soc_pct": 9.0}),
        (9.5, "ctl-1", "LOAD_SHED", {"load_mw": 7.5}),
        (12.0, "gen-1", "GEN_RUNNING", {"gens_online": 1}),
        (12.5, "ats-1", "TRANSFER", {"source_from": "BATTERY", "source_to": "GENERATOR"}),
        (13.0, "gen-1", "MEASUREMENT", {"frequency_hz": 57.5, "voltage_pu": 0.88}),
        (14.0, "bat-1", "MEASUREMENT", {"battery_soc_pct": 15.0}),
        (40.0, "meter-1", "SOURCE_RESTORED", {"source_to": "GRID"}),
        (60.0, "ats-1", "TRANSFER", {"source_from": "GENERATOR", "source_to": "GRID"}),
        (75.0, "meter-1", "SOURCE_LOST", {"source_from": "GRID"}),
        (75.0041, "sts-1", "TRANSFER", {"source_from": "GRID", "source_to": "BATTERY"}),
        (90.0, "sts-1", "TRANSFER", {"source_from": "BATTERY", "source_to": "GRID"}),
    ]
    plan = [(t, d, et, f) for t, d, et, f in key]
    t = 0.0
    while t <= 130.0:  # 4 Hz measurements from every device
        for i, dev in enumerate(SITE_DEVICES):
            plan.append((t + i * 0.01, dev, "MEASUREMENT", {"load_mw": 10.0} if dev == "ctl-1" else {}))
        t += 0.25
    plan.sort(key=lambda p: p[0])
    return [ev(d, et, at, **f) for at, d, et, f in plan]
