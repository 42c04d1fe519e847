-- The sink's own needs: tables for the two input topics that analysts need (task requests and node
-- status reports), and per-part offset projections that make the sink's restart query cheap.
-- Placeholders as in 0001_core_tables.sql.

-- tasks.requests.v1: what customers asked for (wait times start here).
CREATE TABLE IF NOT EXISTS {table:task_requests} {on_cluster}
(
    task_id             String,
    ts                  DateTime64(3, 'UTC'),
    tenant              LowCardinality(String),
    kind                LowCardinality(String),
    priority            Int32,
    est_duration_s      Int32,
    deadline            Nullable(DateTime64(3, 'UTC')),
    min_hw              LowCardinality(String),
    region              LowCardinality(Nullable(String)),
    min_soc_pct         Nullable(Float64),
    _topic              LowCardinality(String),
    _partition          UInt32,
    _offset             UInt64,
    _ingested_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {engine:MergeTree}
PARTITION BY toYYYYMM(ts)
ORDER BY (task_id, ts)
SETTINGS non_replicated_deduplication_window = 1000;

{distributed:task_requests:cityHash64(task_id)};

-- tasks.status.v1: STARTED / COMPLETED / FAILED as reported by the node (the owner ledger's source).
CREATE TABLE IF NOT EXISTS {table:task_status} {on_cluster}
(
    task_id             String,
    assignment_id       String,
    vin                 String,
    ts                  DateTime64(3, 'UTC'),
    status              LowCardinality(String),
    error               Nullable(String),
    _topic              LowCardinality(String),
    _partition          UInt32,
    _offset             UInt64,
    _ingested_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {engine:MergeTree}
PARTITION BY toYYYYMM(ts)
ORDER BY (vin, ts, assignment_id)
SETTINGS non_replicated_deduplication_window = 1000;

{distributed:task_status:cityHash64(vin)};

-- Where the sink resumes: max(_offset) per (_topic, _partition), stored inside every part (so it is
-- exactly as durable as the rows) and read without scanning the table. Append-only tables only:
-- ReplacingMergeTree tables (nodes, owner_ledger) are small per key and read directly.
ALTER TABLE {table:telemetry} {on_cluster}
    ADD PROJECTION IF NOT EXISTS sink_positions (SELECT _topic, _partition, max(_offset) GROUP BY _topic, _partition);
ALTER TABLE {table:task_events} {on_cluster}
    ADD PROJECTION IF NOT EXISTS sink_positions (SELECT _topic, _partition, max(_offset) GROUP BY _topic, _partition);
ALTER TABLE {table:assignments} {on_cluster}
    ADD PROJECTION IF NOT EXISTS sink_positions (SELECT _topic, _partition, max(_offset) GROUP BY _topic, _partition);
ALTER TABLE {table:actions} {on_cluster}
    ADD PROJECTION IF NOT EXISTS sink_positions (SELECT _topic, _partition, max(_offset) GROUP BY _topic, _partition);
ALTER TABLE {table:power_events} {on_cluster}
    ADD PROJECTION IF NOT EXISTS sink_positions (SELECT _topic, _partition, max(_offset) GROUP BY _topic, _partition);
ALTER TABLE {table:incidents} {on_cluster}
    ADD PROJECTION IF NOT EXISTS sink_positions (SELECT _topic, _partition, max(_offset) GROUP BY _topic, _partition);
ALTER TABLE {table:alerts} {on_cluster}
    ADD PROJECTION IF NOT EXISTS sink_positions (SELECT _topic, _partition, max(_offset) GROUP BY _topic, _partition);
ALTER TABLE {table:deadletter} {on_cluster}
    ADD PROJECTION IF NOT EXISTS sink_positions (SELECT _topic, _partition, max(_offset) GROUP BY _topic, _partition);
ALTER TABLE {table:task_requests} {on_cluster}
    ADD PROJECTION IF NOT EXISTS sink_positions (SELECT _topic, _partition, max(_offset) GROUP BY _topic, _partition);
ALTER TABLE {table:task_status} {on_cluster}
    ADD PROJECTION IF NOT EXISTS sink_positions (SELECT _topic, _partition, max(_offset) GROUP BY _topic, _partition);
