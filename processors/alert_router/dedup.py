"""Bounded deduplication of notifications by (fingerprint, status) within a time window."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["DedupWindow"]


class DedupWindow:
    """``should_send(fp, status)`` is False when the same fingerprint was last sent with the same status
    less than ``window_s`` ago. A status change always goes through (FIRING -> RESOLVED -> FIRING again),
    and a repeat after the window is sent again as a reminder. Memory is bounded by ``max_entries``
    (oldest forgotten first) and expired entries are pruned as new ones arrive."""

    def __init__(self, window_s: float = 300.0, max_entries: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.window_s = window_s
        self.max_entries = max_entries
        self._clock = clock
        self._last: OrderedDict[str, tuple[str, float]] = (
            OrderedDict()
        )  # fp -> (status, sent at), oldest first

    def __len__(self) -> int:
        return len(self._last)

    def should_send(self, fingerprint: str, status: str) -> bool:
        now = self._clock()
        last = self._last
        while last:
            oldest = next(iter(last.values()))
            if now - oldest[1] < self.window_s:
                break
            last.popitem(last=False)
        seen = last.get(fingerprint)
        if seen is not None and seen[0] == status and now - seen[1] < self.window_s:
            return False
        last[fingerprint] = (status, now)
        last.move_to_end(fingerprint)
        if len(last) > self.max_entries:
            last.popitem(last=False)
        return True
