"""Which table of the analyst contract each topic lands in (columns = the topic's Avro fields +
``_topic``/``_partition``/``_offset``), next to the migrations that create them (``sinks/migrations``;
``tests/unit/sinks/test_migrations.py`` checks that every table here is created there)."""

from __future__ import annotations

from streams.topics import (
    ACTIONS_TOPIC,
    ALERTS_TOPIC,
    ASSIGNMENTS_TOPIC,
    DEADLETTER_TOPIC,
    INCIDENTS_TOPIC,
    LIFECYCLE_TOPIC,
    NODES_TOPIC,
    POWER_EVENTS_TOPIC,
    REQUESTS_TOPIC,
    SITE_CAPACITY_TOPIC,
    SITE_POWER_STATE_TOPIC,
    SPILLOVER_TOPIC,
    STATUS_TOPIC,
    TELEMETRY_TOPIC,
)

TABLE_FOR_TOPIC: dict[str, str] = {
    TELEMETRY_TOPIC: "telemetry",
    NODES_TOPIC: "nodes",
    LIFECYCLE_TOPIC: "task_events",
    ASSIGNMENTS_TOPIC: "assignments",
    ACTIONS_TOPIC: "actions",
    POWER_EVENTS_TOPIC: "power_events",
    INCIDENTS_TOPIC: "incidents",
    ALERTS_TOPIC: "alerts",
    DEADLETTER_TOPIC: "deadletter",
    REQUESTS_TOPIC: "task_requests",
    STATUS_TOPIC: "task_status",
    SITE_CAPACITY_TOPIC: "site_capacity",
    SITE_POWER_STATE_TOPIC: "site_power_states",
    SPILLOVER_TOPIC: "spillover_episodes",
}
