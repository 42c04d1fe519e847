"""Prometheus metrics of the ClickHouse sink, ``carnival_sink_*`` (prometheus_client's default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ROWS_INSERTED = Counter("carnival_sink_rows_inserted_total", "Rows inserted into ClickHouse", ["table"])
INSERTS = Counter("carnival_sink_inserts_total", "Insert statements that succeeded", ["table"])
INSERT_SECONDS = Histogram(
    "carnival_sink_insert_seconds",
    "Duration of one successful insert",
    ["table"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
INSERT_RETRIES = Counter(
    "carnival_sink_insert_retries_total", "Inserts that failed and will be retried", ["table", "reason"]
)
DEADLETTERED = Counter(
    "carnival_sink_deadlettered_total", "Records the sink sent to deadletter.v1", ["topic", "kind"]
)
DUPLICATE_DELIVERIES = Counter(
    "carnival_sink_duplicate_deliveries_total",
    "Records skipped because their offset was already taken",
    ["topic"],
)
LAG = Gauge(
    "carnival_sink_lag_records", "High watermark minus the next offset to insert", ["topic", "partition"]
)
PAUSED = Gauge(
    "carnival_sink_paused", "1 while any topic is paused because ClickHouse does not accept its inserts"
)
POSITIONS = Counter(
    "carnival_sink_positions_total", "Where assigned partitions resumed from", ["topic", "source"]
)
FENCED = Counter(
    "carnival_sink_fenced_inserts_total", "In-flight inserts of a previous owner killed", ["topic"]
)
TOPIC_PAUSED = Gauge(
    "carnival_sink_topic_paused", "1 while a topic is paused: its oldest batch waits for a retry", ["topic"]
)
SPLITS = Counter(
    "carnival_sink_insert_splits_total",
    "Inserts halved because ClickHouse refused them for good (finding the bad records) or as too big",
    ["table", "verdict"],
)
REJECTED = Counter(
    "carnival_sink_rejected_records_total",
    "Records ClickHouse refused on their own, sent to deadletter.v1 as SINK_REJECTED",
    ["table"],
)
DEADLETTER_FAILURES = Counter(
    "carnival_sink_deadletter_delivery_failures_total",
    "Dead letters the broker did not acknowledge (produced again; their offsets wait)",
)
TOMBSTONES = Counter(
    "carnival_sink_tombstones_total",
    "Null values: skipped on compacted topics, dead-lettered (TOMBSTONE) on the others",
    ["topic", "action"],
)
