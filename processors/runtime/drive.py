"""What every batch processor's agent and checkpoint timer do, written once for the workers.

A processor is an object with ``inputs.stream`` (its agent's stream, to ack through), ``handle(events)``
(one batch under the error policy) and ``checkpointer``. Anything that escapes them is a failure the
policy does not absorb (Kafka refused records past the producer's retries, or the loop itself broke):
``exit_on_failure`` exits the process like a SIGKILL, and the next start replays from the committed
offset, the case the checkpoint protocol already covers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import faust
import structlog

from processors.runtime import faust_glue as glue
from processors.runtime.checkpoint import Checkpointer
from processors.runtime.loop import EXIT_CODE, exit_on_failure

log = structlog.get_logger(__name__)

__all__ = ["EXIT_CODE", "checkpoint_if_due", "checkpoint_while_stopping", "exit_on_failure", "run_batches"]


class BatchProcessor(Protocol):
    inputs: Any
    checkpointer: Checkpointer[Any, Any, Any]

    async def handle(self, events: Sequence[Any]) -> None: ...


async def run_batches(
    stream: faust.StreamT,
    processor: BatchProcessor,
    batch_max: int,
    within_s: float,
    fatal: Callable[[BaseException], None],
) -> None:
    """The agent body: batches faust does not ack, each handled by the processor."""
    processor.inputs.stream = stream
    async for events in glue.noack_batches(stream, batch_max, within_s):
        try:
            await processor.handle(events)
        except asyncio.CancelledError:
            raise  # stopping: pending events are not acked, the next start (or owner) replays them
        except Exception as exc:
            fatal(exc)


async def checkpoint_if_due(processor: BatchProcessor, fatal: Callable[[BaseException], None]) -> None:
    """The checkpoint timer body: checkpoints when no events come. Also while rebalancing: faust waits
    for every event taken to be acked before it gives partitions away."""
    if processor.checkpointer.due():
        try:
            await processor.checkpointer.checkpoint()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            fatal(exc)


def checkpoint_while_stopping(
    app: faust.App, processor: BatchProcessor, fatal: Callable[[BaseException], None]
) -> None:
    """Keep checkpointing from the moment the app starts stopping until its consumer has stopped.

    On SIGTERM faust ends the app's timers at once (the checkpoint timer among them), then waits for every
    event taken to be acked before its last commit (``Consumer.wait_empty``), with no time limit. Events
    are acked by checkpoints only, so without this a clean stop hung until the supervisor's SIGKILL (30 s),
    and the next start replayed what had been done. With it, a stop makes everything durable, commits and
    exits in about a checkpoint interval."""
    task: asyncio.Future[None] | None = None

    async def keep_checkpointing() -> None:
        checkpointer = processor.checkpointer
        while True:
            if checkpointer.pending.events:
                try:
                    await checkpointer.settle()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    fatal(exc)
            await asyncio.sleep(min(checkpointer.every_s, 0.1))

    async def start() -> None:
        nonlocal task
        task = asyncio.ensure_future(keep_checkpointing())

    async def stop() -> None:
        if task is not None:
            task.cancel()

    glue.on_stop_begins(app, start)
    glue.before_shutdown(app, stop)
