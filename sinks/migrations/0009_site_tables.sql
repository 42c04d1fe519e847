-- Datacenter sites and spillover: one table per sites.* topic, landed by the sink like every other
-- (every record a row, with its source position), and views of the latest state. Placeholders as in
-- 0001_core_tables.sql.
--
-- Why append-only tables and views rather than ReplacingMergeTree: every record stays (when each state
-- began, how an episode grew: the dashboard draws that), the views are exact at any merge state
-- without FINAL, and the sink's resume position (max(_offset) per partition, projection
-- sink_positions) holds only for tables whose rows merges never drop. Sites and episodes are few, so
-- the views' sort per key is cheap.

-- sites.capacity.v1: every capacity report of a site's controller.
CREATE TABLE IF NOT EXISTS {table:site_capacity} {on_cluster}
(
    site_id             LowCardinality(String),
    ts                  DateTime64(3, 'UTC'),
    region              LowCardinality(String),
    slots_total         Int32,
    slots_free          Int32,
    power_budget_mw     Nullable(Float64),
    cost_per_slot_hour  Nullable(Float64),
    session_kw          Nullable(Float64),
    _topic              LowCardinality(String),
    _partition          UInt32,
    _offset             UInt64,
    _ingested_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {engine:MergeTree}
PARTITION BY toYYYYMM(ts)
ORDER BY (site_id, ts)
SETTINGS non_replicated_deduplication_window = 1000;

{distributed:site_capacity:cityHash64(site_id)};

-- sites.power_state.v1 (compacted topic): every state record; the latest per site is its state.
CREATE TABLE IF NOT EXISTS {table:site_power_states} {on_cluster}
(
    site_id             LowCardinality(String),
    ts                  DateTime64(3, 'UTC'),
    state               LowCardinality(String),
    since               DateTime64(3, 'UTC'),
    battery_runtime_min Nullable(Float64),
    incident_id         Nullable(String),
    load_mw             Nullable(Float64),
    battery_soc_pct     Nullable(Float64),
    grid_since          Nullable(DateTime64(3, 'UTC')),
    _topic              LowCardinality(String),
    _partition          UInt32,
    _offset             UInt64,
    _ingested_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {engine:MergeTree}
PARTITION BY toYYYYMM(ts)
ORDER BY (site_id, ts)
SETTINGS non_replicated_deduplication_window = 1000;

{distributed:site_power_states:cityHash64(site_id)};

-- sites.spillover.v1: every OPEN / UPDATE / RESOLVED record of a spillover episode. Each record is the
-- episode so far (its counters are totals, not increments); spillover_episodes_latest has one row per
-- episode. Partitioned by the episode's start, so all records of an episode share a partition.
CREATE TABLE IF NOT EXISTS {table:spillover_episodes} {on_cluster}
(
    episode_id          String,
    site_id             LowCardinality(String),
    region              LowCardinality(String),
    state               LowCardinality(String),
    started_at          DateTime64(3, 'UTC'),
    ended_at            Nullable(DateTime64(3, 'UTC')),
    updated_at          DateTime64(3, 'UTC'),
    worst_state         LowCardinality(String),
    tasks_spilled       Int32,
    sessions_shed       Int32,
    slot_hours_shifted  Float64,
    battery_minutes_saved Nullable(Float64),
    incident_id         Nullable(String),
    summary             String,
    _topic              LowCardinality(String),
    _partition          UInt32,
    _offset             UInt64,
    _ingested_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {engine:MergeTree}
PARTITION BY toYYYYMM(started_at)
ORDER BY (site_id, started_at, episode_id, updated_at)
SETTINGS non_replicated_deduplication_window = 1000;

{distributed:spillover_episodes:cityHash64(site_id)};

ALTER TABLE {table:site_capacity} {on_cluster}
    ADD PROJECTION IF NOT EXISTS sink_positions (SELECT _topic, _partition, max(_offset) GROUP BY _topic, _partition);
ALTER TABLE {table:site_power_states} {on_cluster}
    ADD PROJECTION IF NOT EXISTS sink_positions (SELECT _topic, _partition, max(_offset) GROUP BY _topic, _partition);
ALTER TABLE {table:spillover_episodes} {on_cluster}
    ADD PROJECTION IF NOT EXISTS sink_positions (SELECT _topic, _partition, max(_offset) GROUP BY _topic, _partition);

-- The latest views take each key's latest record whole (by event time, then offset): a value the latest
-- record leaves null is null (argMax would skip nulls and show an older value).

-- Each site's latest capacity report.
CREATE VIEW IF NOT EXISTS {database}.site_capacity_latest {on_cluster} AS
SELECT site_id, ts, region, slots_total, slots_free, power_budget_mw, cost_per_slot_hour, session_kw
FROM {database}.site_capacity
ORDER BY site_id, ts DESC, _offset DESC
LIMIT 1 BY site_id;

-- Each site's power state now (the compacted topic's view of it).
CREATE VIEW IF NOT EXISTS {database}.site_power_latest {on_cluster} AS
SELECT site_id, ts, state, since, battery_runtime_min, incident_id, load_mw, battery_soc_pct, grid_since
FROM {database}.site_power_states
ORDER BY site_id, ts DESC, _offset DESC
LIMIT 1 BY site_id;

-- One row per spillover episode with its latest numbers; tasks_moved = spilled + shed; duration_min is
-- null while the episode is open.
CREATE VIEW IF NOT EXISTS {database}.spillover_episodes_latest {on_cluster} AS
SELECT episode_id, site_id, region, state, started_at, ended_at, updated_at, worst_state,
       tasks_spilled, sessions_shed, tasks_spilled + sessions_shed AS tasks_moved,
       slot_hours_shifted, battery_minutes_saved,
       dateDiff('millisecond', started_at, ended_at) / 60000 AS duration_min,
       incident_id, summary
FROM {database}.spillover_episodes
ORDER BY episode_id, updated_at DESC, _offset DESC
LIMIT 1 BY episode_id;
