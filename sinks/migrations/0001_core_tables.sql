-- The analyst contract (SPEC.md, "ClickHouse"): one table per topic that lands in ClickHouse.
--
-- Template placeholders, rendered by sinks/migrate.py:
--   {database}                   the database name (settings.clickhouse_database)
--   {on_cluster}                 empty, or ON CLUSTER `name`
--   {table:NAME}                 database.NAME, or database.NAME_local on a cluster
--   {engine:ENGINE(args)}        ENGINE(args), or ReplicatedENGINE('/clickhouse/tables/...', '{replica}', args)
--   {distributed:NAME:KEY}       nothing, or a Distributed table NAME over NAME_local sharded by KEY
--
-- Every row carries its source position (_topic, _partition, _offset) so duplicates are detectable;
-- sinks insert with insert_deduplication_token, which needs non_replicated_deduplication_window.

CREATE DATABASE IF NOT EXISTS {database} {on_cluster};

-- fleet.telemetry.v1: one vehicle snapshot.
CREATE TABLE IF NOT EXISTS {table:telemetry} {on_cluster}
(
    vin                 String,
    ts                  DateTime64(3, 'UTC'),
    hw                  LowCardinality(String),
    region              LowCardinality(String),
    charge_state        LowCardinality(String),
    gear                LowCardinality(String),
    soc_pct             Nullable(Float64),
    charge_limit_pct    Nullable(Float64),
    minutes_to_full     Nullable(Float64),
    scheduled_departure Nullable(DateTime64(3, 'UTC')),
    at_home             Nullable(Bool),
    opted_in            Bool,
    compute_temp_c      Nullable(Float64),
    software_version    LowCardinality(Nullable(String)),
    _topic              LowCardinality(String),
    _partition          UInt32,
    _offset             UInt64,
    _ingested_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {engine:MergeTree}
PARTITION BY toYYYYMM(ts)
ORDER BY (vin, ts)
SETTINGS non_replicated_deduplication_window = 1000;

{distributed:telemetry:cityHash64(vin)};

-- fleet.nodes.v1 (compacted): the latest state per vin. Read with FINAL (or argMax by ts).
CREATE TABLE IF NOT EXISTS {table:nodes} {on_cluster}
(
    vin                 String,
    ts                  DateTime64(3, 'UTC'),
    eligible            Bool,
    reason              Nullable(String),
    region              LowCardinality(String),
    hw                  LowCardinality(String),
    soc_pct             Nullable(Float64),
    charge_state        LowCardinality(Nullable(String)),
    gear                LowCardinality(Nullable(String)),
    scheduled_departure Nullable(DateTime64(3, 'UTC')),
    at_home             Nullable(Bool),
    minutes_to_full     Nullable(Float64),
    idle_until          Nullable(DateTime64(3, 'UTC')),
    lease_expires_at    Nullable(DateTime64(3, 'UTC')),
    reliability         Nullable(Float64),
    capacity            Int32,
    running             Int32,
    pool                LowCardinality(Nullable(String)),
    _topic              LowCardinality(String),
    _partition          UInt32,
    _offset             UInt64,
    _ingested_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {engine:ReplacingMergeTree(ts)}
ORDER BY vin
SETTINGS non_replicated_deduplication_window = 1000;

{distributed:nodes:cityHash64(vin)};

-- tasks.lifecycle.v1: every state change of a task.
CREATE TABLE IF NOT EXISTS {table:task_events} {on_cluster}
(
    task_id             String,
    ts                  DateTime64(3, 'UTC'),
    state               LowCardinality(String),
    vin                 Nullable(String),
    assignment_id       Nullable(String),
    reason              Nullable(String),
    tenant              LowCardinality(Nullable(String)),
    kind                LowCardinality(Nullable(String)),
    priority            Nullable(Int32),
    attempt             Nullable(Int32),
    _topic              LowCardinality(String),
    _partition          UInt32,
    _offset             UInt64,
    _ingested_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {engine:MergeTree}
PARTITION BY toYYYYMM(ts)
ORDER BY (task_id, ts)
SETTINGS non_replicated_deduplication_window = 1000;

{distributed:task_events:cityHash64(task_id)};

-- tasks.assignments.v1: ASSIGN / REVOKE commands sent to nodes.
CREATE TABLE IF NOT EXISTS {table:assignments} {on_cluster}
(
    assignment_id       String,
    command             LowCardinality(String),
    task_id             String,
    vin                 String,
    ts                  DateTime64(3, 'UTC'),
    reason              Nullable(String),
    tenant              LowCardinality(Nullable(String)),
    kind                LowCardinality(Nullable(String)),
    priority            Nullable(Int32),
    deadline            Nullable(DateTime64(3, 'UTC')),
    lease_expires_at    Nullable(DateTime64(3, 'UTC')),
    _topic              LowCardinality(String),
    _partition          UInt32,
    _offset             UInt64,
    _ingested_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {engine:MergeTree}
PARTITION BY toYYYYMM(ts)
ORDER BY (task_id, ts, assignment_id)
SETTINGS non_replicated_deduplication_window = 1000;

{distributed:assignments:cityHash64(task_id)};

-- emulator.actions.v1: one action of an emulator session (typed text is never stored, only its length).
CREATE TABLE IF NOT EXISTS {table:actions} {on_cluster}
(
    session_id          String,
    task_id             String,
    vin                 String,
    ts                  DateTime64(3, 'UTC'),
    seq                 Int64,
    action              LowCardinality(String),
    x                   Nullable(Int32),
    y                   Nullable(Int32),
    keys                Nullable(String),
    text_len            Nullable(Int32),
    latency_ms          Nullable(Float64),
    ok                  Bool,
    error               Nullable(String),
    _topic              LowCardinality(String),
    _partition          UInt32,
    _offset             UInt64,
    _ingested_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {engine:MergeTree}
PARTITION BY toYYYYMM(ts)
ORDER BY (session_id, seq)
SETTINGS non_replicated_deduplication_window = 1000;

{distributed:actions:cityHash64(session_id)};

-- power.events.v1: sequence-of-events records, microsecond timestamps.
CREATE TABLE IF NOT EXISTS {table:power_events} {on_cluster}
(
    site_id             LowCardinality(String),
    device_id           String,
    device_type         LowCardinality(String),
    ts                  DateTime64(6, 'UTC'),
    seq                 Int64,
    event_type          LowCardinality(String),
    source_from         LowCardinality(Nullable(String)),
    source_to           LowCardinality(Nullable(String)),
    load_mw             Nullable(Float64),
    frequency_hz        Nullable(Float64),
    voltage_pu          Nullable(Float64),
    battery_soc_pct     Nullable(Float64),
    gens_online         Nullable(Int32),
    detail              Nullable(String),
    _topic              LowCardinality(String),
    _partition          UInt32,
    _offset             UInt64,
    _ingested_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {engine:MergeTree}
PARTITION BY toYYYYMM(ts)
ORDER BY (site_id, ts, device_id, seq)
SETTINGS non_replicated_deduplication_window = 1000;

{distributed:power_events:cityHash64(site_id)};

-- power.incidents.v1: every OPEN / UPDATE / RESOLVED record of a failover incident.
-- The latest state of an incident: argMax(..., (updated_at, _offset)) per incident_id.
CREATE TABLE IF NOT EXISTS {table:incidents} {on_cluster}
(
    incident_id         String,
    site_id             LowCardinality(String),
    kind                LowCardinality(String),
    state               LowCardinality(String),
    started_at          DateTime64(3, 'UTC'),
    ended_at            Nullable(DateTime64(3, 'UTC')),
    transfer_ms         Nullable(Float64),
    source_from         LowCardinality(Nullable(String)),
    source_to           LowCardinality(Nullable(String)),
    min_battery_soc_pct Nullable(Float64),
    summary             String,
    device_id           Nullable(String),
    updated_at          Nullable(DateTime64(3, 'UTC')),
    time_on_alternate_ms Nullable(Float64),
    gens_online         Nullable(Int32),
    load_mw             Nullable(Float64),
    parent_incident_id  Nullable(String),
    _topic              LowCardinality(String),
    _partition          UInt32,
    _offset             UInt64,
    _ingested_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {engine:MergeTree}
PARTITION BY toYYYYMM(started_at)
ORDER BY (site_id, started_at, incident_id)
SETTINGS non_replicated_deduplication_window = 1000;

{distributed:incidents:cityHash64(site_id)};

-- alerts.v1: alerts as published for on-call tooling (FIRING and RESOLVED records).
CREATE TABLE IF NOT EXISTS {table:alerts} {on_cluster}
(
    fingerprint         String,
    status              LowCardinality(String),
    severity            LowCardinality(String),
    kind                LowCardinality(String),
    site_id             LowCardinality(Nullable(String)),
    region              LowCardinality(Nullable(String)),
    summary             String,
    starts_at           DateTime64(3, 'UTC'),
    ends_at             Nullable(DateTime64(3, 'UTC')),
    labels              Map(String, String),
    incident_id         Nullable(String),
    _topic              LowCardinality(String),
    _partition          UInt32,
    _offset             UInt64,
    _ingested_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {engine:MergeTree}
PARTITION BY toYYYYMM(starts_at)
ORDER BY (fingerprint, starts_at)
SETTINGS non_replicated_deduplication_window = 1000;

{distributed:alerts:cityHash64(fingerprint)};

-- What each owner is owed: one row per task run on a car within one charging session.
-- Recomputing an entry (same vin, session, assignment) replaces it; sum per vin and session for totals.
CREATE TABLE IF NOT EXISTS {table:owner_ledger} {on_cluster}
(
    vin                 String,
    charge_session_id   String,
    assignment_id       String,
    task_id             String,
    ts                  DateTime64(3, 'UTC'),
    started_at          DateTime64(3, 'UTC'),
    ended_at            DateTime64(3, 'UTC'),
    compute_seconds     Float64,
    energy_kwh          Float64,
    price_per_kwh       Nullable(Float64),
    amount              Nullable(Float64),
    currency            LowCardinality(String) DEFAULT 'USD',
    _topic              LowCardinality(String),
    _partition          UInt32,
    _offset             UInt64,
    _ingested_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {engine:ReplacingMergeTree(ts)}
ORDER BY (vin, charge_session_id, assignment_id)
SETTINGS non_replicated_deduplication_window = 1000;

{distributed:owner_ledger:cityHash64(vin)};

-- deadletter.v1: anything that could not be processed, with its original bytes (key, value: String
-- holds any bytes) and source position.
CREATE TABLE IF NOT EXISTS {table:deadletter} {on_cluster}
(
    ts                  DateTime64(3, 'UTC'),
    source_topic        LowCardinality(String),
    source_partition    Nullable(Int32),
    source_offset       Nullable(Int64),
    key                 Nullable(String),
    value               Nullable(String),
    error_kind          LowCardinality(String),
    error               String,
    line                Nullable(Int32),
    processor           LowCardinality(Nullable(String)),
    _topic              LowCardinality(String),
    _partition          UInt32,
    _offset             UInt64,
    _ingested_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {engine:MergeTree}
PARTITION BY toYYYYMM(ts)
ORDER BY (source_topic, ts)
SETTINGS non_replicated_deduplication_window = 1000;

{distributed:deadletter:rand()};
