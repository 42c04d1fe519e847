"""Alert router without a broker: payload shapes, dedup, delivery to a real local HTTP receiver with
retries, and the commit-after-delivery rule (with a stand-in consumer)."""

from __future__ import annotations

import threading
import time

import click
import pytest
from router_fakes import FakeBroker, FakeProducer, alert, encoded, wait_until

from processors.alert_router.cli import parse_receivers
from processors.alert_router.dedup import DedupWindow
from processors.alert_router.delivery import DeliveryError, Job, Receiver, ReceiverWorker, post_json
from processors.alert_router.payloads import ZERO_TIME, alertmanager_payload, slack_payload
from processors.alert_router.router import AlertRouter, OffsetTracker, RouterConfig
from processors.alert_router.testing import RecordingReceiver


# ------------------------------------------------------------------------------------------ payloads
def test_alertmanager_webhook_shape() -> None:
    body = alertmanager_payload(alert(), "webhook-1", "http://carnival")
    assert set(body) >= {"version", "groupKey", "status", "receiver", "groupLabels", "commonLabels",
                         "commonAnnotations", "externalURL", "alerts"}  # fmt: skip
    assert (body["version"], body["status"], body["receiver"]) == ("4", "firing", "webhook-1")
    assert body["groupKey"] == '{}:{fingerprint="abc123"}'
    (a,) = body["alerts"]
    assert a["status"] == "firing" and a["fingerprint"] == "abc123"
    assert a["labels"]["alertname"] == "PowerFailedTransfer" and a["labels"]["severity"] == "critical"
    assert a["labels"]["site_id"] == "dc-1" and a["annotations"]["summary"].startswith("dc-1: grid lost")
    assert a["startsAt"] == "2025-01-02T03:04:05.678Z" and a["endsAt"] == ZERO_TIME
    assert body["commonLabels"] == a["labels"]


def test_alertmanager_resolved_has_end_time() -> None:
    body = alertmanager_payload(alert(status="RESOLVED"), "r")
    assert body["status"] == "resolved" and body["alerts"][0]["endsAt"] == "2025-01-02T03:05:00.000Z"


def test_timestamps_as_epoch_millis_are_accepted() -> None:
    body = alertmanager_payload(alert(starts_at=1_735_787_045_678), "r")
    assert body["alerts"][0]["startsAt"] == "2025-01-02T03:04:05.678Z"


def test_slack_text_shape() -> None:
    text = slack_payload(alert())["text"]
    assert "FIRING:critical" in text and "FAILED_TRANSFER" in text and "dc-1" in text and "abc123" in text
    assert "ended" in slack_payload(alert(status="RESOLVED"))["text"]


# --------------------------------------------------------------------------------------------- dedup
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_dedup_by_fingerprint_and_status_within_window() -> None:
    clock = Clock()
    dedup = DedupWindow(window_s=300, clock=clock)
    assert dedup.should_send("a", "FIRING")
    assert not dedup.should_send("a", "FIRING")
    assert dedup.should_send("b", "FIRING")
    assert dedup.should_send("a", "RESOLVED")
    assert not dedup.should_send("a", "RESOLVED")
    assert dedup.should_send("a", "FIRING")  # fired again after resolving: new notification
    clock.now += 299
    assert not dedup.should_send("a", "FIRING")
    clock.now += 2
    assert dedup.should_send("a", "FIRING")  # window over: a reminder


def test_dedup_memory_is_bounded() -> None:
    clock = Clock()
    dedup = DedupWindow(window_s=300, max_entries=100, clock=clock)
    for i in range(1000):
        dedup.should_send(f"fp{i}", "FIRING")
    assert len(dedup) == 100
    clock.now += 301
    dedup.should_send("new", "FIRING")
    assert len(dedup) == 1  # expired entries pruned


# ------------------------------------------------------------------------------------------ delivery
def test_post_json_to_real_receiver_and_error_classes() -> None:
    with RecordingReceiver() as rx:
        post_json(rx.url, {"x": 1}, 2.0)
        assert rx.received == [{"x": 1}]
        rx.fail_with = 503
        with pytest.raises(DeliveryError) as err:
            post_json(rx.url, {"x": 2}, 2.0)
        assert err.value.retryable
        rx.fail_with = 404
        with pytest.raises(DeliveryError) as err:
            post_json(rx.url, {"x": 3}, 2.0)
        assert not err.value.retryable
    with pytest.raises(DeliveryError) as err:
        post_json(rx.url, {"x": 4}, 0.5)  # server gone: connection refused
    assert err.value.retryable


def test_worker_retries_while_receiver_fails_then_delivers_once() -> None:
    done: list[Job] = []
    with RecordingReceiver() as rx:
        rx.fail_with = 500
        worker = ReceiverWorker(
            Receiver("r1", rx.url), done.append, backoff_initial_s=0.02, backoff_max_s=0.05
        )
        worker.start()
        worker.submit(Job(0, 7, alert()))
        deadline = time.monotonic() + 5
        while rx.attempts < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert done == [] and rx.received == []
        rx.fail_with = None
        received = rx.wait_for(1)
        time.sleep(0.1)
        worker.stop()
    assert len(received) == 1 and rx.received == received
    assert [j.offset for j in done] == [7]
    assert received[0]["alerts"][0]["fingerprint"] == "abc123"


def test_worker_gives_up_on_permanent_rejection_and_stop_leaves_jobs_undone() -> None:
    done: list[Job] = []
    with RecordingReceiver() as rx:
        rx.fail_with = 400
        worker = ReceiverWorker(Receiver("r1", rx.url, "slack"), done.append, backoff_initial_s=0.02)
        worker.start()
        worker.submit(Job(0, 1, alert()))
        deadline = time.monotonic() + 5
        while not done and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [j.offset for j in done] == [1]  # rejected for good: not retried forever
        rx.fail_with = 503
        worker.submit(Job(0, 2, alert()))
        time.sleep(0.1)
        worker.stop()
    assert [j.offset for j in done] == [1]  # offset 2 not done: it will be re-delivered after restart


def test_offset_tracker_commits_only_contiguous_completed_records() -> None:
    tracker = OffsetTracker()
    for off in (10, 11, 12):
        tracker.add(0, off, 2)
    tracker.add(1, 5, 2)
    tracker.done(0, 11, 2)
    assert tracker.ready() == {}
    tracker.done(0, 10)
    assert tracker.ready() == {}
    tracker.done(0, 10)
    assert tracker.ready() == {0: 12}
    tracker.done(0, 12, 2)
    tracker.done(1, 5, 2)
    assert tracker.ready() == {0: 13, 1: 6}
    assert tracker.in_flight == 0


def test_parse_receivers_from_options_and_env() -> None:
    rs = parse_receivers(("http://a/h",), ("https://hooks.slack/x",), "http://b/h, slack:https://c/s")
    assert [(r.name, r.kind, r.url) for r in rs] == [
        ("webhook-1", "alertmanager", "http://a/h"), ("slack-1", "slack", "https://hooks.slack/x"),
        ("webhook-2", "alertmanager", "http://b/h"), ("slack-2", "slack", "https://c/s")]  # fmt: skip
    with pytest.raises(click.BadParameter):
        parse_receivers(("ftp://x",), ())


# ------------------------------------------------------------------------ router with a fake broker
def test_router_commits_after_every_receiver_and_dedups() -> None:
    from core.settings import Settings

    broker = FakeBroker(encoded(alert("f1"), alert("f1"), alert("f2"), alert("f1", "RESOLVED")))
    group = RouterConfig().group_id
    with RecordingReceiver() as healthy, RecordingReceiver() as flaky:
        flaky.fail_with = 500
        router = AlertRouter(Settings(), [Receiver("ok", healthy.url), Receiver("flaky", flaky.url, "slack")],
                             RouterConfig(backoff_initial_s=0.02, backoff_max_s=0.05, commit_interval_s=0.01),
                             consumer_factory=broker.consumer, producer=FakeProducer())  # fmt: skip
        stop = threading.Event()
        thread = threading.Thread(target=router.run, args=(stop,))
        thread.start()
        got = healthy.wait_for(3)
        time.sleep(0.2)
        # The healthy receiver has everything; nothing past the duplicate is committed while flaky is down.
        assert [(b["alerts"][0]["fingerprint"], b["status"]) for b in got] == [
            ("f1", "firing"), ("f2", "firing"), ("f1", "resolved")]  # fmt: skip
        assert broker.group_offsets(group).get(0, 0) <= 0
        flaky.fail_with = None
        flaky.wait_for(3)
        assert wait_until(lambda: broker.group_offsets(group).get(0) == 4)
        stop.set()
        thread.join(10)
    assert broker.group_offsets(group) == {0: 4} and all(c.closed for c in broker.consumers.values())
    assert len(flaky.received) == 3 and len(healthy.received) == 3
    assert router.stats["deduplicated"] == 1
