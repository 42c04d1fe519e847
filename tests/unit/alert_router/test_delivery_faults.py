"""A receiver worker never dies: every way a real receiver fails (refused, 500, malformed status line,
body cut short, hang past the timeout, closed without an answer, reset), and exceptions nobody foresaw,
are retried with backoff, counted per receiver and error class, and the alert is delivered once the
receiver recovers. A 4xx is handed over once with its status and body."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from prometheus_client import REGISTRY
from router_fakes import alert, wait_until
from structlog.testing import capture_logs

from processors.alert_router.delivery import Backoff, DeliveryError, Job, Receiver, ReceiverWorker, post_json
from processors.alert_router.testing import (
    CLOSE_MID_BODY,
    EMPTY,
    ERROR_500,
    FAULT_MODES,
    HANG,
    MALFORMED,
    OK,
    REFUSE,
    REJECT_400,
    RESET,
    FaultyReceiver,
)

TRANSIENT = {REFUSE: "ConnectionRefusedError", ERROR_500: "http_500", MALFORMED: "BadStatusLine",
             CLOSE_MID_BODY: "IncompleteRead", HANG: "TimeoutError", EMPTY: "RemoteDisconnected",
             RESET: "ConnectionResetError"}  # fmt: skip


def errors(receiver: str, error: str) -> float:
    labels = {"receiver": receiver, "error": error}
    value = REGISTRY.get_sample_value("carnival_alert_delivery_errors_total", labels)
    return value or 0.0


@pytest.mark.parametrize("mode", sorted(TRANSIENT))
def test_post_json_turns_every_transient_fault_into_a_retryable_delivery_error(mode: str) -> None:
    with FaultyReceiver(mode) as rx:
        with pytest.raises(DeliveryError) as err:
            post_json(rx.url, {"x": 1}, 0.3)
        assert err.value.retryable and err.value.error_class == TRANSIENT[mode], (mode, err.value)
        assert rx.received == []


def test_post_json_rejection_carries_status_and_bounded_body() -> None:
    with FaultyReceiver(REJECT_400) as rx, pytest.raises(DeliveryError) as err:
        post_json(rx.url, {"x": 1}, 1.0, body_max_bytes=10)
    assert not err.value.retryable and err.value.status == 400
    assert err.value.body == FaultyReceiver.REJECT_BODY[:10]


def test_worker_survives_every_fault_then_delivers_once_and_counts_each_error_class() -> None:
    """Before: BadStatusLine/IncompleteRead escaped the worker's except clause and killed its thread."""
    name = "faults-all"
    before = {m: errors(name, c) for m, c in TRANSIENT.items()}
    done: list[Job] = []
    with FaultyReceiver(REFUSE) as rx:
        worker = ReceiverWorker(Receiver(name, rx.url), done.append, timeout_s=0.3, backoff_initial_s=0.01,
                                backoff_max_s=0.02)  # fmt: skip
        worker.start()
        worker.submit(Job(0, 1, alert("f1")))
        for mode in (REFUSE, ERROR_500, MALFORMED, CLOSE_MID_BODY, HANG, EMPTY, RESET):
            rx.mode = mode
            assert wait_until(lambda m=mode: errors(name, TRANSIENT[m]) >= before[m] + 2), mode
            assert done == [] and rx.received == []
        rx.mode = OK
        assert wait_until(lambda: len(done) == 1)
        worker.submit(Job(0, 2, alert("f2")))
        assert wait_until(lambda: len(done) == 2)
        worker.stop()
    assert [j.offset for j in done] == [1, 2]
    assert [b["alerts"][0]["fingerprint"] for b in rx.received] == ["f1", "f2"]  # each once


def test_an_ssl_error_is_retryable() -> None:
    """An https URL answered in plain text: the TLS handshake fails (ssl.SSLError)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]

        def answer_in_plain_text() -> None:
            conn, _ = server.accept()
            with conn:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

        thread = threading.Thread(target=answer_in_plain_text, daemon=True)
        thread.start()
        with pytest.raises(DeliveryError) as err:
            post_json(f"https://127.0.0.1:{port}/hook", {"x": 1}, 2.0)
        thread.join(2)
    assert err.value.retryable and err.value.error_class == "SSLError", err.value


def test_an_unexpected_exception_from_the_sender_is_retried_not_fatal() -> None:
    calls: list[int] = []

    def sender(url: str, body: dict, timeout_s: float) -> None:  # type: ignore[type-arg]
        calls.append(1)
        if len(calls) <= 3:
            raise [KeyError("x"), ValueError("y"), RuntimeError("z")][len(calls) - 1]

    done: list[Job] = []
    worker = ReceiverWorker(Receiver("odd-sender", "http://unused"), done.append, backoff_initial_s=0.01,
                            sender=sender)  # fmt: skip
    with capture_logs() as logs:
        worker.start()
        worker.submit(Job(0, 5, alert("f5")))
        assert wait_until(lambda: len(done) == 1)
        worker.stop()
    retries = [e for e in logs if e["event"] == "alert_delivery_retry"]
    assert [e["error_class"] for e in retries] == ["KeyError", "ValueError", "RuntimeError"]
    assert all(e["receiver"] == "odd-sender" and e["fingerprint"] == "f5" and e["retry_in_s"] >= 0
               for e in retries)  # fmt: skip
    assert len(calls) == 4
    assert errors("odd-sender", "KeyError") >= 1 and errors("odd-sender", "RuntimeError") >= 1


def test_an_error_outside_the_http_call_keeps_the_job_and_the_thread() -> None:
    """A failing callback (any bug after the POST) is retried with backoff; the thread stays alive."""
    done: list[Job] = []
    failures = [RuntimeError("callback bug")]

    def on_done(job: Job) -> None:
        if failures:
            raise failures.pop()
        done.append(job)

    worker = ReceiverWorker(Receiver("cb", "http://unused"), on_done, backoff_initial_s=0.01,
                            sender=lambda url, body, t: None)  # fmt: skip
    worker.start()
    worker.submit(Job(0, 9, alert()))
    assert wait_until(lambda: len(done) == 1)
    assert worker._thread.is_alive()
    worker.stop()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_worker_thread_is_started_again_with_its_job() -> None:
    gate = threading.Event()
    done: list[Job] = []

    def sender(url: str, body: dict, timeout_s: float) -> None:  # type: ignore[type-arg]
        if not gate.is_set():
            gate.set()
            raise SystemExit  # not an Exception: the one thing that gets past the worker's guard

    worker = ReceiverWorker(Receiver("dies", "http://unused"), done.append, backoff_initial_s=0.01,
                            sender=sender)  # fmt: skip
    worker.start()
    worker.submit(Job(0, 3, alert()))
    assert wait_until(lambda: gate.is_set() and not worker._thread.is_alive())
    assert worker.ensure_alive()
    assert wait_until(lambda: [j.offset for j in done] == [3])
    worker.stop()


def test_rejection_is_reported_once_with_status_and_body() -> None:
    rejected: list[tuple[Job, DeliveryError]] = []
    done: list[Job] = []
    with FaultyReceiver(REJECT_400) as rx:
        worker = ReceiverWorker(Receiver("rej", rx.url), done.append, backoff_initial_s=0.01,
                                on_rejected=lambda j, e: rejected.append((j, e)))  # fmt: skip
        worker.start()
        worker.submit(Job(0, 1, alert("f1")))
        worker.submit(Job(0, 2, alert("f2")))
        assert wait_until(lambda: len(rejected) == 2)
        time.sleep(0.1)
        worker.stop()
    assert rx.attempts == {REJECT_400: 2} and done == []  # one attempt per alert, never retried
    assert [(j.offset, e.status, e.body) for j, e in rejected] == [
        (1, 400, FaultyReceiver.REJECT_BODY), (2, 400, FaultyReceiver.REJECT_BODY)]  # fmt: skip


def test_backoff_grows_to_its_bound_and_resets() -> None:
    backoff = Backoff(0.1, 1.0, multiplier=3.0)
    delays = [backoff.next_delay() for _ in range(6)]
    bounds = [0.1, 0.3, 0.9, 1.0, 1.0, 1.0]
    assert all(b / 2 <= d <= b for d, b in zip(delays, bounds, strict=True)), delays
    backoff.reset()
    assert backoff.next_delay() <= 0.1


def test_fault_modes_are_all_exercised() -> None:
    assert set(FAULT_MODES) == set(TRANSIENT) | {OK, REJECT_400}
