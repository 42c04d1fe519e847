"""Status reports the task router holds until their assignment is known, and when they expire.

A status can reach the router before the lifecycle record that names its assignment (or for a task the
router never hears of again: a forged id, a task of another deployment). It is held in the task's route
(table ``routes``) as ``[partition, offset, assignment_id, value (base64), held_at]``, at most
``hold_max`` per task. ``held_at`` is the routing clock of the source partition when the status came
(event time, never the wall clock). A held status that no lifecycle record releases within
``held_ttl_ms`` of that clock expires: it goes to ``deadletter.v1`` (EXPIRED, with the reason) and
leaves the route, and a route left with nothing in it is deleted.

``HeldIndex`` finds the routes to look at without scanning the table: per source partition a heap of
``(earliest held_at, key)``, rebuilt from the table's keys of a partition the first time it is needed
(after a restart or a rebalance). An entry may be stale (its statuses were released since): popping it
then finds nothing to expire, which costs one table read.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Any

import orjson

__all__ = ["HeldIndex", "expired_items", "held_at", "is_empty_route"]


def held_at(item: list[Any], default: int) -> int:
    """When ``item`` was held; items written before ``held_at`` existed count from ``default``."""
    return int(item[4]) if len(item) > 4 and item[4] is not None else default


def expired_items(
    route: dict[str, Any], cutoff: int, indexed_at: int
) -> tuple[list[list[Any]], list[list[Any]]]:
    """``route``'s held items split into (held before ``cutoff``, the others). An item with no
    ``held_at`` (written before it existed) counts from ``indexed_at``, when the index first saw it."""
    gone: list[list[Any]] = []
    kept: list[list[Any]] = []
    for item in route["held"]:
        if len(item) < 5:
            item[4:] = [indexed_at]
        (gone if held_at(item, indexed_at) < cutoff else kept).append(item)
    return gone, kept


def is_empty_route(route: dict[str, Any]) -> bool:
    """A route that says nothing a missing one would not (no pool, no attempt, nothing held)."""
    return route["pool"] is None and not route["attempt"] and not route["done"] and not route["held"]


class HeldIndex:
    """Per source partition, a heap of ``(earliest held_at, route key)`` of the routes holding statuses."""

    def __init__(self) -> None:
        self._heaps: dict[int, list[tuple[int, bytes]]] = {}

    def known(self, partition: int) -> bool:
        return partition in self._heaps

    def rebuild(self, partition: int, items: Iterable[tuple[bytes, bytes]], now: int) -> None:
        heap: list[tuple[int, bytes]] = []
        for key, raw in items:
            held = orjson.loads(raw).get("held") if raw else None
            if held:
                heap.append((min(held_at(item, now) for item in held), key))
        heapq.heapify(heap)
        self._heaps[partition] = heap

    def add(self, partition: int, at: int, key: bytes) -> None:
        """Index a route; before the partition's index is built, ``rebuild`` will read it from the table."""
        heap = self._heaps.get(partition)
        if heap is not None:
            heapq.heappush(heap, (at, key))

    def due(self, partition: int, cutoff: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` ``(indexed at, key)`` whose earliest held status is older than ``cutoff``
        (removed from the index: the caller re-adds what it keeps)."""
        heap = self._heaps.get(partition) or []
        due: list[tuple[int, bytes]] = []
        while heap and len(due) < limit and heap[0][0] < cutoff:
            due.append(heapq.heappop(heap))
        return due

    def clear(self) -> None:
        self._heaps.clear()

    def size(self) -> int:
        return sum(len(h) for h in self._heaps.values())
