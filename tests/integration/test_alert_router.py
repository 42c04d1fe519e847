"""The alert router against the real broker and real local HTTP receivers: retry until a failing
receiver recovers (delivered exactly once), dedup of a repeated FIRING, a down receiver not holding up a
healthy one, commit-after-delivery across restarts, receivers that fail every way at once (down, 500s,
malformed answers, 400s: dead letters), and the `carnival alerts route` command."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from core.settings import Settings
from processors.alert_router.delivery import Receiver
from processors.alert_router.router import AlertRouter, RouterConfig
from processors.alert_router.testing import (
    ERROR_500,
    MALFORMED,
    OK,
    REFUSE,
    REJECT_400,
    FaultyReceiver,
    RecordingReceiver,
)
from streams.deadletter import DELIVERY_REJECTED
from streams.kafka import Producer, make_consumer
from streams.lag import group_lag
from streams.serde import serde_from_settings

pytestmark = pytest.mark.integration

FAST = {"backoff_initial_s": 0.05, "backoff_max_s": 0.2, "commit_interval_s": 0.05, "drain_timeout_s": 1.0}


def make_alert(fp: str, status: str = "FIRING") -> dict[str, Any]:
    return {
        "fingerprint": fp, "status": status, "severity": "critical", "kind": "FAILED_TRANSFER",
        "site_id": "dc-it", "region": None, "summary": f"dc-it: test alert {fp}",
        "starts_at": datetime.now(UTC),
        "ends_at": datetime.now(UTC) if status == "RESOLVED" else None, "labels": {"test": "router"},
        "incident_id": f"dc-it/FAILED_TRANSFER/{fp}",
    }  # fmt: skip


def produce(settings: Settings, alerts: list[dict[str, Any]]) -> None:
    serde = serde_from_settings(settings)
    with Producer(settings) as producer:
        for a in alerts:
            producer.produce("alerts.v1", serde.encode("alerts.v1", a), a["fingerprint"])
    assert producer.stats.failed == 0


def ours(rx: RecordingReceiver | FaultyReceiver, fps: set[str]) -> list[tuple[str, str]]:
    """(fingerprint, status) of the Alertmanager bodies this test produced (other tests share the topic)."""
    out = []
    for body in rx.received:
        for a in body["alerts"]:
            if a["fingerprint"] in fps:
                out.append((a["fingerprint"], a["status"]))
    return out


def start(router: AlertRouter, max_idle_s: float | None = None) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=router.run, args=(stop,), kwargs={"max_idle_s": max_idle_s}, daemon=True)
    thread.start()
    return stop, thread


def wait_until(cond: Any, timeout_s: float = 30.0) -> bool:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def test_retry_dedup_isolation_and_commit_after_delivery(settings: Settings) -> None:
    group = f"it-router-{uuid.uuid4().hex[:8]}"
    a, b = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    fps = {a, b}
    produce(settings, [make_alert(a), make_alert(a), make_alert(b), make_alert(a, "RESOLVED")])
    with RecordingReceiver() as healthy, RecordingReceiver() as flaky:
        flaky.fail_with = 500
        router = AlertRouter(settings, [Receiver("healthy", healthy.url), Receiver("flaky", flaky.url)],
                             RouterConfig(group_id=group, **FAST))  # fmt: skip
        stop, thread = start(router)
        try:
            # The healthy receiver gets everything (the repeated FIRING once) while the other one is down.
            assert wait_until(lambda: len(ours(healthy, fps)) >= 3), ours(healthy, fps)
            assert wait_until(lambda: flaky.attempts >= 3)
            assert ours(flaky, fps) == []
            flaky.fail_with = None  # recovers
            assert wait_until(lambda: len(ours(flaky, fps)) >= 3), ours(flaky, fps)
            assert wait_until(lambda: router.in_flight == 0)
        finally:
            stop.set()
            thread.join(20)
        for rx in (healthy, flaky):
            got = ours(rx, fps)
            assert sorted(got) == sorted([(a, "firing"), (b, "firing"), (a, "resolved")]), got
            assert got.index((a, "firing")) < got.index((a, "resolved"))
        assert router.stats["deduplicated"] >= 1

        # Offsets were committed after delivery: a new router of the same group re-sends nothing, and a
        # receiver added now starts where the router's group is, not at the start of the topic.
        before = (len(healthy.received), len(flaky.received))
        with RecordingReceiver() as newcomer:
            again = AlertRouter(settings, [Receiver("healthy", healthy.url), Receiver("flaky", flaky.url),
                                           Receiver("newcomer", newcomer.url)],
                                RouterConfig(group_id=group, **FAST))  # fmt: skip
            again.run(threading.Event(), max_idle_s=4.0)
        assert (len(healthy.received), len(flaky.received)) == before
        assert ours(newcomer, fps) == []


def test_undelivered_alert_survives_router_restart(settings: Settings) -> None:
    group = f"it-router-{uuid.uuid4().hex[:8]}"
    fp = f"c-{uuid.uuid4().hex[:8]}"
    with RecordingReceiver() as rx:
        rx.fail_with = 503
        router = AlertRouter(settings, [Receiver("down", rx.url)], RouterConfig(group_id=group, **FAST))
        stop, thread = start(router)
        produce(settings, [make_alert(fp)])
        try:
            assert wait_until(lambda: rx.attempts >= 2)
        finally:
            stop.set()  # stopped while the receiver is still down: nothing may be committed
            thread.join(20)
        rx.fail_with = None
        restarted = AlertRouter(settings, [Receiver("down", rx.url)], RouterConfig(group_id=group, **FAST))
        stop, thread = start(restarted)
        try:
            assert wait_until(lambda: ours(rx, {fp}) == [(fp, "firing")])
        finally:
            stop.set()
            thread.join(20)
        assert ours(rx, {fp}) == [(fp, "firing")]


def test_alerts_route_command_delivers_both_shapes(settings: Settings, run_cli: Any) -> None:
    fp = f"d-{uuid.uuid4().hex[:8]}"
    produce(settings, [make_alert(fp)])
    with RecordingReceiver() as am, RecordingReceiver() as slack:
        group = f"it-cli-{uuid.uuid4().hex[:8]}"
        result = run_cli("alerts", "route", "--webhook", am.url, "--slack-webhook", slack.url,
                         "--group-id", group, "--max-idle", "3", timeout=90)  # fmt: skip
        assert result.returncode == 0, result.stderr.decode()[-2000:]
        assert ours(am, {fp}) == [(fp, "firing")]
        texts = [b["text"] for b in slack.received if fp in b.get("text", "")]
        assert len(texts) == 1 and "FIRING:critical" in texts[0]


def rejected_dead_letters(settings: Settings, fps: set[str], receiver: str) -> list[str]:
    """Fingerprints of the DELIVERY_REJECTED dead letters ``receiver`` caused for ``fps``."""
    from streams.consume import assign_all_partitions

    serde = serde_from_settings(settings)
    consumer = make_consumer(settings)
    found = []
    try:
        assign_all_partitions(consumer, "deadletter.v1", from_beginning=True)
        while msgs := consumer.consume(1000, timeout=2.0):
            for msg in msgs:
                dl = serde.decode("deadletter.v1", msg.value())
                if dl["error_kind"] != DELIVERY_REJECTED or f"receiver {receiver} " not in dl["error"]:
                    continue
                fp = serde.decode("alerts.v1", dl["value"])["fingerprint"]
                if fp in fps:
                    assert dl["source_topic"] == "alerts.v1" and "HTTP 400" in dl["error"]
                    found.append(fp)
    finally:
        consumer.close()
    return found


def test_good_flaky_and_rejecting_receivers_progress_independently(settings: Settings) -> None:
    """One good receiver; one down 10 s, then answering 500s, then malformed answers, then recovering;
    one answering 400. The good one has every alert exactly once while the flaky one is still down; the
    flaky one gets every alert in the end; the 400s are dead letters; the router's group catches up."""
    import time

    group = f"it-lanes-{uuid.uuid4().hex[:8]}"
    tag = uuid.uuid4().hex[:6]
    first = [f"e-{tag}-{i:02d}" for i in range(30)]
    later = [f"e-{tag}-{i:02d}" for i in range(30, 40)]
    fps = set(first + later)
    produce(settings, [make_alert(fp) for fp in first] + [make_alert(fp) for fp in first[:5]])  # 5 repeats
    with RecordingReceiver() as good, FaultyReceiver(REFUSE) as flaky, FaultyReceiver(REJECT_400) as strict:
        receivers = [Receiver("good", good.url), Receiver("flaky", flaky.url), Receiver("strict", strict.url)]
        router = AlertRouter(settings, receivers, RouterConfig(group_id=group, **FAST, max_in_flight=8))
        started = time.monotonic()
        stop, thread = start(router)
        try:
            assert wait_until(lambda: len(ours(good, fps)) >= 30), len(ours(good, fps))
            produce(settings, [make_alert(fp) for fp in later])  # while the flaky receiver is down
            assert wait_until(lambda: len(ours(good, fps)) >= 40), len(ours(good, fps))
            assert flaky.mode == REFUSE and ours(flaky, fps) == []
            assert router.lanes[1].in_flight <= 8  # its backlog is bounded; the good one went on
            flaky.play([(REFUSE, max(0.0, 10 - (time.monotonic() - started))), (ERROR_500, 3), (MALFORMED, 3),
                        (OK, 0)])  # fmt: skip
            assert wait_until(lambda: len(ours(flaky, fps)) >= 40, timeout_s=45), len(ours(flaky, fps))
            assert flaky.attempts.get(ERROR_500, 0) >= 1 and flaky.attempts.get(MALFORMED, 0) >= 1
            assert wait_until(lambda: router.in_flight == 0)
            assert wait_until(lambda: group_lag(settings, group, ["alerts.v1"]) == {"alerts.v1": 0})
        finally:
            stop.set()
            thread.join(20)
    for rx in (good, flaky):
        assert sorted(fp for fp, _ in ours(rx, fps)) == sorted(fps)  # every alert, each exactly once
    assert ours(strict, fps) == []
    assert sorted(rejected_dead_letters(settings, fps, "strict")) == sorted(fps)
