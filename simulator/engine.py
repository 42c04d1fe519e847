"""The discrete-event core: a heap of callbacks ordered by simulated time (integer milliseconds).

Ties are broken by insertion order, so a run is fully deterministic.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

Callback = Callable[..., None]


class EventQueue:
    def __init__(self, start_ms: int) -> None:
        self.now = start_ms
        self._heap: list[tuple[int, int, Callback, tuple[Any, ...]]] = []
        self._counter = 0
        self.processed = 0

    def schedule(self, at_ms: int, fn: Callback, *args: Any) -> None:
        """Run ``fn(*args)`` at simulated time ``at_ms`` (never earlier than now)."""
        self._counter += 1
        heapq.heappush(self._heap, (at_ms if at_ms > self.now else self.now, self._counter, fn, args))

    def next_time(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def step(self) -> bool:
        """Run the earliest event; False when the queue is empty."""
        if not self._heap:
            return False
        at, _, fn, args = heapq.heappop(self._heap)
        self.now = at
        self.processed += 1
        fn(*args)
        return True

    def run_until(self, end_ms: int, max_events: int | None = None) -> int:
        """Run events with time < ``end_ms`` (at most ``max_events``); return how many ran."""
        heap = self._heap
        pop = heapq.heappop
        n = 0
        while heap and heap[0][0] < end_ms:
            if max_events is not None and n >= max_events:
                break
            at, _, fn, args = pop(heap)
            self.now = at
            fn(*args)
            n += 1
        self.processed += n
        if not (heap and heap[0][0] < end_ms) and (max_events is None or n < max_events):
            self.now = max(self.now, end_ms)
        return n

    def __len__(self) -> int:
        return len(self._heap)
