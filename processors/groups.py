"""The consumer group of every processor and the topics it reads, declared once: the main job waits
on them, the dashboard and the status line show their lag.

The faust processors' groups are their app ids (``APP_PREFIX-<name>``, ``processors.runtime.app``);
the scheduler's telemetry router and the alert router are plain consumers with groups of their own
(the alert router's is a setting, ``CARNIVAL_ALERT_GROUP_ID``; this is its default).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.sections import RouterSettings
from streams.topics import (
    ALERTS_TOPIC,
    LIFECYCLE_TOPIC,
    POWER_EVENTS_TOPIC,
    REQUESTS_TOPIC,
    SITE_CAPACITY_TOPIC,
    SITE_POWER_STATE_TOPIC,
    STATUS_TOPIC,
    TELEMETRY_TOPIC,
)

__all__ = ["ALERT_ROUTER", "APP_PREFIX", "GROUPS", "POWER", "SCHEDULER", "TELEMETRY_ROUTER", "ConsumerGroup"]

APP_PREFIX = "carnival"


@dataclass(frozen=True)
class ConsumerGroup:
    name: str  # how operators call it (status line, dashboard)
    group: str  # the Kafka consumer group id
    topics: tuple[str, ...]  # what it reads


# The telemetry router also forwards the sites' capacity and power state to the scheduler's pools.
TELEMETRY_ROUTER = ConsumerGroup(
    "scheduler-router",
    f"{APP_PREFIX}-scheduler-router",
    (TELEMETRY_TOPIC, SITE_CAPACITY_TOPIC, SITE_POWER_STATE_TOPIC),
)
SCHEDULER = ConsumerGroup(
    "scheduler", f"{APP_PREFIX}-scheduler", (REQUESTS_TOPIC, STATUS_TOPIC, LIFECYCLE_TOPIC)
)
POWER = ConsumerGroup("power", f"{APP_PREFIX}-power", (POWER_EVENTS_TOPIC,))
_ALERT_ROUTER_GROUP = str(RouterSettings.model_fields["group_id"].default)
ALERT_ROUTER = ConsumerGroup("alert-router", _ALERT_ROUTER_GROUP, (ALERTS_TOPIC,))

GROUPS: dict[str, ConsumerGroup] = {g.name: g for g in (TELEMETRY_ROUTER, SCHEDULER, POWER, ALERT_ROUTER)}
