"""Timestamps: the scheduler works in integer epoch milliseconds (UTC)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

__all__ = ["to_ms", "opt_ms"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_ms(value: Any) -> int:
    """Epoch milliseconds from an int/float (already ms) or a datetime (naive = UTC), as Avro decodes."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        delta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"not a timestamp: {value!r}")
    return int(value)


def opt_ms(value: Any) -> int | None:
    return None if value is None else to_ms(value)
