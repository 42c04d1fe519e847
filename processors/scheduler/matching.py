"""The matcher: per-pool task queues and idle-node sets, two-sided matching, preemption, requeue.

``Scheduler`` holds everything for the pools it owns and is driven by four calls, each returning the
output records to publish (``Out``: topic, key, value), in order:

* ``on_telemetry(rec)``  fleet.telemetry.v1 -> node state, eligibility, preemption, matching
* ``on_request(rec)``    tasks.requests.v1  -> REQUESTED + QUEUED (or REJECTED / EXPIRED), matching
* ``on_status(rec)``     tasks.status.v1    -> STARTED / COMPLETED / FAILED (+ REQUEUED), reliability
* ``on_tick(now)``       the clock          -> leases, claim timeouts, deadlines, throttle ends, hand-offs

Pools are regions: a node belongs to the pool of the region it reports; a task to its ``region``. A
task with no region ("any") starts in one pool (the one with most idle nodes when this instance owns
all pools, else a hash of the task_id over ``config.pools``) and, if it waits ``spill_after_s``
without a match, moves on to the next pool in a ring (a ``HANDOFF`` record when the next pool belongs
to another instance). So every decision needs only one pool's state, and the state can be
partitioned by pool: repartition telemetry, requests and status by pool, keep node dicts (key vin)
and task dicts (key task_id) in changelogged tables co-partitioned with that stream.

Decisions are deterministic functions of (state, input): ties are broken by hashes, never by dict
or set order (a pick walks whole hash shards of the idle set), and ``assignment_id = uuid5(task_id,
attempt)``. A worker restored from its tables and fed the same input again publishes the very same
records. Memos are never an input: the ranking's stay probabilities (``stay_cache``) are pure
functions of (node state, duration class, time step), so an empty memo decides as a warm one.

Invariants (``check_invariants`` asserts them; tests call it after every step): a node holds at most
``capacity`` tasks; an active task is held by at most one node and is in its pool's queue iff QUEUED;
status reports for any assignment but the current one are ignored, except a late COMPLETED (below);
a task_id is accepted once.

Late statuses: a node's status reaches the matcher later than the telemetry that drives its clock, so a
claim timeout, preemption or deadline may take an assignment back (at event time R) after the node had
already completed it. A COMPLETED with ts < R that arrives within ``late_status_s`` still completes the
task, as in-order delivery would have: a newer assignment is revoked (REVOKE + PREEMPTED, reason
COMPLETED_EARLIER, so the lifecycle ends it; not counted as a preemption), a queued copy leaves the
queue, an EXPIRED or FAILED end is replaced. A task is never COMPLETED twice. A late STARTED or FAILED
stays stale: the node was told to stop, and the task was already requeued.

Hostile input (each record is judged on its own, and no record can disable the matcher):

* **Event time**: a record whose ``ts`` is more than ``max_future_skew_s`` past its arrival (the Kafka
  timestamp the wiring passes as ``arrival_ms``; for telemetry, the scheduler's own clock when none is
  known) raises
  ``InvalidRecord(FUTURE_TIMESTAMP)`` before it touches anything: it never moves the clock, a lease or a
  node. Never the wall clock: the main job replays a simulated past.
* **Bounded work**: nothing loops over a count taken from a record (attempts, hops).
* **Bounded memory** (``sizes()`` for the gauges): ``nodes`` forgets a node silent for ``node_ttl_s``
  that holds no work; at most ``max_sites`` datacenter sites are kept; ``tasks`` keeps finished tasks
  ``tombstone_ttl_s`` and at most ``max_queued_tasks`` waiting per pool; a pool with no node and no queue
  is dropped; the timer heap is compacted to its live entries when it outgrows the state.
"""

from __future__ import annotations

import bisect
import heapq
import zlib
from collections import Counter
from collections.abc import Iterable
from typing import Any

from processors.scheduler._time import to_ms
from processors.scheduler.config import DEFAULT_CONFIG, HW_RANK, SchedulerConfig
from processors.scheduler.eligibility import (
    LEASE_EXPIRED,
    NodeState,
    TelemetryResult,
    apply_telemetry,
    evaluate,
    is_ready,
    next_change_at,
    owner_present,
)
from processors.scheduler.exceptions import InvalidRecord
from processors.scheduler.placement import (
    CAR,
    DATACENTER,
    SHED_LOAD,
    SITE,
    SPILLOVER_ISLANDED,
    battery_minutes,
    choose,
    open_to_work,
    pick_site,
    shed_plan,
    shed_reason,
    site_dropped,
    would_use_site,
)
from processors.scheduler.prediction import remember_pick, stay_probability
from processors.scheduler.presence import mark_owner_back, presence_reason
from processors.scheduler.records import (
    HANDOFF,
    Out,
    assignment_record,
    lifecycle_record,
    node_record,
    spillover_alert,
    spillover_record,
)
from processors.scheduler.reliability import is_trusted, record_failure, record_success
from processors.scheduler.sites import (
    ISLANDED,
    SEVERITY,
    Episode,
    SiteState,
    check_capacity,
    check_power_state,
)
from processors.scheduler.stay_cache import StayCache
from processors.scheduler.tasks import (
    ACTIVE,
    ASSIGNED,
    CANNOT_FINISH,
    COMPLETED,
    EXPIRED,
    FAILED,
    MAX_ATTEMPT,
    MAX_REVOKED,
    MOVED,
    QUEUED,
    REJECTED,
    RUNNING,
    TERMINAL,
    Task,
    assignment_id_for,
    finishes_in_time,
    order_key,
    validate_request,
)
from streams.deadletter import FUTURE_TIMESTAMP, VALIDATION
from streams.event_time import future_skew_error
from streams.sites import is_site_vin, site_of

__all__ = ["Scheduler", "pool_for_request", "pool_for_telemetry"]

N_SHARDS = 1024  # free-set shards: ~100 idle nodes each at 100k, so a pick scans a few of them
STATE_VERSION = 1
_MIN_COMPACT_TIMERS = 4096  # the timer heap is compacted past max(this, 4 x (nodes + tasks)) entries


def _crc(text: str) -> int:
    return zlib.crc32(text.encode())


def pool_for_telemetry(rec: dict[str, Any]) -> str:
    """The pool (repartition key) of a telemetry record."""
    return str(rec.get("region") or "")


def pool_for_request(rec: dict[str, Any], cfg: SchedulerConfig) -> str:
    """The pool (repartition key) of a request: its region, else a stable hash over ``cfg.pools``."""
    if rec.get("region"):
        return str(rec["region"])
    if not cfg.pools:
        return ""
    return cfg.pools[_crc(str(rec.get("task_id"))) % len(cfg.pools)]


class _Pool:
    """Derived indexes of one pool (rebuilt from node and task state on restore, never persisted)."""

    __slots__ = ("name", "queue", "free", "free_count", "members", "sites")

    def __init__(self, name: str) -> None:
        self.name = name
        self.members = 0  # nodes whose pool this is (a pool with none and an empty queue is dropped)
        self.queue: list[tuple[tuple[float, int, str], str]] = []  # sorted (order_key, task_id)
        # Eligible nodes by shard (vin hash % N_SHARDS); a shard exists only while it holds a node.
        self.free: dict[int, set[str]] = {}
        self.free_count = 0
        self.sites: set[str] = set()  # datacenter sites of this region (ids; ``Scheduler.sites``)

    def add_free(self, vin: str) -> bool:
        shard = self.free.get(_crc(vin) % N_SHARDS)
        if shard is None:
            shard = self.free[_crc(vin) % N_SHARDS] = set()
        elif vin in shard:
            return False
        shard.add(vin)
        self.free_count += 1
        return True

    def discard_free(self, vin: str) -> None:
        index = _crc(vin) % N_SHARDS
        shard = self.free.get(index)
        if shard is not None and vin in shard:
            shard.discard(vin)
            self.free_count -= 1
            if not shard:
                del self.free[index]

    def is_free(self, vin: str) -> bool:
        return vin in self.free.get(_crc(vin) % N_SHARDS, ())

    def enqueue(self, key: tuple[float, int, str], task_id: str) -> None:
        bisect.insort(self.queue, (key, task_id))

    def dequeue(self, key: tuple[float, int, str], task_id: str) -> None:
        i = bisect.bisect_left(self.queue, (key, task_id))
        if i < len(self.queue) and self.queue[i] == (key, task_id):
            del self.queue[i]


class Scheduler:
    """All matching state of the pools one worker owns. Not thread-safe; one event at a time."""

    def __init__(self, config: SchedulerConfig | None = None) -> None:
        self.cfg = config or DEFAULT_CONFIG
        self.clock = 0  # event-time clock (ms): max of event times and ticks seen
        self.record_clock = 0  # max event time of records alone (ticks excluded): the worker's tick anchor
        self.nodes: dict[str, NodeState] = {}
        self.tasks: dict[str, Task] = {}
        self.sites: dict[str, SiteState] = {}  # datacenter sites (stored with the nodes, key site:<id>)
        self.counters: Counter[str] = Counter()  # for metrics; not persisted
        self._pools: dict[str, _Pool] = {}
        self._timers: list[tuple[int, str, str]] = []  # heap of (at, kind, key), validated when popped
        self._touched: set[str] = set()  # pools whose supply or demand changed: match them
        self._dirty_nodes: set[str] = set()
        self._dirty_tasks: set[str] = set()
        self._episodes_moved: set[str] = set()  # sites whose open episode moved work (an UPDATE is due)
        self._compact_at = _MIN_COMPACT_TIMERS
        self._stay = StayCache(self.cfg)  # ranking's stay probabilities (a memo: never persisted)

    # ------------------------------------------------------------------ public event handlers

    def _event_ms(self, rec: dict[str, Any], arrival_ms: int | None, what: str) -> int:
        """The record's ``ts`` (ms), checked against its arrival before any use. With no arrival known
        (direct calls), telemetry is checked against the scheduler's clock, as it always was."""
        try:
            ts = to_ms(rec["ts"])
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidRecord(VALIDATION, f"{what} ts {rec['ts']!r} is not a timestamp: {exc}") from None
        if arrival_ms is not None and arrival_ms > 0:
            error = future_skew_error(ts, arrival_ms, self.cfg.max_future_skew_s)
        elif what == "telemetry":
            error = future_skew_error(ts, self.clock, self.cfg.max_future_skew_s)
        else:
            error = None
        if error is not None:
            self.counters[f"{what}_future"] += 1
            ref = "its arrival" if arrival_ms else "the scheduler clock"
            raise InvalidRecord(FUTURE_TIMESTAMP, f"{what} ts {ts} is ahead of {ref}: {error}")
        return ts

    def on_telemetry(
        self, rec: dict[str, Any], now: int | None = None, arrival_ms: int | None = None
    ) -> list[Out]:
        """``arrival_ms``: when the record reached Kafka (its timestamp), if known. An event cannot be
        later than its arrival, so a live record is accepted even while the clock lags (replaying an
        older backlog); a far-future timestamp (a broken car clock) is rejected (``_event_ms``)."""
        vin = rec.get("vin")
        if not vin or not isinstance(vin, str) or rec.get("ts") is None:
            raise InvalidRecord(VALIDATION, "telemetry needs vin and ts")
        ts = self._event_ms(rec, arrival_ms, "telemetry")
        now = self._advance(ts if now is None else to_ms(now))
        out: list[Out] = []
        node = self.nodes.get(vin)
        if node is None:
            node = NodeState(
                vin=vin, capacity=self.cfg.default_capacity, reliability=self.cfg.reliability_prior
            )
        result, _ended = apply_telemetry(node, rec, self.cfg)
        if result is not TelemetryResult.APPLIED:
            self.counters[f"telemetry_{result.value}"] += 1
            return out
        self.counters["telemetry_applied"] += 1
        new_pool = node.region
        if vin not in self.nodes:
            self.nodes[vin] = node
            node.pool = new_pool
            self._pool(new_pool).members += 1
        elif node.pool != new_pool:
            if node.pool:
                self._set_free(node, False)
                for task_id in list(node.running):
                    self._preempt(self.tasks[task_id], "REGION_CHANGED", now, out)
            self._leave_pool(node.pool)
            node.pool = new_pool
            self._pool(new_pool).members += 1
        self._refresh_node(node, now, out)
        self._match_touched(now, out)
        return out

    def on_request(
        self,
        rec: dict[str, Any],
        now: int | None = None,
        pool: str | None = None,
        arrival_ms: int | None = None,
    ) -> list[Out]:
        task_id = rec.get("task_id")
        if not task_id or not isinstance(task_id, str) or rec.get("ts") is None:
            raise InvalidRecord(VALIDATION, "request needs task_id and ts")
        ts = self._event_ms(rec, arrival_ms, "request")
        now = self._advance(ts if now is None else to_ms(now))
        out: list[Out] = []
        old = self.tasks.get(task_id)
        if old is not None:  # also when MOVED: a redelivered request must not revive a task that moved on
            self.counters["request_duplicate"] += 1
            return out
        reason = validate_request(rec, self.cfg)
        if pool is None:
            pool = rec.get("region") or self._route_any(task_id)
        queue = self._pools.get(pool or "")
        if reason is None and queue is not None and len(queue.queue) >= self.cfg.max_queued_tasks:
            reason = "QUEUE_FULL"
        if reason is not None:
            prio = rec.get("priority")
            task = Task(
                task_id=task_id,
                pool=pool or "",
                requested_ts=ts,
                priority=prio if isinstance(prio, int) and 0 <= prio <= 9 else 0,
                est_duration_s=0,
                tenant=rec.get("tenant"),
                kind=rec.get("kind"),
            )
            out.append(lifecycle_record(task, "REQUESTED", ts))
            self._finish(task, REJECTED, now, out, reason=reason)
            self.counters["request_rejected"] += 1
            return out
        task = Task.from_request(rec, pool)
        task.queued_ts = now
        out.append(lifecycle_record(task, "REQUESTED", ts))
        if task.deadline is not None and task.deadline <= now:
            self._finish(task, EXPIRED, now, out, reason="DEADLINE_PASSED")
            return out
        if not finishes_in_time(task, now, self.cfg.deadline_fit):
            self._finish(task, EXPIRED, now, out, reason=CANNOT_FINISH)
            return out
        self.counters["request_accepted"] += 1
        self._queue(task, now)
        out.append(lifecycle_record(task, "QUEUED", now))
        if task.deadline is not None:
            self._push(task.deadline, "deadline", task_id)
        self._match_touched(now, out)
        return out

    def on_status(
        self, rec: dict[str, Any], now: int | None = None, arrival_ms: int | None = None
    ) -> list[Out]:
        task_id, aid, vin, status = (
            rec.get("task_id"),
            rec.get("assignment_id"),
            rec.get("vin"),
            rec.get("status"),
        )
        if (
            not task_id
            or not aid
            or rec.get("ts") is None
            or status not in ("STARTED", "COMPLETED", "FAILED")
        ):
            raise InvalidRecord(VALIDATION, "status needs task_id, assignment_id, ts and a known status")
        ts = self._event_ms(rec, arrival_ms, "status")
        now = self._advance(ts if now is None else to_ms(now))
        out: list[Out] = []
        task = self.tasks.get(task_id)
        if task is None:
            self.counters["status_unknown_task"] += 1
            return out
        if (
            task.state not in (ASSIGNED, RUNNING)
            or aid != task.assignment_id
            or vin != task.vin
            or vin is None
        ):
            if status == "COMPLETED" and self._late_completion(task, aid, vin, ts, now, out):
                self._match_touched(now, out)
            else:
                self.counters["status_stale"] += 1
                if status == "FAILED" and self._late_owner_back(
                    task, aid, vin, ts, rec.get("error"), now, out
                ):
                    self._match_touched(now, out)
            return out
        if is_site_vin(vin):
            self._site_status(task, status, rec.get("error"), now, out)
            self._match_touched(now, out)
            return out
        node = self.nodes[vin]
        if status == "STARTED":
            if task.state == RUNNING:
                self.counters["status_duplicate"] += 1
                return out
            task.state = RUNNING
            self._dirty_tasks.add(task_id)
            out.append(lifecycle_record(task, "STARTED", now, vin=vin, aid=aid))
        elif status == "COMPLETED":
            record_success(node, self.cfg)
            self._release(task)
            self._finish(task, COMPLETED, now, out, vin=vin, aid=aid)
            self._refresh_node(node, now, out)
        elif (presence := presence_reason(rec.get("error"))) is not None:
            self._owner_back(task, node, presence, ts, now, out)
        else:
            record_failure(node, now, self.cfg)
            self._release(task)
            task.failures += 1
            error = rec.get("error") or "FAILED"
            if task.failures >= self.cfg.max_failures:
                self._finish(task, FAILED, now, out, vin=vin, aid=aid, reason=f"MAX_FAILURES: {error}")
            else:
                out.append(lifecycle_record(task, "FAILED", now, vin=vin, aid=aid, reason=error))
                self._requeue(task, now, "RETRY", out)
            self._refresh_node(node, now, out)
        self._match_touched(now, out)
        return out

    def on_tick(self, now: Any) -> list[Out]:
        """Advance the clock to ``now`` (ms or datetime) and run everything that became due."""
        now = self._advance(to_ms(now), from_record=False)
        out: list[Out] = []
        while self._timers and self._timers[0][0] <= now:  # (a compaction may replace the list)
            at, kind, key = heapq.heappop(self._timers)
            self._fire(at, kind, key, now, out)
        self._match_touched(now, out)
        return out

    def on_handoff(self, task_dict: dict[str, Any], now: int | None = None) -> list[Out]:
        """Receive an any-region task another instance handed to one of our pools."""
        now = self._advance(self.clock if now is None else to_ms(now), from_record=False)
        task = Task.from_dict(task_dict)
        old = self.tasks.get(task.task_id)
        # A task may come back to a pool it left (MOVED); a redelivered copy of an older hand-off
        # (fewer hops than the tombstone) must not revive it here while it waits elsewhere.
        if old is not None and (old.state != MOVED or task.hops <= old.hops):
            self.counters["handoff_duplicate"] += 1
            return []
        task.state, task.vin, task.assignment_id, task.done_ts = QUEUED, None, None, None
        out: list[Out] = []
        if not finishes_in_time(task, now, self.cfg.deadline_fit):
            self._finish(task, EXPIRED, now, out, reason=CANNOT_FINISH)
            return out
        self._queue(task, now)
        if task.deadline is not None:
            self._push(task.deadline, "deadline", task.task_id)
        self._match_touched(now, out)
        return out

    def on_site_capacity(self, rec: dict[str, Any], arrival_ms: int | None = None) -> list[Out]:
        """sites.capacity.v1: a site's slots and emulator power budget (``sites.SiteState``)."""
        site_id, _ = check_capacity(rec)
        ts = self._event_ms(rec, arrival_ms, "capacity")
        now = self._advance(ts)
        site = self._site(site_id)
        old_region = site.region
        if not site.apply_capacity(rec, ts):
            self.counters["capacity_stale"] += 1
            return []
        if old_region != site.region:
            if old_region is not None:
                self._pool(old_region).sites.discard(site_id)
                self._drop_if_empty(old_region)
            self._pool(str(site.region)).sites.add(site_id)
        out: list[Out] = []
        self._site_changed(site, now, out)
        self._match_touched(now, out)
        return out

    def on_site_power(self, rec: dict[str, Any], arrival_ms: int | None = None) -> list[Out]:
        """sites.power_state.v1: a site's power state; opens and closes spillover episodes, sheds."""
        site_id, _ = check_power_state(rec)
        ts = self._event_ms(rec, arrival_ms, "power_state")
        now = self._advance(ts)
        site = self._site(site_id)
        if not site.apply_power(rec, ts):
            self.counters["power_state_stale"] += 1
            return []
        out: list[Out] = []
        self._site_changed(site, now, out)
        self._match_touched(now, out)
        return out

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        """Whole state, JSON-safe. Per-key persistence: ``drain_dirty`` + ``from_parts``."""
        return {
            "version": STATE_VERSION,
            "clock": self.clock,
            "nodes": [self.nodes[v].to_dict() for v in sorted(self.nodes)]
            + [self.sites[k].to_dict() for k in sorted(self.sites)],
            "tasks": [self.tasks[t].to_dict() for t in sorted(self.tasks)],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], config: SchedulerConfig | None = None) -> Scheduler:
        if d.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported scheduler state version {d.get('version')!r}")
        return cls.from_parts(d["nodes"], d["tasks"], d["clock"], config)

    @classmethod
    def from_parts(
        cls,
        nodes: Iterable[dict[str, Any]],
        tasks: Iterable[dict[str, Any]],
        clock: int,
        config: SchedulerConfig | None = None,
    ) -> Scheduler:
        """Rebuild from per-key dicts (e.g. faust table values) in any order."""
        s = cls(config)
        s.clock = int(clock)
        for nd in nodes:
            if nd.get("kind") == "site":
                site = SiteState.from_dict(nd)
                s.sites[site.site_id] = site
                if site.region is not None:
                    s._pool(site.region).sites.add(site.site_id)
                continue
            node = NodeState.from_dict(nd)
            s.nodes[node.vin] = node
            pool = s._pool(node.pool)
            pool.members += 1
            if node.eligible:
                pool.add_free(node.vin)
            if node.timer_at is not None:
                heapq.heappush(s._timers, (node.timer_at, "node", node.vin))
        for td in tasks:
            task = Task.from_dict(td)
            s.tasks[task.task_id] = task
            s._task_timers(task)
            if task.state == QUEUED:
                s._pool(task.pool).enqueue(order_key(task, s.cfg), task.task_id)
        s._compact_at = max(_MIN_COMPACT_TIMERS, 4 * (len(s.nodes) + len(s.tasks)))
        return s

    def drain_dirty(
        self,
    ) -> tuple[dict[str, dict[str, Any] | None], dict[str, dict[str, Any] | None]]:
        """Nodes and tasks changed since the last call, as ``{key: dict}``; a value None = deleted."""
        vins, task_ids = self.drain_dirty_keys()
        nodes = {v: self.node_dict(v) for v in vins}
        tasks = {t: (self.tasks[t].to_dict() if t in self.tasks else None) for t in task_ids}
        return nodes, tasks

    def drain_dirty_keys(self) -> tuple[list[str], list[str]]:
        """Vins (sites as ``site:<id>``) and task_ids changed since the last call, sorted. The caller
        reads their state (``nodes``, ``sites``, ``tasks``; absent = deleted) before the next event."""
        vins, task_ids = sorted(self._dirty_nodes), sorted(self._dirty_tasks)
        self._dirty_nodes.clear()
        self._dirty_tasks.clear()
        return vins, task_ids

    def node_dict(self, vin: str) -> dict[str, Any] | None:
        """The persisted dict of node (or site) ``vin``; None when it is gone."""
        site_id = site_of(vin)
        if site_id is not None:
            site = self.sites.get(site_id)
            return None if site is None else site.to_dict()
        node = self.nodes.get(vin)
        return None if node is None else node.to_dict()

    # ------------------------------------------------------------------ queries

    def queue(self, pool: str) -> list[str]:
        """Task ids waiting in ``pool``, in service order."""
        p = self._pools.get(pool)
        return [t for _, t in p.queue] if p else []

    def idle_nodes(self, pool: str) -> list[str]:
        p = self._pools.get(pool)
        return sorted(v for shard in p.free.values() for v in shard) if p else []

    def pools(self) -> list[str]:
        return sorted(self._pools)

    def sizes(self) -> dict[str, int]:
        """Entries of every map that grows with input (for the gauges; see "Bounded memory")."""
        return {
            "nodes": len(self.nodes),
            "tasks": len(self.tasks),
            "pools": len(self._pools),
            "queued": sum(len(p.queue) for p in self._pools.values()),
            "timers": len(self._timers),
            "sites": len(self.sites),
        }

    def check_invariants(self) -> None:
        """Assert the structural invariants (used by tests and, cheaply sampled, by the wiring)."""
        holder: dict[str, str] = {}
        for vin, node in self.nodes.items():
            assert len(node.running) <= node.capacity, (
                f"{vin} holds {node.running} > capacity {node.capacity}"
            )
            assert len(set(node.running)) == len(node.running), f"{vin} holds a task twice"
            for tid in node.running:
                assert tid not in holder, f"task {tid} held by {holder.get(tid)} and {vin}"
                holder[tid] = vin
                task = self.tasks[tid]
                assert task.state in (ASSIGNED, RUNNING) and task.vin == vin, (
                    f"{tid} on {vin} but {task.state}"
                )
            in_free = self._pools[node.pool].is_free(vin)
            assert in_free == node.eligible, (
                f"{vin} free-set membership {in_free} != eligible {node.eligible}"
            )
        for site_id, site in self.sites.items():
            assert len(set(site.running)) == len(site.running), f"site {site_id} holds a task twice"
            for tid in site.running:
                assert tid not in holder, f"task {tid} held by {holder.get(tid)} and site {site_id}"
                holder[tid] = site.vin
                task = self.tasks[tid]
                assert task.state in (ASSIGNED, RUNNING) and task.vin == site.vin, f"{tid} on {site_id}"
            if site.region is not None:
                assert site_id in self._pools[site.region].sites, f"site {site_id} not in its pool"
        queued: set[str] = set()
        members = Counter(node.pool for node in self.nodes.values())
        for name, pool in self._pools.items():
            assert pool.members == members[name], f"pool {name} counts {pool.members} != {members[name]}"
            assert pool.queue == sorted(pool.queue), f"queue of {name} out of order"
            assert pool.free_count == sum(len(s) for s in pool.free.values())
            assert all(pool.free.values()), f"an empty free shard kept in {name}"
            for _, tid in pool.queue:
                task = self.tasks[tid]
                assert task.state == QUEUED and task.pool == name, f"{tid} in queue {name} but {task.state}"
                assert tid not in queued, f"{tid} queued twice"
                queued.add(tid)
        for tid, task in self.tasks.items():
            if task.state in (ASSIGNED, RUNNING):
                assert holder.get(tid) == task.vin, f"{tid} {task.state} on {task.vin} but not held"
            elif task.state == QUEUED:
                assert tid in queued, f"{tid} QUEUED but not in a queue"
            else:
                assert task.state in TERMINAL and task.vin is None

    # ------------------------------------------------------------------ internals: time

    def _advance(self, t: int, from_record: bool = True) -> int:
        if from_record and t > self.record_clock:
            self.record_clock = t
        if t > self.clock:
            self.clock = t
        return self.clock

    def _push(self, at: int | float, kind: str, key: str) -> None:
        heapq.heappush(self._timers, (int(at), kind, key))
        if len(self._timers) > self._compact_at:
            self._compact_timers()

    def _compact_timers(self) -> None:
        """Keep only the entries that would still do something when popped (exactly what ``_fire``
        checks), once each: stale entries (a node re-armed, a task gone) otherwise pile up, e.g. the
        deadline of every task that finished long before it."""
        live = {entry for entry in self._timers if self._live(*entry)}
        self._timers = sorted(live)  # a sorted list is a heap
        self._compact_at = max(_MIN_COMPACT_TIMERS, 4 * (len(self.nodes) + len(self.tasks)), 2 * len(live))

    def _task_timers(self, task: Task) -> None:
        """(Re)create the timers implied by a task's state (used on restore)."""
        cfg = self.cfg
        if task.state in ACTIVE and task.deadline is not None:
            self._push(task.deadline, "deadline", task.task_id)
        start_by = task.latest_start(self.cfg.deadline_fit)
        if task.state == QUEUED and start_by is not None:
            self._push(start_by + 1, "start_by", task.task_id)
        if task.state == ASSIGNED and task.assigned_ts is not None:
            self._push(task.assigned_ts + cfg.claim_timeout_s * 1000, "claim", task.task_id)
        if task.state == QUEUED and task.region is None and task.queued_ts is not None:
            self._push(self._spill_at(task), "spill", task.task_id)
        if task.state in TERMINAL and task.done_ts is not None:
            self._push(task.done_ts + cfg.tombstone_ttl_s * 1000, "gc", task.task_id)

    def _live(self, at: int, kind: str, key: str) -> bool:
        """Whether the timer ``(at, kind, key)`` still stands for something (else popping it is a no-op)."""
        cfg = self.cfg
        if kind == "node":
            node = self.nodes.get(key)
            return node is not None and node.timer_at == at
        task = self.tasks.get(key)
        if task is None:
            return False
        if kind == "deadline":
            return task.state in ACTIVE and task.deadline == at
        if kind == "start_by":
            start_by = task.latest_start(self.cfg.deadline_fit)
            return task.state == QUEUED and start_by is not None and start_by + 1 == at
        if kind == "claim":
            return (
                task.state == ASSIGNED
                and task.assigned_ts is not None
                and int(task.assigned_ts + cfg.claim_timeout_s * 1000) == at
            )
        if kind == "spill":
            return task.state == QUEUED and task.region is None and self._spill_at(task) == at
        return (
            kind == "gc"
            and task.state in TERMINAL
            and task.done_ts is not None
            and int(task.done_ts + cfg.tombstone_ttl_s * 1000) == at
        )

    def _fire(self, at: int, kind: str, key: str, now: int, out: list[Out]) -> None:
        if not self._live(at, kind, key):
            return
        if kind == "node":
            node = self.nodes[key]
            node.timer_at = None
            if not node.running and now - node.ts > self.cfg.node_ttl_s * 1000:
                self._forget_node(node)
            else:
                self._refresh_node(node, now, out)
            return
        task = self.tasks[key]
        if kind == "deadline":
            self._expire(task, now, out)
        elif kind == "start_by":
            self._expire(task, now, out, CANNOT_FINISH)
        elif kind == "claim":
            self._claim_timeout(task, now, out)
        elif kind == "spill":
            self._spill(task, now, out)
        else:
            del self.tasks[key]
            self._dirty_tasks.add(key)

    # ------------------------------------------------------------------ internals: nodes

    def _pool(self, name: str) -> _Pool:
        pool = self._pools.get(name)
        if pool is None:
            pool = self._pools[name] = _Pool(name)
        return pool

    def _leave_pool(self, name: str) -> None:
        """A node left pool ``name``."""
        pool = self._pools.get(name)
        if pool is not None:
            pool.members -= 1
            self._drop_if_empty(name)

    def _drop_if_empty(self, name: str) -> None:
        """Drop pool ``name`` once no node and no queued task is in it (pool names come from input)."""
        pool = self._pools.get(name)
        if (
            pool is not None
            and pool.members <= 0
            and not pool.queue
            and pool.free_count == 0
            and not pool.sites
        ):
            del self._pools[name]
            self._touched.discard(name)

    def _forget_node(self, node: NodeState) -> None:
        """Drop a node silent for ``node_ttl_s`` that holds no work (it is re-learnt if it comes back)."""
        self._set_free(node, False)
        del self.nodes[node.vin]
        self._dirty_nodes.add(node.vin)
        self._leave_pool(node.pool)
        self.counters["node_forgotten"] += 1

    def _set_free(self, node: NodeState, free: bool) -> None:
        pool = self._pool(node.pool)
        if free:
            if pool.add_free(node.vin):
                self._touched.add(node.pool)
        else:
            pool.discard_free(node.vin)

    def _refresh_node(self, node: NodeState, now: int, out: list[Out]) -> None:
        """Re-evaluate ``node`` at ``now``; preempt, update the idle set, publish, schedule a re-check."""
        cfg = self.cfg
        if node.owner_since is not None and not owner_present(node, now, cfg):
            node.owner_since = None  # the owner left (a new session, or owner_away_s went by)
        eligible, reason = evaluate(node, now, cfg)
        claim_kept = reason == LEASE_EXPIRED and now - node.lease_ts <= cfg.claim_lease_s * 1000
        if reason in cfg.preempt_reasons and node.running and not claim_kept:
            for task_id in list(node.running):
                self._preempt(self.tasks[task_id], reason, now, out)
            eligible, reason = evaluate(node, now, cfg)
        if is_ready(reason):
            if node.ready_since is None:
                node.ready_since = now
        else:
            node.ready_since = None
        node.eligible, node.reason = eligible, reason
        self._set_free(node, eligible)
        self._dirty_nodes.add(node.vin)
        soc_band = None if node.soc_pct is None else int(node.soc_pct // 5)
        material = (
            eligible,
            reason,
            node.region,
            node.pool,
            node.hw,
            node.charge_state,
            node.gear,
            node.at_home,
            node.scheduled_departure,
            len(node.running),
            node.capacity,
            round(node.reliability, 2),
            soc_band,
        )
        sig = _crc(repr(material))
        if sig != node.pub_sig or node.pub_ts < 0 or now - node.pub_ts >= cfg.node_republish_s * 1000:
            node.pub_sig, node.pub_ts = sig, now
            out.append(node_record(node, now, cfg))
        at = next_change_at(node, now, cfg)
        if at is not None and (node.timer_at is None or node.timer_at <= now or at < node.timer_at):
            node.timer_at = at
            self._push(at, "node", node.vin)

    # ------------------------------------------------------------------ internals: tasks

    def _route_any(self, task_id: str) -> str:
        if self.cfg.local_pools is not None or not self._pools:
            return pool_for_request({"task_id": task_id}, self.cfg) or next(iter(sorted(self._pools)), "")
        names = self.cfg.pools or tuple(sorted(p for p in self._pools if p))
        if not names:
            return ""
        return max(names, key=lambda p: (self._pools[p].free_count if p in self._pools else 0, p))

    def _queue(self, task: Task, now: int) -> None:
        task.state = QUEUED
        task.queued_ts = now
        self.tasks[task.task_id] = task
        self._dirty_tasks.add(task.task_id)
        self._pool(task.pool).enqueue(order_key(task, self.cfg), task.task_id)
        self._touched.add(task.pool)
        if task.region is None:
            self._push(self._spill_at(task), "spill", task.task_id)
        start_by = task.latest_start(self.cfg.deadline_fit)
        if start_by is not None:
            self._push(start_by + 1, "start_by", task.task_id)

    def _spill_at(self, task: Task) -> int:
        """When a waiting any-region task moves on: ``spill_after_s``, doubling per hop (at most 32x)."""
        assert task.queued_ts is not None
        return int(task.queued_ts + self.cfg.spill_after_s * 1000 * 2 ** min(max(task.hops, 0), 5))

    def _finish(
        self,
        task: Task,
        state: str,
        now: int,
        out: list[Out],
        *,
        vin: str | None = None,
        aid: str | None = None,
        reason: str | None = None,
        attempt: int | None = None,
    ) -> None:
        task.state, task.done_ts = state, now
        task.vin = task.assignment_id = None
        self.tasks[task.task_id] = task
        self._dirty_tasks.add(task.task_id)
        self._push(now + self.cfg.tombstone_ttl_s * 1000, "gc", task.task_id)
        if state != MOVED:
            self.counters[f"task_{state.lower()}"] += 1
            out.append(lifecycle_record(task, state, now, vin=vin, aid=aid, reason=reason, attempt=attempt))

    def _release(self, task: Task) -> None:
        """Take ``task`` off its node (the caller re-evaluates the node)."""
        if task.vin is None:
            return
        site_id = site_of(task.vin)
        if site_id is not None:
            site = self.sites[site_id]
            site.running.remove(task.task_id)
            self._dirty_nodes.add(site.vin)
            if site.region is not None:
                self._touched.add(site.region)  # a slot is free
            return
        node = self.nodes[task.vin]
        node.running.remove(task.task_id)
        self._dirty_nodes.add(node.vin)

    def _requeue(
        self,
        task: Task,
        now: int,
        reason: str,
        out: list[Out],
        *,
        vin: str | None = None,
        aid: str | None = None,
    ) -> None:
        task.vin = task.assignment_id = None
        task.assigned_ts = None
        if task.attempt >= MAX_ATTEMPT:  # bounded: lifecycle and routes never see a larger attempt
            self._finish(task, FAILED, now, out, reason="MAX_ATTEMPTS")
            return
        if not finishes_in_time(task, now, self.cfg.deadline_fit):
            self._finish(task, EXPIRED, now, out, vin=vin, aid=aid, reason=CANNOT_FINISH)
            return
        self._queue(task, now)
        out.append(lifecycle_record(task, "REQUEUED", now, vin=vin, aid=aid, reason=reason))
        self.counters["task_requeued"] += 1

    def _revoke(self, task: Task, reason: str, now: int, out: list[Out]) -> tuple[str, str]:
        vin, aid = task.vin, task.assignment_id
        assert vin is not None and aid is not None
        out.append(assignment_record(task, "REVOKE", vin, aid, now, self.cfg, reason))
        task.remember_revoke(aid, vin, now)
        self._release(task)
        return vin, aid

    def _preempt(self, task: Task, reason: str, now: int, out: list[Out]) -> None:
        vin, aid = self._revoke(task, reason, now, out)
        task.preemptions += 1
        self.counters["task_preempted"] += 1
        out.append(lifecycle_record(task, "PREEMPTED", now, vin=vin, aid=aid, reason=reason))
        self._requeue(task, now, reason, out)

    def _late_completion(
        self, task: Task, aid: str, vin: str | None, ts: int, now: int, out: list[Out]
    ) -> bool:
        """Complete ``task`` by the COMPLETED (sent at ``ts``) of an assignment taken back after ``ts``;
        False (nothing changed) if that is not the case. See "Late statuses" in the module docstring."""
        revoked_at = task.revoked_at(aid, vin)
        if vin is None or revoked_at is None or ts >= revoked_at:
            return False
        if task.state in (COMPLETED, MOVED):  # done already, or its state lives with another instance now
            self.counters["status_late_done"] += 1
            return False
        if now - ts > self.cfg.late_status_s * 1000:
            self.counters["status_late_too_late"] += 1
            return False
        holder = None
        if task.state in (ASSIGNED, RUNNING):  # the lifecycle ends every assignment it started
            holder, current = self._revoke(task, "COMPLETED_EARLIER", now, out)
            out.append(
                lifecycle_record(task, "PREEMPTED", now, vin=holder, aid=current, reason="COMPLETED_EARLIER")
            )
        elif task.state == QUEUED:
            self._pool(task.pool).dequeue(order_key(task, self.cfg), task.task_id)
            self._drop_if_empty(task.pool)
        if not is_site_vin(vin):
            record_success(self.nodes[vin], self.cfg)
        self.counters["status_late_completed"] += 1
        # The revoked assignment is one of the last few attempts (MAX_REVOKED revokes, failures between):
        # a bounded look back, whatever ``attempt`` says.
        oldest = max(task.attempt - MAX_REVOKED - self.cfg.max_failures - 1, 0)
        attempts = range(task.attempt, oldest, -1)
        attempt = next((k for k in attempts if assignment_id_for(task.task_id, k) == aid), None)
        self._finish(task, COMPLETED, now, out, vin=vin, aid=aid, reason="REPORTED_LATE", attempt=attempt)
        for v in sorted({vin} if holder is None else {vin, holder}):
            self._refresh_holder(v, now, out)
        return True

    def _owner_back(
        self, task: Task, node: NodeState, reason: str, ts: int, now: int, out: list[Out]
    ) -> None:
        """The node gave the task back because its owner is back (or it refused it as unavailable): not
        a failure of the node or the task. The node turns OWNER_PRESENT (from the report's time ``ts``),
        the task is requeued with its request time and never offered to this node again."""
        vin, aid = node.vin, task.assignment_id
        self._release(task)
        mark_owner_back(node, ts)
        task.exclude(node.vin)
        task.preemptions += 1
        self.counters["task_owner_returned"] += 1
        out.append(lifecycle_record(task, "PREEMPTED", now, vin=vin, aid=aid, reason=reason))
        self._requeue(task, now, reason, out)
        self._refresh_node(node, now, out)

    def _late_owner_back(
        self, task: Task, aid: str, vin: str | None, ts: int, error: Any, now: int, out: list[Out]
    ) -> bool:
        """An owner-back report for an assignment already taken back (it reached the matcher late): the
        node still learns its owner is there, and the task never goes back to it. False if not one."""
        if presence_reason(error) is None or vin is None or vin not in self.nodes:
            return False
        if task.revoked_at(aid, vin) is None:
            return False
        node = self.nodes[vin]
        mark_owner_back(node, ts)
        if task.state in ACTIVE:
            task.exclude(vin)
            self._dirty_tasks.add(task.task_id)
        self.counters["status_late_owner_back"] += 1
        self._refresh_node(node, now, out)
        return True

    def _claim_timeout(self, task: Task, now: int, out: list[Out]) -> None:
        vin, aid = self._revoke(task, "CLAIM_TIMEOUT", now, out)
        self.counters["claim_timeout"] += 1
        if not is_site_vin(vin):
            record_failure(self.nodes[vin], now, self.cfg)
        self._requeue(task, now, "CLAIM_TIMEOUT", out, vin=vin, aid=aid)
        self._refresh_holder(vin, now, out)

    def _expire(self, task: Task, now: int, out: list[Out], reason: str = "DEADLINE_PASSED") -> None:
        vin = aid = None
        if task.state == QUEUED:
            self._pool(task.pool).dequeue(order_key(task, self.cfg), task.task_id)
            self._drop_if_empty(task.pool)
        else:
            vin, aid = self._revoke(task, "DEADLINE", now, out)
        self._finish(task, EXPIRED, now, out, vin=vin, aid=aid, reason=reason)
        if vin is not None:
            self._refresh_holder(vin, now, out)

    def _spill(self, task: Task, now: int, out: list[Out]) -> None:
        names = list(self.cfg.pools) or sorted(p for p in self._pools if p)
        if not names or names == [task.pool]:  # nowhere else to go (yet): look again later
            task.hops += 1
            self._dirty_tasks.add(task.task_id)
            # The backoff caps at 32x, so _spill_at stops moving: never schedule at or before now.
            later = max(self._spill_at(task), now + int(self.cfg.spill_after_s * 1000))
            self._push(later, "spill", task.task_id)
            return
        nxt = names[(names.index(task.pool) + 1) % len(names)] if task.pool in names else names[0]
        self._pool(task.pool).dequeue(order_key(task, self.cfg), task.task_id)
        self._drop_if_empty(task.pool)
        task.hops += 1
        self.counters["task_spilled"] += 1
        if self.cfg.local_pools is None or nxt in self.cfg.local_pools:
            task.pool = nxt
            self._queue(task, now)
            return
        moved = Task.from_dict(task.to_dict())
        moved.pool = nxt
        out.append(Out(HANDOFF, nxt, moved.to_dict()))
        self._finish(task, MOVED, now, out)

    # ------------------------------------------------------------------ internals: sites

    def _site(self, site_id: str) -> SiteState:
        site = self.sites.get(site_id)
        if site is None:
            if len(self.sites) >= self.cfg.max_sites:
                self.counters["site_refused_max_sites"] += 1
                raise InvalidRecord(
                    VALIDATION, f"already {len(self.sites)} sites (max_sites); {site_id!r} refused"
                )
            site = self.sites[site_id] = SiteState(site_id)
        self._dirty_nodes.add(site.vin)
        return site

    def _refresh_holder(self, vin: str, now: int, out: list[Out]) -> None:
        """Re-evaluate whoever held a task just taken back (a site needs nothing: ``_release`` touched it)."""
        if not is_site_vin(vin):
            self._refresh_node(self.nodes[vin], now, out)

    def _owns_site(self, site: SiteState) -> bool:
        """Whether this instance keeps ``site``'s episodes: it owns the pool of the site's region."""
        return site.region is not None and (
            self.cfg.local_pools is None or site.region in self.cfg.local_pools
        )

    def _site_changed(self, site: SiteState, now: int, out: list[Out]) -> None:
        """After a capacity or power record: open, escalate or close the episode, shed, match the pool."""
        if site.region is not None:
            self._touched.add(site.region)
        if not self.cfg.spillover or not self._owns_site(site):
            return
        ep = site.episode
        if site.power_state in ISLANDED:
            if ep is None:
                site.episode = Episode(site.power_since, site.power_state, site.incident_id)
                self.counters["spillover_episode_opened"] += 1
                out.append(spillover_record(site, "OPEN", now))
                out.append(spillover_alert(site, False, now))
            elif SEVERITY[site.power_state] > SEVERITY[ep.worst_state]:
                ep.worst_state = site.power_state
                self._episodes_moved.add(site.site_id)
            self._shed(site, now, out)
        elif ep is not None:  # on the grid again (stable for the retransfer delay): takes work again
            self._flush_episodes(now, out)
            out.append(spillover_record(site, "RESOLVED", now))
            out.append(spillover_alert(site, True, now))
            site.episode = None
            self.counters["spillover_episode_resolved"] += 1

    def _shed(self, site: SiteState, now: int, out: list[Out]) -> None:
        """Take sessions off a site at RESERVE / SHEDDING until the rest fit its budget (``shed_plan``)."""
        plan = shed_plan(site, (self.tasks[t] for t in site.running), self.cfg)
        if not plan:
            return
        ep = site.episode
        assert ep is not None
        reason = shed_reason(site)
        for task in plan:
            before = battery_minutes(site.battery_runtime_min, site.load_mw, site.shed_mw)
            site.shed_mw += site.session_mw(self.cfg)
            after = battery_minutes(site.battery_runtime_min, site.load_mw, site.shed_mw)
            if before is not None and after is not None:
                ep.battery_minutes_saved = (ep.battery_minutes_saved or 0.0) + after - before
            ep.sessions_shed += 1
            ep.slot_hours_shifted += task.est_duration_s / 3600.0
            vin, aid = self._revoke(task, reason, now, out)
            task.preemptions += 1
            task.moved_by, task.moved_from = reason, site.site_id
            self.counters["site_session_shed"] += 1
            out.append(lifecycle_record(task, "PREEMPTED", now, vin=vin, aid=aid, reason=reason))
            self._requeue(task, now, reason, out)
        self._episodes_moved.add(site.site_id)

    def _flush_episodes(self, now: int, out: list[Out]) -> None:
        """One UPDATE per episode that moved work since the last one."""
        for site_id in sorted(self._episodes_moved):
            site = self.sites[site_id]
            if site.episode is not None:
                out.append(spillover_record(site, "UPDATE", now))
        self._episodes_moved.clear()

    def _site_status(self, task: Task, status: str, error: Any, now: int, out: list[Out]) -> None:
        """A status of the task's current assignment at a site (no node reliability to keep)."""
        vin, aid = task.vin, task.assignment_id
        assert vin is not None
        if status == "STARTED":
            if task.state == RUNNING:
                self.counters["status_duplicate"] += 1
                return
            task.state = RUNNING
            self._dirty_tasks.add(task.task_id)
            out.append(lifecycle_record(task, "STARTED", now, vin=vin, aid=aid))
            return
        self._release(task)
        if status == "COMPLETED":
            self._finish(task, COMPLETED, now, out, vin=vin, aid=aid)
        elif (refused := presence_reason(error)) is not None:  # the site was full: not the task's fault
            task.exclude(vin)
            out.append(lifecycle_record(task, "PREEMPTED", now, vin=vin, aid=aid, reason=refused))
            self._requeue(task, now, refused, out)
        elif site_dropped(error):  # the site shed the session itself (its hall cut): it moves like a shed one
            site = self.sites[str(site_of(vin))]
            task.preemptions += 1
            task.moved_by, task.moved_from = SHED_LOAD, site.site_id
            if site.episode is not None:
                site.episode.sessions_shed += 1
                site.episode.slot_hours_shifted += task.est_duration_s / 3600.0
                self._episodes_moved.add(site.site_id)
            self.counters["site_session_dropped"] += 1
            out.append(lifecycle_record(task, "PREEMPTED", now, vin=vin, aid=aid, reason=SHED_LOAD))
            self._requeue(task, now, SHED_LOAD, out)
        else:
            task.failures += 1
            error = error or "FAILED"
            if task.failures >= self.cfg.max_failures:
                self._finish(task, FAILED, now, out, vin=vin, aid=aid, reason=f"MAX_FAILURES: {error}")
            else:
                out.append(lifecycle_record(task, "FAILED", now, vin=vin, aid=aid, reason=error))
                self._requeue(task, now, "RETRY", out)

    # ------------------------------------------------------------------ internals: matching

    def _match_touched(self, now: int, out: list[Out]) -> None:
        while self._touched:
            names = sorted(self._touched)
            self._touched.clear()
            for name in names:
                pool = self._pools.get(name)
                if pool is not None:
                    self._match_pool(pool, now, out)
        if self._episodes_moved:
            self._flush_episodes(now, out)

    def _match_pool(self, pool: _Pool, now: int, out: list[Out]) -> None:
        i = scanned = 0
        sites = [self.sites[s] for s in sorted(pool.sites)]
        while (
            i < len(pool.queue)
            and (pool.free_count > 0 or any(open_to_work(site, now, self.cfg) for site in sites))
            and scanned < self.cfg.max_scan_tasks
        ):
            task = self.tasks[pool.queue[i][1]]
            scanned += 1
            if not finishes_in_time(task, now, self.cfg.deadline_fit):  # its start_by timer is due:
                self._expire(task, now, out, CANNOT_FINISH)  # end it now, never start it
                continue
            if not sites:
                node = self._pick(pool, task, now) if task.placement != DATACENTER else None
                if node is None:
                    i += 1
                    continue
                del pool.queue[i]
                self._assign(task, node, now, out)
                continue
            if not self._place(pool, sites, task, now, i, out):
                i += 1

    def _place(
        self, pool: _Pool, sites: list[SiteState], task: Task, now: int, i: int, out: list[Out]
    ) -> bool:
        """Place ``task`` (queue entry ``i``) on a car or a site (``placement.choose``); False: it waits."""
        car = self._pick(pool, task, now) if task.placement != DATACENTER and pool.free_count > 0 else None
        stay = None if car is None else stay_probability(car, task.est_duration_s, now, self.cfg)
        site = pick_site(sites, task, now, self.cfg)
        where = choose(task, stay, site, self.cfg)
        if where is None:
            return False
        del pool.queue[i]
        if where == SITE:
            assert site is not None
            self._assign_site(task, site, now, out)
            return True
        assert where == CAR and car is not None and stay is not None
        reason, moved_from = task.moved_by, task.moved_from
        if reason is None and (spilled_from := would_use_site(task, stay, sites, now, self.cfg)) is not None:
            reason, moved_from = SPILLOVER_ISLANDED, spilled_from.site_id
            ep = spilled_from.episode
            if ep is not None:
                ep.tasks_spilled += 1
                ep.slot_hours_shifted += task.est_duration_s / 3600.0
                self._episodes_moved.add(spilled_from.site_id)
                self._dirty_nodes.add(spilled_from.vin)
            self.counters["task_spilled_to_fleet"] += 1
        self._assign(task, car, now, out, reason, moved_from)
        return True

    def _assign_site(self, task: Task, site: SiteState, now: int, out: list[Out]) -> None:
        assert task.state == QUEUED and task.vin is None, f"{task.task_id} is {task.state} on {task.vin}"
        task.attempt += 1
        aid = assignment_id_for(task.task_id, task.attempt)
        task.state, task.vin, task.assignment_id, task.assigned_ts = ASSIGNED, site.vin, aid, now
        task.moved_by = task.moved_from = None
        site.running.append(task.task_id)
        self._dirty_nodes.add(site.vin)
        self._dirty_tasks.add(task.task_id)
        self.counters["task_assigned_site"] += 1
        out.append(assignment_record(task, "ASSIGN", site.vin, aid, now, self.cfg))
        out.append(lifecycle_record(task, "ASSIGNED", now, vin=site.vin, aid=aid))
        self._push(now + self.cfg.claim_timeout_s * 1000, "claim", task.task_id)

    def _pick(self, pool: _Pool, task: Task, now: int) -> NodeState | None:
        """The best eligible node of ``pool`` for ``task``, or None (the task keeps waiting)."""
        cfg = self.cfg
        need_hw = HW_RANK.get(task.min_hw, 0)
        need_soc = task.min_soc_pct
        cands: list[NodeState] = []
        excluded, nodes = task.excluded, self.nodes
        for shard in self._shards(pool, task):
            for vin in shard:
                if vin in excluded:  # its owner came back during this task's life
                    continue
                node = nodes[vin]
                if HW_RANK.get(node.hw, 0) < need_hw:
                    continue
                if need_soc is not None and (node.soc_pct is None or node.soc_pct < need_soc):
                    continue
                # Free = eligible at its last evaluation, and nothing can change that with no input
                # before its timer (``next_change_at``): only a node whose timer is due may be stale.
                due = node.timer_at
                if due is not None and due <= now and not evaluate(node, now, cfg)[0]:
                    continue
                cands.append(node)
            if len(cands) >= cfg.max_candidates:
                break
        if not cands:
            return None
        if task.deadline is not None:  # where the task would miss its deadline, only if nothing better
            cands = [n for n in cands if not self._misses_deadline(n, task, now)] or cands
        if cfg.ranking == "random":
            return min(cands, key=lambda n: _crc(f"{cfg.seed}/{task.task_id}/{task.attempt}/{n.vin}"))
        retry, stay, duration = task.failures > 0, self._stay.stay, task.est_duration_s
        scored = [(retry and not is_trusted(node, cfg), stay(node, duration, now), node) for node in cands]
        untrusted_only = min(s[0] for s in scored)
        top = max(p for u, p, _ in scored if u == untrusted_only)
        # Near-best nodes (risk 1 - p within rank_tolerance of the best risk) are interchangeable for this
        # task: among them take the one with the least hardware above the task's need (keep HW5 nodes for
        # HW5 tasks), then the most reliable, then the most likely to stay.
        floor = top - cfg.rank_tolerance * (1.0 - top) - cfg.rank_tolerance_abs
        best: tuple[Any, ...] | None = None
        best_node: NodeState | None = None
        best_p = 0.0
        for untrusted, p, node in scored:
            if untrusted != untrusted_only or p < floor:
                continue
            head = (
                HW_RANK.get(node.hw, 0) - need_hw if cfg.hw_best_fit else 0,
                -round(node.reliability * 20),
                -p,
            )
            if best is not None and head > best[:3]:
                continue  # (the hash tie-break below is only needed on a tie: it costs a crc32 per node)
            key = (*head, _crc(node.vin), node.vin)
            if best is None or key < best:
                best, best_node, best_p = key, node, p
        assert best_node is not None
        if best_p < cfg.min_stay_probability:
            return None
        return best_node

    def _shards(self, pool: _Pool, task: Task) -> Iterable[set[str]]:
        """The free shards a pick walks, in order: whole shards from one the task's hash picks (so the
        candidates are a function of the free set, never of set iteration order), until enough are
        found; a pool with no more idle nodes than ``max_candidates`` is taken whole."""
        if pool.free_count <= self.cfg.max_candidates:
            yield from pool.free.values()
            return
        start = _crc(f"{task.task_id}/{task.attempt}") % N_SHARDS
        free = pool.free
        for j in range(N_SHARDS):
            shard = free.get((start + j) % N_SHARDS)
            if shard is not None:
                yield shard

    def _misses_deadline(self, node: NodeState, task: Task, now: int) -> bool:
        """Whether ``task``'s expected end on ``node`` is past its deadline.

        The node's predicted idle time is the median of its stay (``prediction.idle_until``), so it
        outlasts ``d`` seconds iff ``stay_probability(node, d) >= 0.5`` (no solve needed). If the node
        outlasts the task, the task ends at now + est_duration_s: in time (the caller checked that it
        can finish). If not, the task is lost when the node leaves and starts over elsewhere right
        away, ending est_duration_s after that: past the deadline iff the node stays past
        ``deadline - est_duration_s``. (A node about to leave costs little; one that leaves late does.)"""
        assert task.deadline is not None
        est, stay = float(task.est_duration_s), self._stay
        if stay.stay(node, est, now) >= 0.5:
            return False
        slack_s = (task.deadline - stay.time_of(now)) / 1000.0 - est  # at the time ranking evaluates
        return stay.stay(node, slack_s, now) >= 0.5

    def _assign(
        self,
        task: Task,
        node: NodeState,
        now: int,
        out: list[Out],
        reason: str | None = None,
        moved_from: str | None = None,
    ) -> None:
        """``reason``: why a car got it when that is news (a spillover; a session shed off ``moved_from``)."""
        assert len(node.running) < node.capacity, f"{node.vin} is full"
        assert task.state == QUEUED and task.vin is None, f"{task.task_id} is {task.state} on {task.vin}"
        task.attempt += 1
        aid = assignment_id_for(task.task_id, task.attempt)
        task.state, task.vin, task.assignment_id, task.assigned_ts = ASSIGNED, node.vin, aid, now
        task.moved_by = task.moved_from = None
        node.running.append(task.task_id)
        remember_pick(node, task.est_duration_s, now, self.cfg)  # the node is written below (_refresh_node)
        self._dirty_tasks.add(task.task_id)
        self.counters["task_assigned"] += 1
        out.append(assignment_record(task, "ASSIGN", node.vin, aid, now, self.cfg))
        out.append(
            lifecycle_record(task, "ASSIGNED", now, vin=node.vin, aid=aid, reason=reason, site_id=moved_from)
        )
        self._push(now + self.cfg.claim_timeout_s * 1000, "claim", task.task_id)
        self._refresh_node(node, now, out)
