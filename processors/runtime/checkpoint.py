"""The checkpoint protocol of every Carnival processor, written once.

A processor applies batches of input events to in-memory state and hands what they decide (outputs,
dead letters) to a producer without waiting. Every ``every_s`` seconds (or ``every_events`` events) a
checkpoint makes that durable, in this order:

1. **outputs acknowledged**: wait until Kafka has acknowledged every output handed over so far
   (normally long done);
2. **state written**: under the apply lock (no batch in between), take the state touched since the
   last checkpoint (``StateLink.prepare``), then write it once per key and send its changelog records
   (``StateLink.send``). A link may write in ``prepare`` (under the lock) or later in ``send`` with
   batches running in between, as long as what it writes for a key is that key's state as of
   ``prepare`` (copy-on-write: the power processor encodes a site before a batch changes it again);
3. **state acknowledged**: in the background, wait for Kafka's acks of those changelog records, and for
   the checkpoint in front of this one;
4. **inputs acked**: only then ack the checkpoint's input events, so that the framework commits their
   offsets (``InputLink.ack``; the power worker commits them itself).

A crash anywhere before 4 replays the unacked events into state restored from the changelog, which has
not seen them (outputs are deterministic: the same records again, deduplicated downstream by id). A
state written always holds only events whose outputs are in Kafka, and an event is acked only once its
outputs and a state holding it are. Nothing here imports faust: the links are small objects handed in,
so the protocol is tested directly (``tests/unit/runtime/test_checkpoint.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

E = TypeVar("E")  # an input event
E_contra = TypeVar("E_contra", contravariant=True)
K = TypeVar("K")  # a state key (site, partition, ...)
P = TypeVar("P")  # what StateLink.prepare returns

__all__ = ["CheckpointFailed", "Checkpointer", "InputLink", "OutputLink", "Pending", "StateLink"]


class OutputLink(Protocol):
    async def flush(self) -> None:
        """Return once Kafka has acknowledged every output handed over so far; raise if one failed."""


class StateLink(Protocol[K, E, P]):
    def prepare(self, dirty: dict[K, E]) -> P:
        """Take (or write) the state of every dirty key (the event is its last input: its partition);
        called under the apply lock, so no batch runs meanwhile. Returns what ``send`` needs."""

    async def send(self, prepared: P) -> Sequence[Awaitable[Any]]:
        """Write what ``prepare`` took, if it did not, as it was then, and send the changelog records;
        returns their delivery futures."""


class InputLink(Protocol[E_contra]):
    async def ack(self, events: Sequence[E_contra]) -> None:
        """Let the framework commit these events' offsets."""


class CheckpointFailed(RuntimeError):
    """Kafka refused an output or a changelog record past the producer's own retries: the events of that
    checkpoint (and every later one) must never be acked."""


@dataclass
class Pending(Generic[E, K]):
    """What was applied since the last checkpoint: its events (not acked), the keys it touched (state not
    written), the delivery futures of its outputs and how many records went out without a future."""

    events: list[E] = field(default_factory=list)
    dirty: dict[K, E] = field(default_factory=dict)
    outputs: list[asyncio.Future[Any]] = field(default_factory=list)
    untracked: int = 0
    flushed: int = 0  # untracked records known to be acknowledged (sent before the last flush)
    since: float = 0.0

    def clear(self) -> None:
        self.events, self.dirty, self.outputs, self.untracked, self.flushed = [], {}, [], 0, 0


class Checkpointer(Generic[E, K, P]):
    """Steps 1-4 of the module docstring. Batches run ``async with checkpointer.applying:`` and
    ``add`` what they did; ``checkpoint()`` runs when ``due()`` (from the agent, or a timer when no
    events come). At most ``max_unconfirmed`` checkpoints wait for their acks at once (backpressure)."""

    def __init__(
        self,
        outputs: OutputLink,
        state: StateLink[K, E, P],
        inputs: InputLink[E],
        *,
        every_s: float = 0.5,
        every_events: int = 20_000,
        max_unconfirmed: int = 4,
        clock: Callable[[], float] = time.monotonic,
        on_written: Callable[[int, float], None] | None = None,
        on_failed: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.outputs, self.state, self.inputs = outputs, state, inputs
        self.every_s, self.every_events, self.max_unconfirmed = every_s, every_events, max_unconfirmed
        self._clock = clock
        self._on_written = on_written
        self._on_failed = on_failed
        """Called when a checkpoint's acks fail in the background (the worker exits: see policy)."""
        self.pending: Pending[E, K] = Pending()
        self.applying = asyncio.Lock()
        """Held by every batch and tick that changes state, and by step 2."""
        self._one_at_a_time = asyncio.Lock()
        self._unconfirmed: deque[asyncio.Future[None]] = deque()
        self.failed: BaseException | None = None

    # -- what batches call ------------------------------------------------------------------------
    def add(
        self,
        events: Sequence[E],
        dirty: dict[K, E],
        outputs: Sequence[asyncio.Future[Any]] = (),
        untracked: int = 0,
    ) -> None:
        """Record an applied batch (call it while holding ``applying``)."""
        pending = self.pending
        if not pending.events and events:
            pending.since = self._clock()
        pending.events.extend(events)
        pending.dirty.update(dirty)
        pending.outputs.extend(outputs)
        pending.untracked += untracked

    def due(self) -> bool:
        p = self.pending
        return bool(p.events) and (
            len(p.events) >= self.every_events or self._clock() - p.since >= self.every_s
        )

    def reset(self) -> None:
        """Forget what is pending (partitions revoked: the next owner replays the unacked events)."""
        self.pending.clear()

    # -- the protocol -----------------------------------------------------------------------------
    async def checkpoint(self) -> None:
        if self.failed is not None:
            raise CheckpointFailed("an earlier checkpoint failed") from self.failed
        async with self._one_at_a_time:
            # Step 1: outputs acknowledged (mostly long done: wait outside the lock, batches go on).
            await self._outputs_durable()
            async with self.applying:
                if not self.pending.events:
                    return
                while not await self._outputs_durable():  # a batch slipped in while we waited
                    pass
                # Step 2: state written, once per dirty key.
                started = self._clock()
                prepared = self.state.prepare(self.pending.dirty)
                written = len(self.pending.dirty)
                events = self.pending.events
                self.pending.clear()
            changelog = await self.state.send(prepared)
            if self._on_written is not None:
                self._on_written(written, self._clock() - started)
            # Steps 3 and 4 in the background, in checkpoint order.
            while self._unconfirmed and self._unconfirmed[0].done():
                self._unconfirmed.popleft().result()
            if len(self._unconfirmed) >= self.max_unconfirmed:
                await self._unconfirmed.popleft()
            after = self._unconfirmed[-1] if self._unconfirmed else None
            self._unconfirmed.append(asyncio.ensure_future(self._confirm(events, changelog, after)))

    async def settle(self) -> None:
        """Checkpoint what is pending and wait until every checkpoint is acked (before a revoke/stop)."""
        await self.checkpoint()
        while self._unconfirmed:
            await self._unconfirmed.popleft()

    async def _outputs_durable(self) -> bool:
        """Step 1; False if more was handed over meanwhile (the caller checks again)."""
        pending = self.pending
        count, untracked = len(pending.outputs), pending.untracked
        if untracked > pending.flushed or any(not fut.done() for fut in pending.outputs):
            await self.outputs.flush()
            pending.flushed = untracked
        for fut in pending.outputs:
            if fut.done():
                exc = fut.exception()
                if exc is not None:
                    self.failed = exc
                    raise CheckpointFailed(f"an output was not delivered: {exc!r}") from exc
        return (
            len(pending.outputs) == count
            and pending.untracked == untracked
            and all(fut.done() for fut in pending.outputs)
        )

    async def _confirm(self, events: list[E], changelog: Sequence[Awaitable[Any]], after: Any) -> None:
        """Steps 3 and 4 for one checkpoint."""
        try:
            if after is not None:
                await after
            for fut in changelog:
                await fut
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failed = exc
            if self._on_failed is not None:
                self._on_failed(exc)
            raise CheckpointFailed(f"a state record was not delivered: {exc!r}") from exc
        await self.inputs.ack(events)
