-- The analytics model: views answering the questions in docs/queries.md. Views read the contract
-- tables by their contract names ({database}.X: the table itself on one server, the Distributed table
-- on a cluster), so the same definitions serve both. Plain views: always consistent with the rows,
-- nothing to backfill; at 10M telemetry rows each answers in well under a second (bench/bench_queries.py).
-- Thresholds written here are the documented defaults of DOMAIN.md (idle: SoC >= 20 %, compute < 80 C).

-- Region and hardware of each vin, from the node state the scheduler publishes.
CREATE VIEW IF NOT EXISTS {database}.node_regions {on_cluster} AS
SELECT vin, argMax(region, (ts, _offset)) AS region, argMax(hw, (ts, _offset)) AS hw
FROM {database}.nodes
GROUP BY vin;

-- Idle capacity: per region and 5-minute bucket, the vins whose last snapshot in the bucket was an idle
-- eligible node (opted in, HW4+, parked, plugged in, SoC and temperature within limits).
CREATE VIEW IF NOT EXISTS {database}.idle_capacity_5m {on_cluster} AS
SELECT region, bucket, countIf(idle) AS idle_nodes, count() AS reporting_nodes,
       round(idle_nodes / reporting_nodes, 4) AS idle_share
FROM
(
    SELECT region, toStartOfFiveMinutes(ts) AS bucket, vin,
           argMax(opted_in AND hw IN ('HW4', 'HW5') AND gear = 'P'
                  AND charge_state IN ('STARTING', 'CHARGING', 'COMPLETE', 'STOPPED')
                  AND ifNull(soc_pct, 0) >= 20 AND ifNull(compute_temp_c, 0) < 80, (ts, _offset)) AS idle
    FROM {database}.telemetry
    GROUP BY region, bucket, vin
)
GROUP BY region, bucket;

-- The latest lifecycle state of every task.
CREATE VIEW IF NOT EXISTS {database}.task_latest {on_cluster} AS
SELECT task_id, argMax(state, (ts, _offset)) AS state, max(ts) AS updated_at,
       argMax(vin, (ts, _offset)) AS vin, max(attempt) AS attempts
FROM {database}.task_events
GROUP BY task_id;

-- One row per task: when it was requested, first started, finished; wait and run time; preemptions.
CREATE VIEW IF NOT EXISTS {database}.task_timings {on_cluster} AS
SELECT e.task_id AS task_id,
       coalesce(r.priority, e.priority) AS priority,
       r.tenant AS tenant, r.kind AS kind, r.region AS requested_region,
       coalesce(r.requested_at, e.requested_at) AS requested_at,
       e.first_started_at AS first_started_at, e.last_started_at AS last_started_at,
       e.finished_at AS finished_at, e.last_state AS state, e.preemptions AS preemptions,
       dateDiff('millisecond', requested_at, first_started_at) / 1000 AS wait_s,
       dateDiff('millisecond', last_started_at, finished_at) / 1000 AS run_s
FROM
(
    SELECT task_id,
           minIfOrNull(ts, state = 'REQUESTED') AS requested_at,
           minIfOrNull(ts, state = 'STARTED') AS first_started_at,
           maxIfOrNull(ts, state = 'STARTED') AS last_started_at,
           minIfOrNull(ts, state IN ('COMPLETED', 'FAILED')) AS finished_at,
           argMax(state, (ts, _offset)) AS last_state,
           countIf(state = 'PREEMPTED') AS preemptions,
           anyIf(priority, priority IS NOT NULL) AS priority
    FROM {database}.task_events
    GROUP BY task_id
) AS e
LEFT JOIN
(
    SELECT task_id, min(ts) AS requested_at, any(priority) AS priority, any(tenant) AS tenant,
           any(kind) AS kind, any(region) AS region
    FROM {database}.task_requests
    GROUP BY task_id
) AS r ON e.task_id = r.task_id
SETTINGS join_use_nulls = 1;

-- Runs started and preempted per node region and hour.
CREATE VIEW IF NOT EXISTS {database}.preemptions_hourly {on_cluster} AS
SELECT ifNull(n.region, 'unknown') AS region, toStartOfHour(e.ts) AS hour,
       countIf(e.state = 'STARTED') AS runs_started, countIf(e.state = 'PREEMPTED') AS preemptions
FROM {database}.task_events AS e
LEFT JOIN {database}.node_regions AS n ON ifNull(e.vin, '') = n.vin
WHERE e.state IN ('STARTED', 'PREEMPTED')
GROUP BY region, hour
SETTINGS join_use_nulls = 1;

-- What each node did with the work it was given (node reports, plus preemptions from the lifecycle).
CREATE VIEW IF NOT EXISTS {database}.node_reliability {on_cluster} AS
SELECT s.vin AS vin, n.region AS region, n.hw AS hw,
       s.runs AS runs, s.completed AS completed, s.failed AS failed, ifNull(p.preempted, 0) AS preempted,
       round(s.completed / greatest(s.completed + s.failed, 1), 4) AS success_rate,
       s.last_report AS last_report
FROM
(
    SELECT vin, uniqExactIf(assignment_id, status = 'STARTED') AS runs,
           uniqExactIf(assignment_id, status = 'COMPLETED') AS completed,
           uniqExactIf(assignment_id, status = 'FAILED') AS failed, max(ts) AS last_report
    FROM {database}.task_status
    GROUP BY vin
) AS s
LEFT JOIN
(
    SELECT ifNull(vin, '') AS vin, uniqExact(ifNull(assignment_id, task_id)) AS preempted
    FROM {database}.task_events
    WHERE state = 'PREEMPTED'
    GROUP BY vin
) AS p ON s.vin = p.vin
LEFT JOIN {database}.node_regions AS n ON s.vin = n.vin
SETTINGS join_use_nulls = 1;

-- The latest state of every failover incident (its records are OPEN, UPDATE..., RESOLVED).
CREATE VIEW IF NOT EXISTS {database}.incidents_latest {on_cluster} AS
SELECT incident_id,
       argMax(site_id, v) AS site_id, argMax(kind, v) AS kind, argMax(state, v) AS state,
       min(started_at) AS started_at, argMax(ended_at, v) AS ended_at,
       argMaxIf(transfer_ms, v, transfer_ms IS NOT NULL) AS transfer_ms,
       argMax(source_from, v) AS source_from, argMax(source_to, v) AS source_to,
       minOrNull(min_battery_soc_pct) AS min_battery_soc_pct, argMax(summary, v) AS summary
FROM
(
    SELECT *, (coalesce(updated_at, ended_at, started_at), _offset) AS v FROM {database}.incidents
)
GROUP BY incident_id;

-- Alerts fired and resolved per hour, kind and severity (a fingerprint re-sent while firing counts once).
CREATE VIEW IF NOT EXISTS {database}.alerts_hourly {on_cluster} AS
SELECT toStartOfHour(starts_at) AS hour, kind, severity,
       uniqExactIf((fingerprint, starts_at), status = 'FIRING') AS fired,
       uniqExactIf((fingerprint, starts_at), status = 'RESOLVED') AS resolved
FROM {database}.alerts
GROUP BY hour, kind, severity;

-- Emulator sessions: steps, duration, pace, errors, loops (the same action at the same place, or the
-- same key, repeated back to back), whether time per step grows, and the outcome.
CREATE VIEW IF NOT EXISTS {database}.session_stats {on_cluster} AS
SELECT session_id, any(task_id) AS task_id, any(vin) AS vin,
       count() AS steps, min(ts) AS started_at, max(ts) AS ended_at,
       dateDiff('millisecond', started_at, ended_at) / 1000 AS duration_s,
       round(steps * 60 / greatest(duration_s, 1), 2) AS actions_per_minute,
       round(duration_s / greatest(steps - 1, 1), 3) AS seconds_per_step,
       round(avgIf(gap_s, rn > n / 2) / nullIf(avgIf(gap_s, rn > 1 AND rn <= n / 2), 0), 3) AS step_time_growth,
       countIf(NOT ok) AS errors,
       sum(is_repeat) AS loop_repeats,
       round(avg(latency_ms), 1) AS avg_latency_ms,
       multiIf(argMaxIf(action, seq, action IN ('DONE', 'FAIL')) = 'DONE', 'DONE',
               argMaxIf(action, seq, action IN ('DONE', 'FAIL')) = 'FAIL', 'FAIL', 'INCOMPLETE') AS outcome
FROM
(
    SELECT session_id, task_id, vin, ts, seq, action, ok, latency_ms,
           row_number() OVER (PARTITION BY session_id ORDER BY seq) AS rn,
           count() OVER (PARTITION BY session_id) AS n,
           dateDiff('millisecond', lagInFrame(ts) OVER w, ts) / 1000 AS gap_s,
           rn > 1 AND action = lagInFrame(action) OVER w AND (
               (action IN ('CLICK', 'DOUBLE_CLICK', 'RIGHT_CLICK', 'MOUSE_MOVE', 'DRAG', 'SCROLL')
                AND ifNull(x, -1) = ifNull(lagInFrame(x) OVER w, -1)
                AND ifNull(y, -1) = ifNull(lagInFrame(y) OVER w, -1))
               OR (action IN ('KEY', 'TYPE')
                AND ifNull(keys, '') = ifNull(lagInFrame(keys) OVER w, '')
                AND ifNull(text_len, -1) = ifNull(lagInFrame(text_len) OVER w, -1))
           ) AS is_repeat
    FROM {database}.actions
    WINDOW w AS (PARTITION BY session_id ORDER BY seq ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)
)
GROUP BY session_id;

-- Trace statistics per task, with what was asked (task_requests) and where it ran (node_regions).
CREATE VIEW IF NOT EXISTS {database}.task_trace_stats {on_cluster} AS
SELECT t.task_id AS task_id, r.tenant AS tenant, r.kind AS kind, r.priority AS priority,
       n.region AS region, n.hw AS hw, t.vin AS vin,
       t.sessions AS sessions, t.steps AS steps, t.duration_s AS duration_s,
       round(t.steps * 60 / greatest(t.duration_s, 1), 2) AS actions_per_minute,
       round(t.duration_s / greatest(t.steps - t.sessions, 1), 3) AS seconds_per_step,
       t.errors AS errors, t.loop_repeats AS loop_repeats, t.outcome AS outcome
FROM
(
    SELECT task_id, argMax(vin, ended_at) AS vin, count() AS sessions, sum(steps) AS steps,
           sum(duration_s) AS duration_s, sum(errors) AS errors, sum(loop_repeats) AS loop_repeats,
           argMax(outcome, ended_at) AS outcome
    FROM {database}.session_stats
    GROUP BY task_id
) AS t
LEFT JOIN
(
    SELECT task_id, any(tenant) AS tenant, any(kind) AS kind, any(priority) AS priority
    FROM {database}.task_requests
    GROUP BY task_id
) AS r ON t.task_id = r.task_id
LEFT JOIN {database}.node_regions AS n ON t.vin = n.vin
SETTINGS join_use_nulls = 1;
