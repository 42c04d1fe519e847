"""What a processor's loop does when the policy cannot absorb a failure, and its timers, with no faust.

Anything that escapes a processor's batch handling or checkpoint (Kafka refused records past the
producer's retries, or the loop itself broke) is a failure the error policy does not absorb:
``exit_on_failure`` exits the process like a SIGKILL, and the next start replays from the committed
offset, the case the checkpoint protocol already covers.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)

EXIT_CODE = 70

__all__ = ["EXIT_CODE", "exit_on_failure", "run_every"]


def exit_on_failure(processor: str) -> Callable[[BaseException], None]:
    def fatal(exc: BaseException) -> None:
        log.critical(f"{processor}_batch_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_CODE)

    return fatal


async def run_every(
    interval_s: float,
    body: Callable[[], Awaitable[None]],
    fatal: Callable[[BaseException], None],
    stopping: asyncio.Event,
) -> None:
    """``await body()`` every ``interval_s`` until ``stopping`` is set; an exception is ``fatal``."""
    while not stopping.is_set():
        try:
            await asyncio.wait_for(stopping.wait(), interval_s)
            return
        except TimeoutError:
            pass
        try:
            await body()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            fatal(exc)
