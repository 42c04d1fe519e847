-- Columns for fields the task schemas gained (tasks.assignments.v1: pool, attempt, est_duration_s;
-- tasks.lifecycle.v1: pool). The sink lands every Avro field that has a column of the same name.
-- Local table, then contract-name table (Distributed on a cluster; a no-op repeat on one server).

ALTER TABLE {table:assignments} {on_cluster}
    ADD COLUMN IF NOT EXISTS pool LowCardinality(Nullable(String)),
    ADD COLUMN IF NOT EXISTS attempt Nullable(Int32),
    ADD COLUMN IF NOT EXISTS est_duration_s Nullable(Int32);

ALTER TABLE {database}.assignments {on_cluster}
    ADD COLUMN IF NOT EXISTS pool LowCardinality(Nullable(String)),
    ADD COLUMN IF NOT EXISTS attempt Nullable(Int32),
    ADD COLUMN IF NOT EXISTS est_duration_s Nullable(Int32);

ALTER TABLE {table:task_events} {on_cluster}
    ADD COLUMN IF NOT EXISTS pool LowCardinality(Nullable(String));

ALTER TABLE {database}.task_events {on_cluster}
    ADD COLUMN IF NOT EXISTS pool LowCardinality(Nullable(String));
