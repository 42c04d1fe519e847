-- Alert deliveries: every notification the demo's webhook receiver (carnival/receiver.py) accepted, one
-- row per alert in an Alertmanager webhook body. The dashboard shows them; the demo report counts fired
-- alerts against them. The router delivers at least once, so a fingerprint may appear more than once.
-- Placeholders as in 0001_core_tables.sql.

CREATE TABLE IF NOT EXISTS {table:alert_deliveries} {on_cluster}
(
    received_at         DateTime64(3, 'UTC'),
    fingerprint         String,
    status              LowCardinality(String),
    kind                LowCardinality(String),
    severity            LowCardinality(String),
    site_id             LowCardinality(Nullable(String)),
    region              LowCardinality(Nullable(String)),
    summary             String,
    starts_at           Nullable(DateTime64(3, 'UTC')),
    incident_id         Nullable(String),
    receiver            LowCardinality(String),
    group_key           String
)
ENGINE = {engine:MergeTree}
PARTITION BY toYYYYMM(received_at)
ORDER BY (fingerprint, received_at);

{distributed:alert_deliveries:cityHash64(fingerprint)};
