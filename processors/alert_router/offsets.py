"""Which records are fully handled, per partition, and the offset that is safe to commit."""

from __future__ import annotations

import threading
from collections import deque

__all__ = ["OffsetTracker"]


class OffsetTracker:
    """Records in flight per partition; thread-safe (delivery threads and dead-letter callbacks call
    ``done``). ``ready()`` gives the highest offset below which every record is done: a record that is
    slow to finish holds back the commit of those after it, never the other way round."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._order: dict[int, deque[int]] = {}  # partition -> offsets in consumption order
        self._remaining: dict[tuple[int, int], int] = {}  # (partition, offset) -> parts still to go

    def add(self, partition: int, offset: int, receivers: int = 1) -> None:
        with self._lock:
            self._order.setdefault(partition, deque()).append(offset)
            self._remaining[(partition, offset)] = receivers

    def done(self, partition: int, offset: int, receivers: int = 1) -> None:
        with self._lock:
            key = (partition, offset)
            if key in self._remaining:  # unknown: a partition revoked meanwhile
                self._remaining[key] -= receivers

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._remaining)

    def ready(self) -> dict[int, int]:
        """partition -> next offset to commit, for partitions that moved since the last call."""
        out = {}
        with self._lock:
            for partition, order in self._order.items():
                last = None
                while order and self._remaining.get((partition, order[0]), 0) <= 0:
                    last = order.popleft()
                    self._remaining.pop((partition, last), None)
                if last is not None:
                    out[partition] = last + 1
        return out

    def forget(self, partitions: list[int]) -> None:
        with self._lock:
            for partition in partitions:
                for offset in self._order.pop(partition, ()):
                    self._remaining.pop((partition, offset), None)
