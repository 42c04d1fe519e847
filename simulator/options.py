"""Parsing of the simulator's command-line values, shared by the command and the runner."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import click

from streams.topics import INPUT_TOPICS

__all__ = ["INPUT_TOPICS", "parse_duration_ms", "parse_start_ms"]

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}


def parse_duration_ms(text: str) -> int:
    """``90s``, ``15m``, ``6h``, ``7d``, ``1w``, ``1h30m`` or plain seconds -> milliseconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return int(float(text) * 1000)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise click.BadParameter(f"{text!r}: use e.g. 90s, 15m, 6h, 7d or 1h30m")
    return int(sum(float(n) * _UNITS_MS[u] for n, u in parts))


def parse_start_ms(text: str) -> int:
    if text == "now":
        return int(datetime.now(UTC).timestamp() * 1000)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected ISO-8601 (2025-01-06T00:00:00Z) or 'now'") from None
    return int((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp() * 1000)
