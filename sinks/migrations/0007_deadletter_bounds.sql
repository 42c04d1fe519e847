-- deadletter.v1 gained value_size, value_sha256 and truncated: a dead letter keeps only the first
-- 64 KiB of the original value, with its size and hash. Placeholders as in 0001_core_tables.sql.

ALTER TABLE {table:deadletter} {on_cluster}
    ADD COLUMN IF NOT EXISTS value_size Nullable(Int64),
    ADD COLUMN IF NOT EXISTS value_sha256 Nullable(String),
    ADD COLUMN IF NOT EXISTS truncated Bool DEFAULT false;

ALTER TABLE {database}.deadletter {on_cluster}
    ADD COLUMN IF NOT EXISTS value_size Nullable(Int64),
    ADD COLUMN IF NOT EXISTS value_sha256 Nullable(String),
    ADD COLUMN IF NOT EXISTS truncated Bool DEFAULT false;
