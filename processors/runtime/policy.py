"""The one error policy of every Carnival processor.

* **A record whose handling raises** is the processor's own business, inside its batch: that record
  goes to ``deadletter.v1`` (kind PROCESSING, the exception, its source topic/partition/offset), its
  half-applied effects are undone, and the rest of the batch goes on (``processing_error``).
* **A batch that raises outside per-record handling** (encoding an output, a bug in the batch code):
  nothing of it is acked. :class:`BatchRunner` undoes what it applied (``rewind``), waits (backoff) and
  runs it again, ``attempts`` times; then it runs the batch one record at a time, each with the same
  retries, so the records that are fine go through and the one that fails the same way every time is
  **quarantined**: dead-lettered (kind QUARANTINED, with the error) and acked like any other, so the
  partition moves on. No crash loop, and nothing is lost silently.
* **Kafka refusing outputs or state past the producer's own retries** (``CheckpointFailed``) is not a
  record's fault and is never quarantined: it propagates, and the worker exits for its supervisor to
  restart it with backoff; the unacked events are replayed then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import structlog

from processors.runtime.checkpoint import CheckpointFailed

log = structlog.get_logger(__name__)

E = TypeVar("E")

PROCESSING = "PROCESSING"
QUARANTINED = "QUARANTINED"

__all__ = ["PROCESSING", "QUARANTINED", "BatchRunner", "RetryPolicy", "processing_error"]


def processing_error(exc: BaseException) -> str:
    """The dead-letter reason of a record whose handling raised."""
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    """Runs of a failing batch (and then of each of its records) before the next step."""
    backoff_s: tuple[float, ...] = (0.05, 0.25, 1.0)
    """Wait before the n-th retry (the last value repeats)."""

    def backoff(self, retry: int) -> float:
        return self.backoff_s[min(retry, len(self.backoff_s) - 1)] if self.backoff_s else 0.0


class BatchRunner(Generic[E]):
    """Runs ``process(events)`` under the policy of the module docstring.

    ``process`` applies a batch (and records it for the checkpoint); ``rewind(events)`` undoes what a
    failed ``process`` call applied; ``quarantine(event, reason)`` dead-letters one record and records
    it for the checkpoint as handled. All three come from the processor."""

    def __init__(
        self,
        process: Callable[[list[E]], Awaitable[None]],
        rewind: Callable[[list[E]], Awaitable[None]],
        quarantine: Callable[[E, str], Awaitable[None]],
        policy: RetryPolicy = RetryPolicy(),
        *,
        processor: str = "",
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self._process, self._rewind, self._quarantine = process, rewind, quarantine
        self.policy = policy
        self.processor = processor
        self._sleep = sleep
        self._on_retry = on_retry

    async def run(self, events: Sequence[E]) -> None:
        batch = list(events)
        failure = await self._attempt(batch, "batch")
        if failure is None:
            return
        if len(batch) == 1:
            await self._quarantine(batch[0], failure)
            return
        log.warning("batch_isolating_records", processor=self.processor, events=len(batch), error=failure)
        for event in batch:
            failure = await self._attempt([event], "record")
            if failure is not None:
                log.error("record_quarantined", processor=self.processor, error=failure)
                await self._quarantine(event, failure)

    async def _attempt(self, events: list[E], what: str) -> str | None:
        """Run ``events`` up to ``attempts`` times; None once it went through, else the last error."""
        error = ""
        for attempt in range(self.policy.attempts):
            if attempt:
                if self._on_retry is not None:
                    self._on_retry(what)
                await self._sleep(self.policy.backoff(attempt - 1))
            try:
                await self._process(events)
                return None
            except (asyncio.CancelledError, CheckpointFailed):
                raise
            except Exception as exc:
                error = processing_error(exc)
                last = attempt + 1 == self.policy.attempts  # the traceback once, not per retry
                log.warning(
                    "batch_failed", processor=self.processor, scope=what, events=len(events),
                    attempt=attempt + 1, error=error, exc_info=exc if last else None,
                )  # fmt: skip
                await self._rewind(events)
        return f"failed {self.policy.attempts} times: {error}"
