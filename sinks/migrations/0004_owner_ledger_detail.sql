-- Owner ledger detail: how each amount was computed (both prices, the power draw, the split between
-- energy and compute), so an owner's statement can be explained line by line. sinks/ledger.py fills it.
-- Each ALTER is written twice: for the local table and for the contract-name table (the Distributed
-- table on a cluster; on one server the same table again, a no-op thanks to IF NOT EXISTS).

ALTER TABLE {table:owner_ledger} {on_cluster}
    ADD COLUMN IF NOT EXISTS region LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS hw LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS session_started_at Nullable(DateTime64(3, 'UTC')),
    ADD COLUMN IF NOT EXISTS session_ended_at Nullable(DateTime64(3, 'UTC')),
    ADD COLUMN IF NOT EXISTS compute_kw Float64 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS price_per_compute_hour Nullable(Float64),
    ADD COLUMN IF NOT EXISTS energy_amount Nullable(Float64),
    ADD COLUMN IF NOT EXISTS compute_amount Nullable(Float64);

ALTER TABLE {database}.owner_ledger {on_cluster}
    ADD COLUMN IF NOT EXISTS region LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS hw LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS session_started_at Nullable(DateTime64(3, 'UTC')),
    ADD COLUMN IF NOT EXISTS session_ended_at Nullable(DateTime64(3, 'UTC')),
    ADD COLUMN IF NOT EXISTS compute_kw Float64 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS price_per_compute_hour Nullable(Float64),
    ADD COLUMN IF NOT EXISTS energy_amount Nullable(Float64),
    ADD COLUMN IF NOT EXISTS compute_amount Nullable(Float64);
