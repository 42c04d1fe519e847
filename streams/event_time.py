"""Event-time guards: a record's own time is checked against its arrival before it may drive anything.

A record stamped far ahead of when the broker received it (a device clock in the year 3000, a unit
mistake) would move a processor's clock, a site's watermark or a lease, and every later record would
look late: such a record is rejected (``FUTURE_TIMESTAMP``). The check is relative to the record's
arrival (the Kafka timestamp), never to the wall clock, so a replay of a simulated past is judged the
same as live traffic.
"""

from __future__ import annotations

DEFAULT_MAX_FUTURE_SKEW_S = 300.0


def future_skew_error(event_ms: int, arrival_ms: int | None, max_future_skew_s: float) -> str | None:
    """Why ``event_ms`` cannot be used, or None when it is at most ``max_future_skew_s`` past arrival.

    ``arrival_ms`` is the record's Kafka timestamp; None or a non-positive value (no timestamp) passes:
    there is nothing to compare with, and the processor's own lateness rules still apply."""
    if arrival_ms is None or arrival_ms <= 0:
        return None
    ahead_ms = event_ms - arrival_ms
    if ahead_ms > max_future_skew_s * 1000:
        return (
            f"event time {event_ms} is {ahead_ms / 1000:.0f} s after the record's arrival {arrival_ms}; "
            f"the allowed skew is {max_future_skew_s:g} s"
        )
    return None
