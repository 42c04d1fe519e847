"""Every map of the power detector that grows with input is bounded (issue 11, item 3): a flood of
distinct device ids, generators or events cannot grow a site's memory without bound; the bounds are
``PowerConfig.max_devices`` and ``max_buffered``, and ``device_forget_s`` of event time."""

from __future__ import annotations

from typing import Any

import pytest

from processors.power import Detector, InvalidPowerEvent, PowerConfig
from processors.power.runtime import (
    DEVICES_TRACKED,
    EVENTS_BUFFERED,
    OPEN_INCIDENTS,
    SITES_IN_MEMORY,
    DetectorCache,
    run_batch,
    set_memory_gauges,
)
from processors.power.scenario import SiteEvents

CONFIG = PowerConfig(max_devices=64, max_buffered=500, device_forget_s=600.0)


def _flood(det: Detector, events: list[dict[str, Any]]) -> list[str]:
    refused = []
    for e in events:
        try:
            det.on_event(e, arrival_us=e["ts"])
        except InvalidPowerEvent as exc:
            refused.append(str(exc))
    return refused


def test_a_flood_of_device_ids_is_refused_past_max_devices_and_forgotten_by_event_time() -> None:
    site = SiteEvents()
    det = Detector("dc-1", CONFIG)
    refused = _flood(det, [site.measure(i * 0.001, device=f"meter-{i}") for i in range(5_000)])
    assert len(det.buffer.devices) <= CONFIG.max_devices
    assert len(refused) == 5_000 - CONFIG.max_devices
    assert "already tracks 64 devices" in refused[0]
    # The flooders go silent: after device_forget_s of event time, a real device is taken again.
    assert not _flood(det, [site.measure(700.0 + i, device="ctl-1") for i in range(10)])
    assert "ctl-1" in det.buffer.devices and len(det.buffer.devices) <= CONFIG.max_devices


def test_the_reorder_buffer_never_holds_more_than_max_buffered() -> None:
    site = SiteEvents()
    det = Detector("dc-1", PowerConfig(max_buffered=500, fast_release=False, lateness_ms=60_000.0))
    most = 0
    for i in range(5_000):
        det.on_event(site.measure(i * 0.001), arrival_us=0)  # all inside the allowance: all held
        most = max(most, len(det.buffer))
    assert most == 500  # the 501st released the earliest at once
    assert det.stats["applied"] == 5_000 - 500


def test_a_flood_of_generator_failures_keeps_a_bounded_site() -> None:
    site = SiteEvents()
    det = Detector("dc-1", PowerConfig(max_devices=64))
    events: list[dict[str, Any]] = []
    for i in range(3_000):
        dev = f"gen-{i}"
        t = i * 1.0  # each generator is forgotten 3600 s after its events
        events += [site.event(dev, "GEN_RUNNING", t), site.event(dev, "GEN_FAIL", t + 0.5)]
        events.append(site.event(f"gen-x{i}", "GEN_RUNNING", t + 0.6))  # running, never stopped
    _flood(det, events)
    det.flush()
    gens = det.site.gens
    assert len([k for k in det.open if k.startswith("gen:")]) <= 64
    assert len(gens["running"]) <= 64
    assert len(gens["last"]) <= 64 * 2
    assert len(det.buffer.devices) <= 64


@pytest.mark.parametrize("max_sites", [10, 100])
def test_a_flood_of_site_ids_keeps_at_most_max_sites_in_memory(max_sites: int) -> None:
    stored: dict[str, bytes] = {}
    cache = DetectorCache(PowerConfig(), stored.get, lambda: 0, max_sites=max_sites)
    most = 0
    for batch in range(40):
        items = []
        for i in range(25):
            site = SiteEvents(f"flood-{batch}-{i}")
            e = site.measure(1.0)
            items.append((site.site_id, e, e["ts"], None))
        run_batch(cache, items)
        most = max(most, len(cache))
        cache.held.clear()  # what the processor does once the batch's sites are in its unsaved set
    assert most <= max(max_sites, 25) + 1


def test_a_site_in_the_batch_is_never_evicted_before_it_is_saved() -> None:
    stored: dict[str, bytes] = {}
    cache = DetectorCache(PowerConfig(), stored.get, lambda: 0, max_sites=4)
    site = SiteEvents("dc-keep")
    first = site.measure(1.0)
    items: list[tuple[str, dict[str, Any], int, None]] = [("dc-keep", first, first["ts"], None)]
    for i in range(20):
        other = SiteEvents(f"flood-{i}").measure(1.0)
        items.append((other["site_id"], other, other["ts"], None))
    run_batch(cache, items)
    assert cache.peek("dc-keep") is not None and cache.peek("dc-keep").stats["events"] == 1  # type: ignore[union-attr]


def test_the_memory_gauges_follow_the_sites() -> None:
    stored: dict[str, bytes] = {}
    cache = DetectorCache(PowerConfig(), stored.get, lambda: 0)
    for name in ("a", "b"):
        site = SiteEvents(name)
        det = cache.get(name)
        for e in [site.measure(0.5), site.lost(1.0), site.measure(1.2, device="sts-1")]:
            det.on_event(e, arrival_us=e["ts"])
    set_memory_gauges(cache)
    assert SITES_IN_MEMORY._value.get() == 2
    assert DEVICES_TRACKED._value.get() == 4
    assert EVENTS_BUFFERED._value.get() == sum(len(d.buffer) for _, d in cache.items())
    assert OPEN_INCIDENTS._value.get() == 0
