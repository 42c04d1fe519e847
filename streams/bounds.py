"""Documented maximum lengths of the input topics' strings, checked where a processor decodes a record.

A record with a longer string (a 900 KB tenant, a task id made of a whole document) is refused by the
scheduler as ``OVERSIZED`` with the field and its length, before it can be kept in its state or a
changelog: state and memory per record stay bounded. The limits are generous for real values (a VIN
is 17 characters, ids are UUIDs or short slugs). The sink lands what it is given (an analyst table
holds what was sent; ClickHouse bounds nothing); ``carnival produce`` refuses over-long ``keys`` and
``error`` of ``emulator.actions.v1`` in its JSON validation.
"""

from __future__ import annotations

from typing import Any

from streams.topics import ACTIONS_TOPIC, REQUESTS_TOPIC, SITE_CAPACITY_TOPIC, STATUS_TOPIC, TELEMETRY_TOPIC

ID_MAX = 256  # ids, names, regions
TEXT_MAX = 1000  # free text: an error message, a device's detail

STRING_LIMITS: dict[str, dict[str, int]] = {
    TELEMETRY_TOPIC: {"vin": ID_MAX, "region": ID_MAX, "software_version": ID_MAX},
    REQUESTS_TOPIC: {"task_id": ID_MAX, "tenant": ID_MAX, "kind": ID_MAX, "region": ID_MAX},
    STATUS_TOPIC: {"task_id": ID_MAX, "assignment_id": ID_MAX, "vin": ID_MAX, "error": TEXT_MAX},
    SITE_CAPACITY_TOPIC: {"site_id": ID_MAX, "region": ID_MAX},
    ACTIONS_TOPIC: {"session_id": ID_MAX, "task_id": ID_MAX, "vin": ID_MAX, "keys": 64, "error": TEXT_MAX},
}
# power.events.v1 is screened by the power processor itself: site_id and device_id at most 256
# characters (refused), detail cut to 500 (processors/power, docs/power.md).


def oversized_error(topic: str, record: dict[str, Any]) -> str | None:
    """Why ``record`` of ``topic`` is refused for a string over its limit, or None."""
    for name, limit in STRING_LIMITS.get(topic, {}).items():
        value = record.get(name)
        if isinstance(value, str) and len(value) > limit:
            return f"{name} is {len(value)} characters; at most {limit} are allowed"
    return None
