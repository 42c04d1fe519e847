"""The power worker end to end: `carnival worker power` as a real subprocess against the real broker.

Events are produced with Carnival's producer and Avro serde; incidents and alerts are read back from
`power.incidents.v1` and `alerts.v1`. One worker serves the whole module (faust takes seconds to
start); every test uses its own site ids because topics are shared by the session. The restart test
runs last: it SIGKILLs the worker in the middle of an open incident, twice (the second time with its
local RocksDB state wiped, so the table comes back from its changelog).
"""

from __future__ import annotations

import os
import random
import shutil
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from worker_process import WorkerProcess

from core.settings import Settings
from processors.power import Detector, Incident, PowerConfig
from processors.power.scenario import SiteEvents, rich_failover_timeline
from streams.kafka import Producer, make_consumer
from streams.serde import serde_from_settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SILENT_AFTER_S = 4.0
WORKER_ENV = {"CARNIVAL_POWER_SILENT_AFTER_S": str(SILENT_AFTER_S)}


# ------------------------------------------------------------------------------------------ plumbing
class Worker(WorkerProcess):
    """`python -m carnival.cli worker power` in a subprocess, logs to a file."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        super().__init__("power", env, log_dir)


class Outputs:
    """Everything on the output topics, grouped by site (read from the beginning, filtered by site)."""

    TOPICS = ("power.incidents.v1", "alerts.v1", "deadletter.v1", "sites.power_state.v1")

    def __init__(self, settings: Settings) -> None:
        self.serde = serde_from_settings(settings)
        self.consumer = make_consumer(settings)
        self.consumer.subscribe(list(self.TOPICS))
        self.records: dict[str, dict[str, list[dict[str, Any]]]] = {t: defaultdict(list) for t in self.TOPICS}

    def poll(self, timeout_s: float = 0.2) -> None:
        for msg in self.consumer.consume(1000, timeout_s):
            if msg.error() or msg.value() is None:
                continue
            topic = msg.topic()
            rec = self.serde.decode(topic, msg.value())
            site = rec.get("site_id") if topic != "deadletter.v1" else (msg.key() or b"").decode()
            self.records[topic][site or ""].append(rec)

    def incidents(self, site: str) -> list[dict[str, Any]]:
        return self.records["power.incidents.v1"][site]

    def alerts(self, site: str) -> list[dict[str, Any]]:
        return self.records["alerts.v1"][site]

    def power_states(self, site: str) -> list[dict[str, Any]]:
        return self.records["sites.power_state.v1"][site]

    def wait_for_state(self, site: str, state: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """The site's power state records once one of them is ``state``."""
        self.wait(
            lambda: any(r["state"] == state for r in self.power_states(site)), timeout_s,
            f"power state {state} of {site}: got {[r['state'] for r in self.power_states(site)]}",
        )  # fmt: skip
        return self.power_states(site)

    def wait(self, cond: Callable[[], bool], timeout_s: float = 30.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.poll()
            if cond():
                return
        self.poll()
        assert cond(), f"timed out waiting for {what}"

    def wait_for(self, site: str, kind: str, state: str, timeout_s: float = 30.0) -> dict[str, Any]:
        def found() -> list[dict[str, Any]]:
            return [r for r in self.incidents(site) if r["kind"] == kind and r["state"] == state]

        self.wait(
            lambda: bool(found()), timeout_s, f"{kind} {state} of {site}: got {states(self.incidents(site))}"
        )
        return found()[0]

    def close(self) -> None:
        self.consumer.close()


def micros(value: Any) -> int | None:
    """A decoded ``timestamp-millis`` (aware datetime) as epoch µs, None for None."""
    return None if value is None else round(value.timestamp() * 1_000_000)


def power_timeline(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """(state, ts, since, grid_since, incident_id) of each power state record, times in µs."""
    return [
        (r["state"], micros(r["ts"]), micros(r["since"]), micros(r["grid_since"]), r["incident_id"])
        for r in records
    ]


def states(records: list[dict[str, Any]], skip: tuple[str, ...] = ("SITE_SILENT",)) -> list[tuple[str, str]]:
    return [(r["kind"], r["state"]) for r in records if r["kind"] not in skip]


def produce(settings: Settings, events: list[dict[str, Any]]) -> None:
    serde = serde_from_settings(settings)
    with Producer(settings) as producer:
        for e in events:
            producer.produce("power.events.v1", serde.encode("power.events.v1", e), e["site_id"])
    assert producer.stats.failed == 0


def new_site(rule: str) -> SiteEvents:
    return SiteEvents(f"it-{rule}-{uuid.uuid4().hex[:8]}")


def heartbeat(
    site: SiteEvents, start_s: float, end_s: float, every_s: float = 1.0, device: str = "ctl-1", **fields: Any
) -> list[dict[str, Any]]:
    out, t = [], start_s
    while t <= end_s:
        out.append(site.measure(t, device=device, **fields))
        t += every_s
    return out


def marker(site: SiteEvents, at_s: float) -> dict[str, Any]:
    """A LOAD_SHED far after a scenario: once its incident shows up, everything before was processed."""
    return site.event("ctl-1", "LOAD_SHED", at_s, detail="test marker")


@pytest.fixture(scope="module")
def outputs(stack: Settings) -> Iterator[Outputs]:
    out = Outputs(stack)
    yield out
    out.close()


@pytest.fixture(scope="module")
def worker(
    stack: Settings, stack_env: dict[str, str], outputs: Outputs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    w = Worker({**os.environ, **stack_env, **WORKER_ENV}, tmp_path_factory.mktemp("power-worker"))
    w.start()
    try:
        probe = new_site("probe")
        produce(stack, [probe.event("ctl-1", "LOAD_SHED", 1.0)])
        try:
            outputs.wait(lambda: not w.alive() or bool(outputs.incidents(probe.site_id)), timeout_s=120)
            assert w.alive()
        except AssertionError:
            pytest.fail(f"power worker did not come up:\n{w.log_tail()}")
        yield w
    finally:
        w.stop()


# ------------------------------------------------------------------------------------------- rules
def test_failover_opens_updates_resolves_with_a_firing_then_resolved_alert(
    settings: Settings, worker: Worker, outputs: Outputs
) -> None:
    site = new_site("failover")
    produce(
        settings,
        [
            *heartbeat(site, 0, 0.9),
            site.lost(1.0),
            site.transfer(1.004, "BATTERY", device="sts-1", source_from="GRID"),
            *heartbeat(site, 2, 99, every_s=5),
            site.transfer(100.0, "GRID", device="sts-1", source_from="BATTERY"),
            *heartbeat(site, 101, 420, every_s=5),
        ],
    )
    resolved = outputs.wait_for(site.site_id, "FAILOVER", "RESOLVED")
    inc = outputs.incidents(site.site_id)
    assert states(inc) == [("FAILOVER", "OPEN"), ("FAILOVER", "UPDATE"), ("FAILOVER", "RESOLVED")]
    assert {r["incident_id"] for r in inc} == {f"{site.site_id}/FAILOVER/{site.at(1.0)}"}
    assert inc[0]["transfer_ms"] == pytest.approx(4.0) and inc[0]["source_to"] == "BATTERY"
    assert resolved["time_on_alternate_ms"] == pytest.approx(98_996.0)
    outputs.wait(lambda: len(outputs.alerts(site.site_id)) >= 2, what="alerts")
    alerts = outputs.alerts(site.site_id)
    assert [(a["kind"], a["status"], a["severity"]) for a in alerts] == [
        ("FAILOVER", "FIRING", "info"),
        ("FAILOVER", "RESOLVED", "info"),
    ]
    assert alerts[0]["fingerprint"] == alerts[1]["fingerprint"]
    # The site's power state: islanded once the failover opened (blip_ignore_s after the loss), the
    # retransfer clock from the load back on grid, GRID when it has run retransfer_stable_s (300 s).
    failover_id = f"{site.site_id}/FAILOVER/{site.at(1.0)}"
    assert power_timeline(outputs.wait_for_state(site.site_id, "GRID")) == [
        ("ISLANDED_BATTERY", site.at(4.0), site.at(1.0), None, failover_id),
        ("ISLANDED_BATTERY", site.at(100.0), site.at(1.0), site.at(100.0), failover_id),
        ("GRID", site.at(400.0), site.at(400.0), None, None),
    ]


def test_a_site_quiet_after_its_retransfer_returns_to_grid_by_the_clock(
    settings: Settings, worker: Worker, outputs: Outputs
) -> None:
    """Nothing arrives after 396 s: the worker's ticks move the site's clock on (processing time since
    the last event), so the retransfer timer still fires at 400 s, with the battery runtime known while
    the load was on batteries."""
    site = new_site("quiet")
    produce(
        settings,
        [
            *heartbeat(site, 0, 0.9, device="ctl-1", load_mw=10.0),
            site.lost(1.0),
            site.transfer(1.004, "BATTERY", device="sts-1", source_from="GRID"),
            site.measure(2.0, device="bat-1", battery_soc_pct=50.0),
            *heartbeat(site, 3, 99, every_s=5, device="ctl-1", load_mw=10.0),
            site.transfer(100.0, "GRID", device="sts-1", source_from="BATTERY"),
            *heartbeat(site, 101, 396, every_s=5, device="ctl-1", load_mw=10.0),
        ],
    )
    records = outputs.wait_for_state(site.site_id, "GRID", timeout_s=60)
    failover_id = f"{site.site_id}/FAILOVER/{site.at(1.0)}"
    assert power_timeline(records) == [
        ("ISLANDED_BATTERY", site.at(4.0), site.at(1.0), None, failover_id),
        ("ISLANDED_BATTERY", site.at(100.0), site.at(1.0), site.at(100.0), failover_id),
        ("GRID", site.at(400.0), site.at(400.0), None, None),
    ]
    # 15.6 MWh above a 10 % reserve at 50 % is 6.24 MWh: 37.4 min at 10 MW; none once back on grid.
    assert [(r["battery_runtime_min"], r["battery_soc_pct"], r["load_mw"]) for r in records] == [
        (37.4, 50.0, 10.0),
        (None, 50.0, 10.0),
        (None, 50.0, 10.0),
    ]


def test_slow_static_transfer(settings: Settings, worker: Worker, outputs: Outputs) -> None:
    site = new_site("slow")
    produce(
        settings,
        [
            *heartbeat(site, 0, 0.9),
            site.lost(1.0),
            site.transfer(1.020, "BATTERY", device="sts-1"),
            *heartbeat(site, 2, 10),
            marker(site, 11),
        ],
    )
    slow = outputs.wait_for(site.site_id, "SLOW_TRANSFER", "OPEN")
    assert slow["transfer_ms"] == pytest.approx(20.0) and slow["device_id"] == "sts-1"
    assert any(
        a["kind"] == "SLOW_TRANSFER" and a["severity"] == "warning" for a in outputs.alerts(site.site_id)
    )


def test_failed_transfer_fires_then_resolves(settings: Settings, worker: Worker, outputs: Outputs) -> None:
    site = new_site("failed")
    produce(
        settings,
        [
            *heartbeat(site, 0, 0.9),
            site.lost(1.0),
            *heartbeat(site, 2, 44),
            site.transfer(45.0, "GENERATOR", device="ats-1"),
            *heartbeat(site, 46, 50),
        ],
    )
    opened = outputs.wait_for(site.site_id, "FAILED_TRANSFER", "OPEN")
    outputs.wait_for(site.site_id, "FAILED_TRANSFER", "RESOLVED")
    assert opened["started_at"].timestamp() == pytest.approx(site.at(1.0) / 1e6)
    outputs.wait(lambda: any(a["kind"] == "FAILED_TRANSFER" for a in outputs.alerts(site.site_id)))
    firing = [a for a in outputs.alerts(site.site_id) if a["kind"] == "FAILED_TRANSFER"][0]
    assert firing["severity"] == "critical" and firing["summary"].startswith("[CRITICAL]")


def test_generator_start_failure(settings: Settings, worker: Worker, outputs: Outputs) -> None:
    site = new_site("gen")
    produce(
        settings,
        [
            *heartbeat(site, 0, 0.5),
            site.lost(1.0),
            site.transfer(1.004, "BATTERY", device="sts-1"),
            site.event("gen-2", "GEN_START", 2.0),
            site.event("gen-2", "GEN_FAIL", 9.0, detail="low fuel"),
            *heartbeat(site, 10, 12),
        ],
    )
    fail = outputs.wait_for(site.site_id, "GEN_START_FAILURE", "OPEN")
    assert fail["device_id"] == "gen-2" and "low fuel" in fail["summary"]


def test_flapping(settings: Settings, worker: Worker, outputs: Outputs) -> None:
    site = new_site("flap")
    produce(
        settings,
        [
            *heartbeat(site, 0, 0.5),
            site.lost(1.0),
            site.transfer(1.004, "BATTERY", device="sts-1"),
            *heartbeat(site, 2, 99, every_s=5),
            site.transfer(100.0, "GRID", device="sts-1"),
            *heartbeat(site, 101, 149, every_s=5),
            site.lost(150.0),
            site.transfer(150.004, "BATTERY", device="sts-1"),
            *heartbeat(site, 151, 200, every_s=5),
        ],
    )
    flap = outputs.wait_for(site.site_id, "FLAPPING", "OPEN")
    assert "50.0 s after retransfer" in flap["summary"]


def test_battery_reserve_while_islanded(settings: Settings, worker: Worker, outputs: Outputs) -> None:
    site = new_site("battery")
    produce(
        settings,
        [
            *heartbeat(site, 0, 0.5),
            site.lost(1.0),
            site.transfer(1.004, "BATTERY", device="sts-1"),
            site.measure(5, device="bat-1", battery_soc_pct=40.0),
            site.measure(6, device="bat-1", battery_soc_pct=9.5),
            site.measure(7, device="bat-1", battery_soc_pct=13.0),
            *heartbeat(site, 8, 10),
        ],
    )
    opened = outputs.wait_for(site.site_id, "BATTERY_RESERVE", "OPEN")
    assert opened["min_battery_soc_pct"] == 9.5
    assert opened["parent_incident_id"] == f"{site.site_id}/FAILOVER/{site.at(1.0)}"
    outputs.wait_for(site.site_id, "BATTERY_RESERVE", "RESOLVED")
    outputs.wait(lambda: len(outputs.power_states(site.site_id)) >= 3, what="three power states")
    records = outputs.power_states(site.site_id)
    assert [(r["state"], micros(r["ts"]), r["battery_soc_pct"]) for r in records] == [
        ("ISLANDED_BATTERY", site.at(4.0), None),  # the timer fired before the reading at 5 s was applied
        ("RESERVE", site.at(6.0), 9.5),
        ("ISLANDED_BATTERY", site.at(7.0), 13.0),  # above reserve + hysteresis
    ]


def test_power_quality_excursion_while_islanded(settings: Settings, worker: Worker, outputs: Outputs) -> None:
    site = new_site("pq")
    produce(
        settings,
        [
            *heartbeat(site, 0, 0.5),
            site.lost(1.0),
            site.transfer(9.0, "GENERATOR", device="ats-1"),
            site.measure(11, device="gen-1", frequency_hz=60.1, voltage_pu=1.0),
            site.measure(12, device="gen-1", frequency_hz=57.4),
            site.measure(13, device="gen-1", voltage_pu=0.85),
            *heartbeat(site, 14, 30, device="gen-1", frequency_hz=60.0, voltage_pu=1.0),
        ],
    )
    opened = outputs.wait_for(site.site_id, "PQ_EXCURSION", "OPEN")
    assert "underfrequency" in opened["summary"]
    outputs.wait_for(site.site_id, "PQ_EXCURSION", "RESOLVED")


def test_load_shed(settings: Settings, worker: Worker, outputs: Outputs) -> None:
    site = new_site("shed")
    produce(
        settings,
        [
            *heartbeat(site, 0, 1),
            site.event("ctl-1", "LOAD_SHED", 2.0, load_mw=8.0, detail="rows 3-4"),
            *heartbeat(site, 3, 400, every_s=10),
        ],
    )
    outputs.wait_for(site.site_id, "LOAD_SHED", "RESOLVED")
    assert states(outputs.incidents(site.site_id)) == [("LOAD_SHED", "OPEN"), ("LOAD_SHED", "RESOLVED")]
    assert "rows 3-4" in outputs.incidents(site.site_id)[0]["summary"]


def test_blip_is_not_a_failover(settings: Settings, worker: Worker, outputs: Outputs) -> None:
    site = new_site("blip")
    produce(
        settings,
        [
            *heartbeat(site, 0, 0.5),
            site.lost(1.0),
            site.transfer(1.004, "BATTERY", device="sts-1"),
            site.restored(2.0),
            site.transfer(2.5, "GRID", device="sts-1"),
            *heartbeat(site, 3, 90),
            marker(site, 91),
        ],
    )
    outputs.wait_for(site.site_id, "LOAD_SHED", "OPEN")
    assert states(outputs.incidents(site.site_id)) == [("LOAD_SHED", "OPEN")]


# -------------------------------------------------------------------------------------- robustness
def shuffle_with_duplicates(
    events: list[dict[str, Any]], rng: random.Random, lateness_us: int
) -> list[dict[str, Any]]:
    """Reorder within the allowance (each event delayed by up to 0.9 of it) and redeliver 20 % of them.
    Every device's first event leads, in order: a never-seen device cannot be proven early."""
    first: dict[str, dict[str, Any]] = {}
    for e in events:
        first.setdefault(e["device_id"], e)
    warm = list(first.values())
    rest = []
    for e in events:
        if first[e["device_id"]] is e:
            continue
        rest.append((e["ts"] + int(rng.random() * 0.9 * lateness_us), e))
        if rng.random() < 0.2:
            rest.append((e["ts"] + int(rng.random() * 0.9 * lateness_us), dict(e)))
    rest.sort(key=lambda p: p[0])
    return warm + [e for _, e in rest]


def expected_incidents(
    settings: Settings, events: list[dict[str, Any]], site_id: str
) -> list[dict[str, Any]]:
    """What the pure detector emits for in-order delivery, as read back from the topic (Avro round trip)."""
    serde = serde_from_settings(settings)
    det = Detector(site_id, PowerConfig(silent_after_s=SILENT_AFTER_S))
    incidents = [o for e in events for o in det.on_event(e) if isinstance(o, Incident)]
    topic = "power.incidents.v1"
    return [serde.decode(topic, serde.encode(topic, i.to_record())) for i in incidents]


def comparable(rec: dict[str, Any], site_id: str) -> tuple[Any, ...]:
    return (
        rec["incident_id"].removeprefix(site_id),
        rec["kind"],
        rec["state"],
        rec["updated_at"],
        rec["transfer_ms"],
        rec["source_to"],
        rec["min_battery_soc_pct"],
        rec["summary"].replace(site_id, "SITE"),
    )


def test_out_of_order_and_duplicate_delivery_give_the_same_incidents(
    settings: Settings, worker: Worker, outputs: Outputs
) -> None:
    ordered, shuffled = new_site("inorder"), new_site("shuffled")
    events_a = rich_failover_timeline(ordered)
    lateness_us = PowerConfig().lateness_us
    events_b = shuffle_with_duplicates(rich_failover_timeline(shuffled), random.Random(5), lateness_us)
    assert len(events_b) > len(events_a) + 100
    expected = [
        comparable(r, ordered.site_id) for r in expected_incidents(settings, events_a, ordered.site_id)
    ]
    assert {k for _, k, *_ in expected} >= {
        "FAILOVER",
        "GEN_START_FAILURE",
        "BATTERY_RESERVE",
        "LOAD_SHED",
        "PQ_EXCURSION",
        "FLAPPING",
    }
    produce(settings, events_a + events_b)
    n = len(expected)
    outputs.wait(
        lambda: (
            len(outputs.incidents(ordered.site_id)) >= n and len(outputs.incidents(shuffled.site_id)) >= n
        ),
        timeout_s=60,
        what=f"{n} incident records per site",
    )
    got_a = [comparable(r, ordered.site_id) for r in outputs.incidents(ordered.site_id)][:n]
    got_b = [comparable(r, shuffled.site_id) for r in outputs.incidents(shuffled.site_id)][:n]
    assert got_a == expected
    assert got_b == expected
    late = [
        d
        for d in outputs.records["deadletter.v1"]["power.events.v1"]
        if d["key"] == shuffled.site_id.encode()
    ]
    assert late == []  # everything came within the allowance


def test_sequence_gap_is_reported(settings: Settings, worker: Worker, outputs: Outputs) -> None:
    site = new_site("gap")
    events = heartbeat(site, 0, 10)
    del events[3:6]  # seq 4-6 of ctl-1 never arrive
    produce(settings, [*events, *heartbeat(site, 11, 20)])
    gap = outputs.wait_for(site.site_id, "SEQUENCE_GAP", "OPEN")
    assert gap["device_id"] == "ctl-1" and "seq 4-6 (3 events lost)" in gap["summary"]
    outputs.wait(lambda: any(a["kind"] == "SEQUENCE_GAP" for a in outputs.alerts(site.site_id)))


def test_site_silent_mid_incident_raises_its_own_alert(
    settings: Settings, worker: Worker, outputs: Outputs
) -> None:
    site = new_site("silent")
    produce(
        settings,
        [
            *heartbeat(site, 0, 0.5),
            site.lost(1.0),
            site.transfer(1.004, "BATTERY", device="sts-1"),
            *heartbeat(site, 2, 10),
        ],
    )
    failover = outputs.wait_for(site.site_id, "FAILOVER", "OPEN")
    silent = outputs.wait_for(site.site_id, "SITE_SILENT", "OPEN", timeout_s=SILENT_AFTER_S + 15)
    assert silent["parent_incident_id"] == failover["incident_id"]
    outputs.wait(lambda: any(a["kind"] == "SITE_SILENT" for a in outputs.alerts(site.site_id)))
    alert = [a for a in outputs.alerts(site.site_id) if a["kind"] == "SITE_SILENT"][0]
    assert alert["status"] == "FIRING" and alert["severity"] == "critical"
    produce(settings, [site.measure(12, device="ctl-1")])
    outputs.wait_for(site.site_id, "SITE_SILENT", "RESOLVED")
    outputs.wait(
        lambda: (
            [a["status"] for a in outputs.alerts(site.site_id) if a["kind"] == "SITE_SILENT"]
            == ["FIRING", "RESOLVED"]
        )
    )


def test_bad_records_are_dead_lettered(settings: Settings, worker: Worker, outputs: Outputs) -> None:
    site = new_site("bad")
    serde = serde_from_settings(settings)
    good = site.measure(1.0)
    with Producer(settings) as producer:
        producer.produce("power.events.v1", b"\x00garbage", site.site_id)
        producer.produce("power.events.v1", serde.encode("power.events.v1", good), "some-other-key")
        producer.produce("power.events.v1", serde.encode("power.events.v1", marker(site, 2.0)), site.site_id)
    outputs.wait_for(site.site_id, "LOAD_SHED", "OPEN")
    outputs.wait(
        lambda: (
            sum(
                1
                for d in outputs.records["deadletter.v1"]["power.events.v1"]
                if d["key"] in (site.site_id.encode(), b"some-other-key")
            )
            >= 2
        ),
        what="two dead letters",
    )
    kinds = {
        d["error_kind"]
        for d in outputs.records["deadletter.v1"]["power.events.v1"]
        if d["key"] in (site.site_id.encode(), b"some-other-key")
    }
    assert "VALIDATION" in kinds and len(kinds) == 2
    assert worker.alive()


def test_a_tombstone_and_a_year_3000_event_never_blind_the_site(
    settings: Settings, worker: Worker, outputs: Outputs
) -> None:
    """A null value and an event stamped in the year 3000 (its Kafka timestamp is now) are dead-lettered
    with their reasons; the site's failover right after them is still found and measured."""
    site = new_site("hostile")
    serde = serde_from_settings(settings)
    future = site.measure(0.5)
    future["ts"] = 32_503_680_000_000_000  # 3000-01-01
    with Producer(settings) as producer:
        producer.produce("power.events.v1", None, site.site_id)  # type: ignore[arg-type]
        producer.produce("power.events.v1", serde.encode("power.events.v1", future), site.site_id)
    produce(
        settings,
        [
            *heartbeat(site, 0, 0.9),
            site.lost(1.0),
            site.transfer(1.004, "BATTERY", device="sts-1", source_from="GRID"),
            *heartbeat(site, 2, 10),
            marker(site, 11),
        ],
    )
    opened = outputs.wait_for(site.site_id, "FAILOVER", "OPEN")
    assert opened["transfer_ms"] == pytest.approx(4.0)
    outputs.wait_for(site.site_id, "LOAD_SHED", "OPEN")  # everything before the marker was processed

    def dead() -> list[dict[str, Any]]:
        return [
            d
            for d in outputs.records["deadletter.v1"]["power.events.v1"]
            if d["key"] == site.site_id.encode()
        ]

    outputs.wait(lambda: len(dead()) >= 2, what="two dead letters")
    assert sorted(d["error_kind"] for d in dead()) == ["FUTURE_TIMESTAMP", "TOMBSTONE"]
    assert all(d["error"] for d in dead())
    assert worker.alive()


# -------------------------------------------------------------------------------------------- batches
def test_batches_mixing_partitions_write_each_site_state_to_its_own_partition(
    settings: Settings, worker: Worker, outputs: Outputs
) -> None:
    """Events of many sites, interleaved, so every batch mixes input partitions: each site's state goes
    to the changelog partition of its own input events (faust takes it from the current event) and
    holds everything up to its last event."""
    group = [new_site(f"mix{i}") for i in range(24)]  # 24 sites over 6 partitions: all of them, surely
    interleaved = []
    for t in range(8):
        interleaved += [site.measure(t * 0.5, device="ctl-1") for site in group]
    interleaved += [marker(site, 5.0) for site in group]
    produce(settings, interleaved)
    for site in group:
        outputs.wait_for(site.site_id, "LOAD_SHED", "OPEN")

    def read(topic: str, keys: set[bytes]) -> dict[bytes, list[tuple[int, bytes]]]:
        consumer = make_consumer(settings)
        consumer.subscribe([topic])
        found: dict[bytes, list[tuple[int, bytes]]] = defaultdict(list)
        idle_until = time.monotonic() + 5
        try:
            while time.monotonic() < idle_until:
                msgs = consumer.consume(1000, 0.5)
                if msgs:
                    idle_until = time.monotonic() + 2
                for msg in msgs:
                    if not msg.error() and msg.key() in keys:
                        found[msg.key()].append((msg.partition(), msg.value()))
        finally:
            consumer.close()
        return found

    keys = {site.site_id.encode() for site in group}
    inputs = read("power.events.v1", keys)
    input_partition = {key: {part for part, _ in recs} for key, recs in inputs.items()}
    assert all(len(parts) == 1 for parts in input_partition.values())
    assert len({next(iter(parts)) for parts in input_partition.values()}) > 1  # batches did mix partitions

    deadline = time.monotonic() + 30  # states are written at the next checkpoint (well under a second)
    while True:
        changelog = read("carnival-power-sites-changelog", keys)
        states_ = {key: orjson.loads(recs[-1][1]) for key, recs in changelog.items() if recs[-1][1]}
        done = [key for key, st in states_.items() if st.get("stats", {}).get("events") == 9]
        if len(done) == len(keys) or time.monotonic() > deadline:
            break
    assert sorted(done) == sorted(keys), f"states with all 9 events: {len(done)} of {len(keys)}"
    for key, recs in changelog.items():
        assert {part for part, _ in recs} == input_partition[key], key
        restored = Detector.from_dict(orjson.loads(recs[-1][1]), PowerConfig())
        assert restored.site_id == key.decode()


def test_a_detector_that_raises_is_rewound_without_the_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """``run_batch`` (what the agent runs per batch, no Kafka): an event that breaks a detector is
    dead-lettered as PROCESSING and leaves no trace. The site's detector is rebuilt from its stored
    state plus its unsaved events (an earlier batch) plus this batch's earlier events; other sites are
    untouched, and the outputs are those of delivery without the broken event."""
    from processors.power.runtime import DetectorCache, encode_state, run_batch

    a, b = new_site("rewind-a"), new_site("rewind-b")
    first = heartbeat(a, 0, 3) + heartbeat(b, 0, 3)
    second = heartbeat(a, 4, 8) + [marker(a, 9.0)] + heartbeat(b, 4, 8) + [marker(b, 9.0)]
    broken = second[2]  # a's heartbeat at 6 s
    table: dict[str, bytes] = {}
    config = PowerConfig()
    cache = DetectorCache(config, table.get, lambda: 0)
    original = Detector.on_event

    def on_event(self: Detector, record: Any, arrival_us: int | None = None) -> list[Any]:
        if record is broken:
            self.open["corrupted"] = True  # half-applied: this must not survive
            raise ZeroDivisionError("detector bug")
        return original(self, record, arrival_us)

    monkeypatch.setattr(Detector, "on_event", on_event)
    items = lambda events: [(e["site_id"], e, e["ts"], i) for i, e in enumerate(events)]  # noqa: E731
    run1 = run_batch(cache, items(first))
    assert run1.ok == len(first) and not run1.dead
    replayed: list[str] = []

    def unsaved(site_id: str) -> list[tuple[dict[str, Any], int]]:
        replayed.append(site_id)
        return [(e, e["ts"]) for e in first if e["site_id"] == site_id]

    run2 = run_batch(cache, items(second), unsaved=unsaved)
    assert replayed == [a.site_id]
    assert [(src, kind) for src, kind, _ in run2.dead] == [(2, "PROCESSING")]
    assert run2.failed == 1 and run2.ok == len(second) - 1
    assert set(run2.touched) == {a.site_id, b.site_id}

    monkeypatch.setattr(Detector, "on_event", original)
    for site in (a, b):
        ref = Detector(site.site_id, config)
        expected = [
            o.to_record()["incident_id"] + "/" + o.to_record()["state"]
            for e in first + second
            if e is not broken and e["site_id"] == site.site_id
            for o in ref.on_event(e, e["ts"])
            if isinstance(o, Incident)
        ]
        got = cache.get(site.site_id)
        assert "corrupted" not in got.open
        assert encode_state(got) == encode_state(ref)
        emitted = [
            em.record["incident_id"] + "/" + em.record["state"]
            for _, em in run1.emissions + run2.emissions
            if em.topic == "power.incidents.v1" and em.record["site_id"] == site.site_id
        ]
        assert emitted == expected and any("/LOAD_SHED/" in i for i in emitted)


# ------------------------------------------------------------------------------------------ restart
def test_restart_mid_incident_resolves_the_same_incident(
    settings: Settings, stack_env: dict[str, str], worker: Worker, outputs: Outputs
) -> None:
    site = new_site("restart")
    produce(
        settings,
        [
            *heartbeat(site, 0, 0.9),
            site.lost(1.0),
            site.transfer(1.004, "BATTERY", device="sts-1", source_from="GRID"),
            *heartbeat(site, 2, 30, every_s=2),
        ],
    )
    opened = outputs.wait_for(site.site_id, "FAILOVER", "OPEN")
    worker.kill()  # SIGKILL right after the OPEN: offsets and changelog may or may not be committed

    # Events produced while the worker is down: the retransfer to grid.
    produce(settings, [*heartbeat(site, 32, 99, every_s=2), site.transfer(100.0, "GRID", device="sts-1")])
    worker.start()
    outputs.wait_for(site.site_id, "FAILOVER", "UPDATE", timeout_s=120)

    # Second crash, and the local RocksDB is gone too: the table must come back from its changelog.
    worker.kill()
    shutil.rmtree(Path(stack_env["CARNIVAL_DATA_DIR"]) / "faust" / "power", ignore_errors=True)
    produce(settings, heartbeat(site, 101, 420, every_s=5))
    worker.start()
    resolved = outputs.wait_for(site.site_id, "FAILOVER", "RESOLVED", timeout_s=120)

    failover = [r for r in outputs.incidents(site.site_id) if r["kind"] == "FAILOVER"]
    assert {r["incident_id"] for r in failover} == {opened["incident_id"]} == {resolved["incident_id"]}
    # Replays may repeat a record (same id, same content), never invent a different one.
    assert {r["state"] for r in failover} == {"OPEN", "UPDATE", "RESOLVED"}
    assert resolved["ended_at"].timestamp() == pytest.approx(site.at(100.0) / 1e6)
    assert resolved["time_on_alternate_ms"] == pytest.approx(98_996.0)
    assert [k for k, _ in states(outputs.incidents(site.site_id))] == ["FAILOVER"] * len(failover)
