-- Columns for fields the task schemas gained with datacenter sites (tasks.requests.v1: placement;
-- tasks.assignments.v1 and tasks.lifecycle.v1: site_id). Local table, then contract-name table
-- (Distributed on a cluster; a no-op repeat on one server).

ALTER TABLE {table:task_requests} {on_cluster}
    ADD COLUMN IF NOT EXISTS placement LowCardinality(String) DEFAULT 'ANY';

ALTER TABLE {database}.task_requests {on_cluster}
    ADD COLUMN IF NOT EXISTS placement LowCardinality(String) DEFAULT 'ANY';

ALTER TABLE {table:assignments} {on_cluster}
    ADD COLUMN IF NOT EXISTS site_id LowCardinality(Nullable(String));

ALTER TABLE {database}.assignments {on_cluster}
    ADD COLUMN IF NOT EXISTS site_id LowCardinality(Nullable(String));

ALTER TABLE {table:task_events} {on_cluster}
    ADD COLUMN IF NOT EXISTS site_id LowCardinality(Nullable(String));

ALTER TABLE {database}.task_events {on_cluster}
    ADD COLUMN IF NOT EXISTS site_id LowCardinality(Nullable(String));
