"""Every panel of the dashboard: its SQL, once, for the web dashboard, the Grafana dashboard and the tests.

The SQL uses the macros of Grafana's ClickHouse plugin, so Grafana runs it as written; ``render`` expands
them for everyone else:

- ``$__timeFilter(col)``  ``col >= <from> AND col <= <to>``
- ``$__fromTime`` / ``$__toTime``  the window's ends, as ``DateTime``
- ``$__timeInterval(col)``  ``col`` rounded down to the bucket size
- ``$__interval_s``  the bucket size in seconds

Tables are named without a database: the client (or Grafana's datasource) names the default one.
Two clocks live in the data: *event* time (``ts``, ``starts_at``...: simulated time in a demo) and *wall*
time (``_ingested_at``, dead-letter ``ts``). Each panel says which one its window is on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sinks.tables import TABLE_FOR_TOPIC

Clock = Literal["event", "wall"]

# Nice bucket sizes; a window gets the smallest one that keeps it under MAX_BUCKETS.
INTERVALS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)
MAX_BUCKETS = 150

# Power-transfer thresholds people report against (DOMAIN.md): static transfer switch, the ITIC curve's
# full dropout, NFPA 110 Type 10 emergency power.
THRESHOLDS_MS: dict[str, float] = {"STS 4 ms": 4.0, "ITIC 20 ms": 20.0, "NFPA 110 10 s": 10_000.0}

# The tables the ingest panel reads: every table the sink writes (each row carries _topic, _ingested_at).
INGEST_TABLES = tuple(TABLE_FOR_TOPIC.values())

# A task is waiting for a node while its latest lifecycle state is one of these.
WAITING_STATES = "('QUEUED', 'REQUEUED')"


@dataclass(frozen=True)
class Chart:
    """How a panel's rows become a chart: ``x`` column, value columns, an optional series column."""

    kind: Literal["area", "line", "bar", "timeline", "scatter"]
    x: str
    y: tuple[str, ...]
    series: str | None = None
    y_title: str = ""
    y2: tuple[str, ...] = ()  # drawn as lines on a right-hand axis
    y2_title: str = ""
    log_y: bool = False
    x_title: str = ""  # empty: a time axis (UTC)


@dataclass(frozen=True)
class Panel:
    name: str
    title: str
    description: str
    chart: Chart
    clock: Clock = "event"
    optional: bool = False  # a table another component may not have created: missing means "no data"
    grafana: dict[str, Any] = field(default_factory=dict)  # Grafana-only overrides (panel type, format)


SQL: dict[str, str] = {
    "idle_capacity": """
SELECT bucket AS time, region, idle_nodes, reporting_nodes, idle_share
FROM idle_capacity_5m
WHERE $__timeFilter(bucket)
ORDER BY time, region""",
    "task_queue": """
WITH changes AS
(
    SELECT ts,
           toInt32(state IN {waiting}) - toInt32(lagInFrame(state) OVER w IN {waiting}) AS delta,
           toInt32(state = 'REQUESTED') AS requested
    FROM task_events
    WINDOW w AS (PARTITION BY task_id ORDER BY ts, _offset ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)
)
SELECT time, base + sum(d) OVER (ORDER BY time ROWS UNBOUNDED PRECEDING) AS queued, arrivals
FROM
(
    SELECT $__timeInterval(ts) AS time, sum(delta) AS d, sum(requested) AS arrivals
    FROM changes
    WHERE $__timeFilter(ts)
    GROUP BY time
) AS w
CROSS JOIN (SELECT sum(delta) AS base FROM changes WHERE ts < $__fromTime) AS b
ORDER BY time""".replace("{waiting}", WAITING_STATES),
    "task_wait": """
SELECT $__timeInterval(assumeNotNull(first_started_at)) AS time,
       round(quantile(0.5)(wait_s), 2) AS p50_s,
       round(quantile(0.9)(wait_s), 2) AS p90_s,
       round(quantile(0.99)(wait_s), 2) AS p99_s,
       count() AS started
FROM task_timings
WHERE first_started_at IS NOT NULL AND wait_s IS NOT NULL AND $__timeFilter(first_started_at)
GROUP BY time
ORDER BY time""",
    "preemptions": """
SELECT $__timeInterval(ts) AS time, ifNull(reason, 'UNKNOWN') AS cause, count() AS preemptions
FROM task_events
WHERE state = 'PREEMPTED' AND $__timeFilter(ts)
GROUP BY time, cause
ORDER BY time, cause""",
    "power_sources": """
WITH changes AS
(
    SELECT site_id, ts, seq, if(event_type = 'TRANSFER', ifNull(source_to, 'NONE'), 'NONE') AS source
    FROM power_events
    WHERE event_type = 'TRANSFER' OR (event_type = 'SOURCE_LOST' AND device_type = 'GRID_METER')
)
SELECT time, site_id, source
FROM
(
    SELECT ts AS time, site_id, source FROM changes WHERE $__timeFilter(ts)
    UNION ALL
    -- Where each site stood when the window opens: its last change before, or the grid if none
    -- (the second arm names every site that reports at all).
    SELECT toDateTime64($__fromTime, 6, 'UTC') AS time, site_id,
           if(countIf(ts < $__fromTime) = 0, 'GRID', argMaxIf(source, (ts, seq), ts < $__fromTime)) AS source
    FROM
    (
        SELECT site_id, ts, seq, source FROM changes
        UNION ALL
        SELECT DISTINCT site_id, $__toTime, 0, '' FROM power_events
    )
    GROUP BY site_id
)
ORDER BY site_id, time""",
    "transfer_times": """
SELECT started_at AS time, site_id, kind, round(transfer_ms, 3) AS transfer_ms,
       concat(ifNull(source_from, '?'), ' → ', ifNull(source_to, '?')) AS transfer
FROM incidents_latest
WHERE transfer_ms IS NOT NULL AND $__timeFilter(started_at)
ORDER BY time""",
    # An episode's records carry totals so far: each record's increase over the one before is what moved.
    "spillover": """
WITH moves AS
(
    SELECT updated_at,
           tasks_spilled + sessions_shed - lagInFrame(tasks_spilled + sessions_shed) OVER w AS tasks,
           slot_hours_shifted - lagInFrame(slot_hours_shifted) OVER w AS slot_hours,
           ifNull(battery_minutes_saved, 0) - lagInFrame(ifNull(battery_minutes_saved, 0)) OVER w
               AS battery_min
    FROM spillover_episodes
    WINDOW w AS (PARTITION BY episode_id ORDER BY updated_at, _offset
                 ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)
)
SELECT $__timeInterval(updated_at) AS time, toInt64(sum(tasks)) AS tasks_moved,
       round(sum(slot_hours), 3) AS slot_hours_shifted, round(sum(battery_min), 2) AS battery_minutes_saved
FROM moves
WHERE $__timeFilter(updated_at)
GROUP BY time
ORDER BY time""",
    "alerts": """
SELECT $__timeInterval(starts_at) AS time, concat(kind, ' · ', severity) AS alert,
       uniqExact(fingerprint, starts_at) AS fired
FROM alerts
WHERE status = 'FIRING' AND $__timeFilter(starts_at)
GROUP BY time, alert
ORDER BY time, alert""",
    "alert_deliveries": """
SELECT $__timeInterval(received_at) AS time, concat(receiver, ' · ', status) AS delivery,
       count() AS deliveries
FROM alert_deliveries
WHERE $__timeFilter(received_at)
GROUP BY time, delivery
ORDER BY time, delivery""",
    "trace_activity": """
SELECT $__timeInterval(ts) AS time,
       round(count() * 60 / $__interval_s, 2) AS actions_per_min,
       round(100 * countIf(NOT ok) / count(), 2) AS error_pct,
       toUInt64(sum(is_repeat)) AS loop_repeats
FROM
(
    SELECT ts, ok,
           seq > 0 AND action = lagInFrame(action) OVER w AND (
               (action IN ('CLICK', 'DOUBLE_CLICK', 'RIGHT_CLICK', 'MOUSE_MOVE', 'DRAG', 'SCROLL')
                AND ifNull(x, -1) = ifNull(lagInFrame(x) OVER w, -1)
                AND ifNull(y, -1) = ifNull(lagInFrame(y) OVER w, -1))
               OR (action IN ('KEY', 'TYPE')
                AND ifNull(keys, '') = ifNull(lagInFrame(keys) OVER w, '')
                AND ifNull(text_len, -1) = ifNull(lagInFrame(text_len) OVER w, -1))
           ) AS is_repeat
    FROM actions
    WHERE $__timeFilter(ts)
    WINDOW w AS (PARTITION BY session_id ORDER BY seq ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)
)
GROUP BY time
ORDER BY time""",
    "trace_steps": """
SELECT toUInt64(exp2(floor(log2(greatest(task_steps, 1))))) AS steps_from,
       concat(toString(steps_from), '–', toString(steps_from * 2 - 1)) AS steps_bucket,
       task_outcome AS outcome, count() AS tasks
FROM
(
    SELECT task_id, sum(steps) AS task_steps, argMax(outcome, ended_at) AS task_outcome,
           min(started_at) AS task_started_at
    FROM session_stats
    GROUP BY task_id
)
WHERE $__timeFilter(task_started_at)
GROUP BY steps_from, steps_bucket, outcome
ORDER BY steps_from, outcome""",
    "ingest_rate": """
SELECT $__timeInterval(_ingested_at) AS time, _topic AS topic,
       round(count() / $__interval_s, 3) AS events_per_s
FROM
(
{ingest_union}
)
GROUP BY time, topic
ORDER BY time, topic""".replace(
        "{ingest_union}",
        "\n    UNION ALL\n".join(
            f"    SELECT _ingested_at, _topic FROM {table} WHERE $__timeFilter(_ingested_at)"
            for table in INGEST_TABLES
        ),
    ),
    "deadletters": """
SELECT $__timeInterval(ts) AS time, concat(error_kind, ' · ', source_topic) AS kind, count() AS records
FROM deadletter
WHERE $__timeFilter(ts)
GROUP BY time, kind
ORDER BY time, kind""",
}

# Consumer lag is read from Kafka (and the sink's positions in ClickHouse), not by SQL: see lag.py.
LAG_PANEL = "consumer_lag"

PANELS: dict[str, Panel] = {
    p.name: p
    for p in (
        Panel(
            "idle_capacity", "Idle compute capacity by region",
            "Cars that are idle eligible nodes (opted in, HW4+, parked, plugged in), per 5 minutes.",
            Chart("area", "time", ("idle_nodes",), series="region", y_title="idle nodes"),
        ),
        Panel(
            "task_queue", "Task queue depth",
            "Tasks waiting for a node (latest state QUEUED or REQUEUED), and arrivals per bucket.",
            Chart("line", "time", ("queued",), y_title="tasks waiting", y2=("arrivals",),
                  y2_title="arrivals / bucket"),
        ),
        Panel(
            "task_wait", "Task wait time percentiles",
            "Request to first start, by the bucket the task started in.",
            Chart("line", "time", ("p50_s", "p90_s", "p99_s"), y_title="wait (s)"),
        ),
        Panel(
            "preemptions", "Preemptions by cause",
            "Runs revoked because the car stopped being an idle node (lifecycle state PREEMPTED).",
            Chart("bar", "time", ("preemptions",), series="cause", y_title="preemptions"),
        ),
        Panel(
            "power_sources", "Failover timeline: power source per site",
            "What carries each site's load: grid, battery, generator or nothing, from the transfer events.",
            Chart("timeline", "time", ("source",), series="site_id"),
            grafana={"type": "state-timeline"},
        ),
        Panel(
            "transfer_times", "Measured transfer times",
            "Each failover's transfer time against the STS (4 ms), ITIC (20 ms) and NFPA 110 (10 s) limits.",
            Chart("scatter", "time", ("transfer_ms",), series="site_id", y_title="transfer (ms)", log_y=True),
        ),
        Panel(
            "spillover", "Spillover: work moved from sites to the fleet",
            "While a site is off the grid: tasks moved to cars (queued ones spilled, running ones shed), "
            "the slot-hours the fleet took over, and the battery minutes the shedding saved.",
            Chart("bar", "time", ("tasks_moved",), y_title="tasks moved",
                  y2=("slot_hours_shifted", "battery_minutes_saved"), y2_title="slot-hours · battery min"),
        ),
        Panel(
            "alerts", "Alerts fired by kind and severity",
            "Distinct alerts that started firing per bucket (a re-sent FIRING record counts once).",
            Chart("bar", "time", ("fired",), series="alert", y_title="alerts"),
        ),
        Panel(
            "alert_deliveries", "Alert deliveries",
            "Alerts the webhook receiver accepted, by receiver and status (alert_deliveries, wall clock).",
            Chart("bar", "time", ("deliveries",), series="delivery", y_title="deliveries"),
            clock="wall",
            optional=True,
        ),
        Panel(
            "trace_activity", "Emulator actions, errors and loops",
            "Actions per minute; the share of failed actions; repeats of the same action at the same place.",
            Chart("bar", "time", ("actions_per_min",), y_title="actions / min",
                  y2=("error_pct", "loop_repeats"), y2_title="errors (%) · loop repeats"),
        ),
        Panel(
            "trace_steps", "Steps per task",
            "Emulator steps per task (all its sessions), in doubling buckets, by the task's outcome.",
            Chart("bar", "steps_bucket", ("tasks",), series="outcome", y_title="tasks", x_title="steps"),
            grafana={"type": "barchart"},
        ),
        Panel(
            "ingest_rate", "Events/s into ClickHouse by topic",
            "Rows the sink landed per second, by source topic (wall clock).",
            Chart("area", "time", ("events_per_s",), series="topic", y_title="events / s"),
            clock="wall",
        ),
        Panel(
            "deadletters", "Dead letters by kind",
            "Records sent to deadletter.v1, by error kind and source topic (wall clock).",
            Chart("bar", "time", ("records",), series="kind", y_title="records"),
            clock="wall",
        ),
    )
}  # fmt: skip

LAG_CHART = Chart("line", "time", ("lag",), series="processor", y_title="records behind")
LAG_TITLE = "Consumer lag per processor"
LAG_DESCRIPTION = (
    "Records each processor's consumer group has not processed yet (the sink: records not yet in ClickHouse)."
)

# Every chart of the page, in order: panel names (a chart may draw several panels).
LAYOUT: tuple[tuple[str, ...], ...] = (
    ("idle_capacity",), ("task_queue",), ("task_wait",),
    ("power_sources", "transfer_times"), ("spillover",), ("preemptions",),
    ("alerts",), ("alert_deliveries",), ("trace_steps",),
    ("trace_activity",), (LAG_PANEL,),
    ("ingest_rate",), ("deadletters",),
)  # fmt: skip
WIDE = frozenset({"power_sources", "trace_activity", "ingest_rate"})  # charts two columns wide


@dataclass(frozen=True)
class Window:
    """The time range a panel is drawn over, and its bucket size."""

    start: datetime
    end: datetime

    @property
    def interval_s(self) -> int:
        span = (self.end - self.start).total_seconds()
        return next((i for i in INTERVALS_S if span / i <= MAX_BUCKETS), INTERVALS_S[-1])


_FILTER_RE = re.compile(r"\$__timeFilter\(([^()]+)\)")
_INTERVAL_RE = re.compile(r"\$__timeInterval\(((?:[^()]|\([^()]*\))+)\)")


def _dt(value: datetime) -> str:
    return f"toDateTime({int(value.astimezone(UTC).timestamp())}, 'UTC')"


def render(sql: str, window: Window) -> str:
    """``sql`` with the Grafana macros expanded for ``window`` (as the ClickHouse plugin expands them)."""
    start, end, step = _dt(window.start), _dt(window.end), window.interval_s
    sql = _FILTER_RE.sub(lambda m: f"({m[1]} >= {start} AND {m[1]} <= {end})", sql)
    sql = _INTERVAL_RE.sub(lambda m: f"toStartOfInterval(toDateTime({m[1]}), INTERVAL {step} second)", sql)
    sql = sql.replace("$__fromTime", start).replace("$__toTime", end)
    return sql.replace("$__interval_s", str(step))
