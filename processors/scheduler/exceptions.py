"""Errors the scheduler raises for input it cannot use; the wiring sends such records to deadletter.v1."""

from __future__ import annotations

__all__ = ["InvalidRecord", "SchedulerError"]


class SchedulerError(Exception):
    """Base class of scheduler errors."""


class InvalidRecord(SchedulerError):
    """A record that can never be processed (missing key field, timestamp far in the future, ...)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
