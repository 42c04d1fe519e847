"""Receivers and their delivery workers: one bounded queue and one thread per receiver.

A worker retries a notification with exponential backoff and jitter for as long as its receiver fails
for a reason that can pass: a connection refused or reset, a timeout, a malformed or truncated answer,
an SSL error, HTTP 408/425/429/5xx, or any exception nobody foresaw. Every failed attempt is counted
per receiver and error class (``carnival_alert_delivery_errors_total``) and logged. A permanent answer
(any other non-2xx status, e.g. 400 or 404: retrying the same body cannot succeed) is handed to
``on_rejected`` once, with the status and the first bytes of the body, and the worker moves on. The
thread itself never dies: an error outside the HTTP call is logged and the same job is tried again.
"""

from __future__ import annotations

import http.client
import json
import queue
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from prometheus_client import Counter, Gauge

from processors.alert_router.payloads import alertmanager_payload, slack_payload

__all__ = ["Backoff", "DeliveryError", "Job", "Receiver", "ReceiverWorker", "post_json"]

log = structlog.get_logger(__name__)

DELIVERED = Counter("carnival_alert_delivered_total", "Notifications a receiver accepted", ["receiver"])
RETRIED = Counter(
    "carnival_alert_retried_total", "Failed delivery attempts that will be retried", ["receiver"]
)
DELIVERY_ERRORS = Counter(
    "carnival_alert_delivery_errors_total",
    "Failed delivery attempts by receiver and error class (exception name, or http_<status>)",
    ["receiver", "error"],
)
REJECTED = Counter("carnival_alert_rejected_total", "Notifications a receiver rejected for good (4xx)",
                   ["receiver"])  # fmt: skip
QUEUED = Gauge("carnival_alert_queue_depth", "Notifications waiting for a receiver", ["receiver"])
WORKER_RESTARTS = Counter(
    "carnival_alert_worker_restarts_total", "Receiver threads found dead and started again", ["receiver"]
)

ReceiverKind = Literal["alertmanager", "slack"]
TRANSIENT_STATUSES = frozenset({408, 425, 429})  # and every 5xx
RESPONSE_MAX_BYTES = 64 * 1024  # read of a 2xx answer; a receiver that streams more is not waited for


@dataclass(frozen=True, slots=True)
class Receiver:
    name: str
    url: str
    kind: ReceiverKind = "alertmanager"

    def payload(self, alert: dict[str, Any], external_url: str = "") -> dict[str, Any]:
        if self.kind == "slack":
            return slack_payload(alert)
        return alertmanager_payload(alert, self.name, external_url)


@dataclass(frozen=True, slots=True)
class Job:
    """One alert to deliver; ``partition``/``offset`` say which Kafka record it completes, ``value`` and
    ``key`` are that record's bytes (for a dead letter if the receiver rejects it)."""

    partition: int
    offset: int
    alert: dict[str, Any]
    value: bytes | None = field(default=None, repr=False)
    key: bytes | None = field(default=None, repr=False)
    body: dict[str, Any] | None = field(default=None, repr=False)  # the webhook body, if built already


class DeliveryError(Exception):
    """A failed attempt. ``error_class`` is a bounded label (an exception name or ``http_<status>``)."""

    def __init__(self, message: str, retryable: bool, error_class: str = "error", status: int | None = None,
                 body: bytes = b"") -> None:  # fmt: skip
        super().__init__(message)
        self.retryable = retryable
        self.error_class = error_class
        self.status = status
        self.body = body


def _error_class(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)  # URLError wraps the socket error that caused it
    return type(reason if isinstance(reason, BaseException) else exc).__name__


def post_json(url: str, body: dict[str, Any], timeout_s: float, body_max_bytes: int = 2048) -> None:
    """POST ``body`` as JSON. Returns on a 2xx answer; raises DeliveryError otherwise, whatever went wrong
    (the HTTP client raises more than OSError: BadStatusLine, IncompleteRead, ...). A non-transient status
    carries the first ``body_max_bytes`` of the answer's body."""
    data = json.dumps(body, default=str).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "carnival-alert-router/1"})  # fmt: skip
    deadline = time.monotonic() + timeout_s
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - operator's URL
            read = 0
            while read < RESPONSE_MAX_BYTES:
                chunk = response.read(8192)
                if not chunk:  # read(n) returns short at EOF instead of raising: check the length
                    if getattr(response, "length", None):
                        raise http.client.IncompleteRead(b"", response.length)
                    break
                read += len(chunk)
                if time.monotonic() > deadline:  # a receiver trickling its answer forever
                    raise TimeoutError(f"answer not complete within {timeout_s:g} s")
    except urllib.error.HTTPError as exc:
        status = exc.code
        retryable = status in TRANSIENT_STATUSES or status >= 500
        text = b""
        if not retryable:
            try:
                text = exc.read(body_max_bytes)
            except Exception:  # noqa: BLE001 - the body is a courtesy; the status decides
                text = b""
        message = f"HTTP {status} {exc.reason}"
        raise DeliveryError(message, retryable, f"http_{status}", status, text) from None
    except Exception as exc:  # noqa: BLE001 - any other failure is the receiver's or the network's
        raise DeliveryError(f"{type(exc).__name__}: {exc}", True, _error_class(exc)) from None


Sender = Callable[[str, dict[str, Any], float], None]


class Backoff:
    """Exponential backoff with jitter: ``initial``, times ``multiplier`` per failure, never above
    ``maximum``; each wait is drawn from [d/2, d] so many routers do not retry in step."""

    def __init__(self, initial_s: float, maximum_s: float, multiplier: float = 2.0) -> None:
        self.initial_s, self.maximum_s, self.multiplier = initial_s, max(maximum_s, initial_s), multiplier
        self._next = initial_s

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * self.multiplier, self.maximum_s)
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self._next = self.initial_s


class ReceiverWorker:
    """Delivers jobs to one receiver in order, retrying until each is finished or ``stop()`` is called.

    ``on_done(job)`` is called once a job was delivered; ``on_rejected(job, error)`` once the receiver
    rejected it for good (the caller dead-letters it and then counts it done). Jobs left when stopped are
    reported neither way, so their offsets are not committed.
    """

    def __init__(self, receiver: Receiver, on_done: Callable[[Job], None], *, timeout_s: float = 5.0,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0, backoff_multiplier: float = 2.0,
                 external_url: str = "", sender: Sender = post_json,
                 on_rejected: Callable[[Job, DeliveryError], None] | None = None) -> None:  # fmt: skip
        self.receiver = receiver
        self._on_done = on_done
        self._on_rejected = on_rejected or (lambda job, exc: on_done(job))
        self.timeout_s = timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.backoff_multiplier = backoff_multiplier
        self.external_url = external_url
        self._send = sender
        self._queue: queue.Queue[Job] = queue.Queue()
        self._stop = threading.Event()
        self._current: Job | None = None  # taken from the queue, not finished: kept across a restart
        self._thread = self._new_thread()
        self.delivered = 0
        self.rejected = 0
        self.attempts = 0
        self.errors = 0

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(target=self._run, name=f"alert-receiver-{self.receiver.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def ensure_alive(self) -> bool:
        """Start the thread again if it died (nothing should kill it; this is the last line). True if so."""
        if self._stop.is_set() or self._thread.is_alive() or self._thread.ident is None:
            return False
        WORKER_RESTARTS.labels(receiver=self.receiver.name).inc()
        log.error("alert_worker_restarted", receiver=self.receiver.name)
        self._thread = self._new_thread()
        self._thread.start()
        return True

    def submit(self, job: Job) -> None:
        self._queue.put(job)
        QUEUED.labels(receiver=self.receiver.name).inc()

    @property
    def backlog(self) -> int:
        return self._queue.qsize() + (self._current is not None)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        backoff = Backoff(self.backoff_initial_s, self.backoff_max_s, self.backoff_multiplier)
        while not self._stop.is_set():
            if self._current is None:
                try:
                    self._current = self._queue.get(timeout=0.1)
                except queue.Empty:
                    continue
                QUEUED.labels(receiver=self.receiver.name).dec()
            try:
                self._finish(self._current)
                backoff.reset()
            except Exception as exc:  # noqa: BLE001 - the thread must outlive any bug below it
                self._count_error(type(exc).__name__)
                log.exception("alert_worker_error", receiver=self.receiver.name, error=str(exc))
                self._stop.wait(backoff.next_delay())

    def _finish(self, job: Job) -> None:
        """Deliver ``job`` (retrying) and report it; a stop leaves it unreported."""
        outcome = self._deliver(job)
        if outcome is None:
            return
        if isinstance(outcome, DeliveryError):
            self._on_rejected(job, outcome)
        else:
            self._on_done(job)
        self._current = None

    def _count_error(self, error_class: str) -> None:
        self.errors += 1
        DELIVERY_ERRORS.labels(receiver=self.receiver.name, error=error_class).inc()

    def _deliver(self, job: Job) -> bool | DeliveryError | None:
        """True once delivered, the DeliveryError if rejected for good, None if stopped before either."""
        name = self.receiver.name
        fingerprint = job.alert.get("fingerprint")
        body = job.body if job.body is not None else self.receiver.payload(job.alert, self.external_url)
        backoff = Backoff(self.backoff_initial_s, self.backoff_max_s, self.backoff_multiplier)
        while not self._stop.is_set():
            self.attempts += 1
            try:
                self._send(self.receiver.url, body, self.timeout_s)
            except Exception as exc:  # noqa: BLE001 - a sender that raises anything is retried, not fatal
                error = exc if isinstance(exc, DeliveryError) else DeliveryError(
                    f"{type(exc).__name__}: {exc}", True, type(exc).__name__)  # fmt: skip
                self._count_error(error.error_class)
                if not error.retryable:
                    self.rejected += 1
                    REJECTED.labels(receiver=name).inc()
                    log.error("alert_rejected", receiver=name, fingerprint=fingerprint, status=error.status,
                              error=str(error), body=error.body[:200].decode(errors="replace"))  # fmt: skip
                    return error
                delay = backoff.next_delay()
                RETRIED.labels(receiver=name).inc()
                log.warning("alert_delivery_retry", receiver=name, fingerprint=fingerprint,
                            attempt=self.attempts, error_class=error.error_class, error=str(error),
                            retry_in_s=round(delay, 2))  # fmt: skip
                self._stop.wait(delay)
                continue
            self.delivered += 1
            DELIVERED.labels(receiver=name).inc()
            log.info(
                "alert_delivered", receiver=name, fingerprint=fingerprint, status=job.alert.get("status")
            )
            return True
        return None
