"""Receivers and their delivery workers: one queue and one thread per receiver.

A worker retries a notification with exponential backoff and jitter for as long as its receiver is down
(connection errors, timeouts, HTTP 408/429/5xx), so nothing is lost and a slow or dead receiver holds up
only its own queue. A permanent rejection (other HTTP 4xx: a bad URL or payload) is logged and counted,
and the notification is given up for that receiver, since retrying cannot succeed.
"""

from __future__ import annotations

import json
import queue
import random
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from prometheus_client import Counter, Gauge

from processors.alert_router.payloads import alertmanager_payload, slack_payload

__all__ = ["DeliveryError", "Job", "Receiver", "ReceiverWorker", "post_json"]

log = structlog.get_logger(__name__)

DELIVERED = Counter("carnival_alert_delivered_total", "Notifications a receiver accepted", ["receiver"])
RETRIED = Counter(
    "carnival_alert_retried_total", "Failed delivery attempts that will be retried", ["receiver"]
)
REJECTED = Counter("carnival_alert_rejected_total", "Notifications a receiver rejected for good (4xx)",
                   ["receiver"])  # fmt: skip
QUEUED = Gauge("carnival_alert_queue_depth", "Notifications waiting for a receiver", ["receiver"])

ReceiverKind = Literal["alertmanager", "slack"]


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
    """One alert to deliver; ``partition``/``offset`` say which Kafka record it completes."""

    partition: int
    offset: int
    alert: dict[str, Any]


class DeliveryError(Exception):
    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def post_json(url: str, body: dict[str, Any], timeout_s: float) -> None:
    """POST ``body`` as JSON; raises DeliveryError (retryable or not) unless the answer is 2xx."""
    data = json.dumps(body, default=str).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "carnival-alert-router/1"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - operator's URL
            response.read()
    except urllib.error.HTTPError as exc:
        retryable = exc.code in (408, 425, 429) or exc.code >= 500
        raise DeliveryError(f"HTTP {exc.code} {exc.reason}", retryable) from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise DeliveryError(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}", True) from None


Sender = Callable[[str, dict[str, Any], float], None]


class ReceiverWorker:
    """Delivers jobs to one receiver in order, retrying until it succeeds or ``stop()`` is called.

    ``on_done(job)`` is called once a job needs nothing more from this receiver (delivered, or rejected
    for good). Jobs left when stopped are not reported done, so their offsets are not committed.
    """

    def __init__(self, receiver: Receiver, on_done: Callable[[Job], None], *, timeout_s: float = 5.0,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0, external_url: str = "",
                 sender: Sender = post_json) -> None:  # fmt: skip
        self.receiver = receiver
        self._on_done = on_done
        self.timeout_s = timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.external_url = external_url
        self._send = sender
        self._queue: queue.Queue[Job] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"alert-receiver-{receiver.name}", daemon=True)
        self.delivered = 0
        self.attempts = 0
        self.down_since: float | None = None

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        self._queue.put(job)
        QUEUED.labels(receiver=self.receiver.name).inc()

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            QUEUED.labels(receiver=self.receiver.name).dec()
            if self._deliver(job):
                self._on_done(job)

    def _deliver(self, job: Job) -> bool:
        """True once the job is finished for this receiver; False if stopped before that."""
        name = self.receiver.name
        body = self.receiver.payload(job.alert, self.external_url)
        delay = self.backoff_initial_s
        while not self._stop.is_set():
            self.attempts += 1
            try:
                self._send(self.receiver.url, body, self.timeout_s)
            except DeliveryError as exc:
                if not exc.retryable:
                    REJECTED.labels(receiver=name).inc()
                    log.error(
                        "alert_rejected", receiver=name, fingerprint=job.alert["fingerprint"], error=str(exc)
                    )
                    return True
                RETRIED.labels(receiver=name).inc()
                log.warning("alert_delivery_retry", receiver=name, fingerprint=job.alert["fingerprint"],
                            error=str(exc), retry_in_s=round(delay, 2))  # fmt: skip
                # Full jitter: spread retries of many routers; never wait longer than backoff_max_s.
                self._stop.wait(random.uniform(delay / 2, delay))
                delay = min(delay * 2, self.backoff_max_s)
                continue
            self.delivered += 1
            DELIVERED.labels(receiver=name).inc()
            log.info("alert_delivered", receiver=name, fingerprint=job.alert["fingerprint"],
                     status=job.alert["status"])  # fmt: skip
            return True
        return False
