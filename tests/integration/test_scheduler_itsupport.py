"""Helpers for the scheduler worker's integration tests (no tests here): the worker subprocess, record
builders, the output reader, a node simulator and the correctness checks over the output topics."""

from __future__ import annotations

import os
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from worker_process import WorkerProcess

from core.settings import Settings
from streams.kafka import Producer, make_consumer
from streams.serde import AvroSerde, serde_from_settings

ROOT = Path(__file__).resolve().parents[2]
NODES, ASSIGNMENTS, LIFECYCLE, DEADLETTER = (
    "fleet.nodes.v1",
    "tasks.assignments.v1",
    "tasks.lifecycle.v1",
    "deadletter.v1",
)
SPILLOVER, ALERTS = "sites.spillover.v1", "alerts.v1"
END_STATES = {"COMPLETED", "EXPIRED", "REJECTED"}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def tag(name: str) -> str:
    """A unique prefix for a test's vins, task ids and regions (topics are shared by the session)."""
    return f"it{name}-{uuid.uuid4().hex[:6]}"


# ------------------------------------------------------------------------------------------ worker
@contextmanager
def serving_worker(env: dict[str, str], log_dir: Path, outputs: Outputs, feed: Feed) -> Iterator[SchedWorker]:
    """A scheduler worker started with ``env``, waited for until it serves (a probe car's node record),
    stopped afterwards; the test fails with its log if it never comes up."""
    w = SchedWorker(env, log_dir)
    w.start()
    try:
        probe = tag("probe")
        feed.telemetry(tel(f"{probe}-v", probe))
        try:
            outputs.wait(lambda: outputs.node(f"{probe}-v"), timeout_s=120, what="the worker to come up")
        except AssertionError:
            pytest.fail(f"scheduler worker did not come up:\n{w.log_tail()}")
        yield w
    finally:
        w.stop()


class SchedWorker(WorkerProcess):
    """`python -m carnival.cli worker scheduler` in a subprocess, logs to a file."""

    def __init__(self, env: dict[str, str], log_dir: Path, name: str = "w") -> None:
        super().__init__("scheduler", env, log_dir, name)


def worker_env(stack_env: dict[str, str], **scheduler: Any) -> dict[str, str]:
    env = {**os.environ, **stack_env}
    env.update({f"CARNIVAL_SCHEDULER_{k.upper()}": str(v) for k, v in scheduler.items()})
    return env


# ----------------------------------------------------------------------------------------- records
def tel(vin: str, region: str, ts: int | None = None, **kw: Any) -> dict[str, Any]:
    """Telemetry of an eligible HW4 car (keyword arguments override fields)."""
    rec: dict[str, Any] = {
        "vin": vin, "ts": now_ms() if ts is None else ts, "hw": "HW4", "region": region,
        "charge_state": "CHARGING", "gear": "P", "soc_pct": 80.0, "charge_limit_pct": 90.0,
        "minutes_to_full": None, "scheduled_departure": None, "at_home": True, "opted_in": True,
        "compute_temp_c": 50.0, "software_version": "2025.2.1",
    }  # fmt: skip
    rec.update(kw)
    return rec


def req(task_id: str, region: str | None, ts: int | None = None, **kw: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "task_id": task_id, "ts": now_ms() if ts is None else ts, "tenant": "acme", "kind": "browse",
        "priority": 5, "est_duration_s": 600, "deadline": None, "min_hw": "HW4", "region": region,
        "min_soc_pct": None,
    }  # fmt: skip
    rec.update(kw)
    return rec


def status(
    task_id: str, aid: str, vin: str, st: str, ts: int | None = None, error: str | None = None
) -> dict[str, Any]:
    ts = now_ms() if ts is None else ts
    return {"task_id": task_id, "assignment_id": aid, "vin": vin, "ts": ts, "status": st, "error": error}


class Feed:
    """Produces records with Carnival's producer and Avro serde."""

    KEYS = {
        "fleet.telemetry.v1": "vin",
        "tasks.requests.v1": "task_id",
        "tasks.status.v1": "task_id",
        "sites.capacity.v1": "site_id",
        "sites.power_state.v1": "site_id",
    }

    def __init__(self, settings: Settings) -> None:
        self.serde = serde_from_settings(settings)
        self.producer = Producer(settings, **{"linger.ms": 2})

    def send(self, topic: str, *records: dict[str, Any], flush: bool = True) -> None:
        for rec in records:
            self.producer.produce(topic, self.serde.encode(topic, rec), rec[self.KEYS[topic]])
        if flush:
            self.flush()

    def raw(self, topic: str, value: bytes, key: str) -> None:
        self.producer.produce(topic, value, key)
        self.flush()

    def telemetry(self, *records: dict[str, Any], flush: bool = True) -> None:
        self.send("fleet.telemetry.v1", *records, flush=flush)

    def requests(self, *records: dict[str, Any], flush: bool = True) -> None:
        self.send("tasks.requests.v1", *records, flush=flush)

    def statuses(self, *records: dict[str, Any], flush: bool = True) -> None:
        self.send("tasks.status.v1", *records, flush=flush)

    def flush(self) -> None:
        assert self.producer.flush(30) == 0
        assert self.producer.stats.failed == 0, self.producer.stats.last_error

    def close(self) -> None:
        self.producer.close()


# ----------------------------------------------------------------------------------------- outputs
class Outputs:
    """Everything on the scheduler's output topics, in topic order, kept per key."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.serde = AvroSerde(serde_from_settings(settings).registry, raw_timestamps=True)
        self.consumer = make_consumer(settings)
        self.consumer.subscribe([NODES, ASSIGNMENTS, LIFECYCLE, DEADLETTER, SPILLOVER, ALERTS])
        self.episodes: list[dict[str, Any]] = []  # sites.spillover.v1
        self.alerts: list[dict[str, Any]] = []
        self.nodes: dict[str, list[dict[str, Any]]] = defaultdict(list)  # by vin
        self.assignments: list[dict[str, Any]] = []
        self.by_vin: dict[str, list[dict[str, Any]]] = defaultdict(list)  # assignments per vin
        self.lifecycle: dict[str, list[dict[str, Any]]] = defaultdict(list)  # by task_id
        self.deadletters: list[dict[str, Any]] = []
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []

    def poll(self, timeout_s: float = 0.2) -> None:
        for msg in self.consumer.consume(2000, timeout_s):
            if msg.error() or msg.value() is None:
                continue
            topic = msg.topic()
            rec = self.serde.decode(topic, msg.value())
            if topic == NODES:
                self.nodes[rec["vin"]].append(rec)
            elif topic == ASSIGNMENTS:
                self.assignments.append(rec)
                self.by_vin[rec["vin"]].append(rec)
            elif topic == LIFECYCLE:
                self.lifecycle[rec["task_id"]].append(rec)
            elif topic == SPILLOVER:
                self.episodes.append(rec)
            elif topic == ALERTS:
                self.alerts.append(rec)
            else:
                self.deadletters.append(rec)
            for listener in self.listeners:
                listener(topic, rec)

    def wait(
        self, cond: Callable[[], Any], timeout_s: float = 30.0, what: str | Callable[[], str] = ""
    ) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.poll()
            result = cond()
            if result:
                return result
        self.poll()
        result = cond()
        assert result, f"timed out waiting for {what() if callable(what) else what}"
        return result

    def settle(self, seconds: float = 1.5) -> None:
        """Read whatever arrives in the next ``seconds`` (to show that nothing more comes)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.poll(0.1)

    def node(self, vin: str) -> dict[str, Any] | None:
        recs = self.nodes.get(vin)
        return recs[-1] if recs else None

    def states(self, task_id: str) -> list[str]:
        return [r["state"] for r in dedup(self.lifecycle.get(task_id, []))]

    def commands(self, prefix: str) -> list[tuple[str, str, str]]:
        """(command, task_id, vin) of assignments of tasks starting with ``prefix``, repeats dropped."""
        seen: set[tuple[str, str]] = set()
        out = []
        for a in self.assignments:
            if a["task_id"].startswith(prefix) and (a["command"], a["assignment_id"]) not in seen:
                seen.add((a["command"], a["assignment_id"]))
                out.append((a["command"], a["task_id"], a["vin"]))
        return out

    def assigned(self, task_id: str) -> list[dict[str, Any]]:
        return [r for r in dedup(self.lifecycle.get(task_id, [])) if r["state"] == "ASSIGNED"]

    def close(self) -> None:
        self.consumer.close()


def dedup(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop exact repeats (a worker restored after a crash republishes the same records)."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for r in records:
        k = tuple(sorted((k, str(v)) for k, v in r.items()))
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


# -------------------------------------------------------------------------------------- simulation
class NodeSim:
    """Cars that report every ``every_s`` and run what they are assigned: STARTED at once, COMPLETED
    after a short while; a REVOKE stops the task. Some cars leave (gear D) now and then."""

    def __init__(
        self, feed: Feed, vins_by_region: dict[str, list[str]], seed: int = 7, churn: float = 0.0
    ) -> None:
        self.feed = feed
        self.region = {v: r for r, vins in vins_by_region.items() for v in vins}
        self.rng = random.Random(seed)
        self.churn = churn
        self.away_until: dict[str, float] = {}
        self.running: dict[str, tuple[str, str, float]] = {}  # aid -> (task_id, vin, done_at)
        self.seen_aids: set[str] = set()
        self.done_aids: set[str] = set()
        self.revoked: set[str] = set()
        self.last_report = 0.0

    def on_record(self, topic: str, rec: dict[str, Any]) -> None:
        if topic != ASSIGNMENTS or rec["vin"] not in self.region:
            return
        aid = rec["assignment_id"]
        if rec["command"] == "REVOKE":
            self.revoked.add(aid)
            self.running.pop(aid, None)
            return
        if aid in self.seen_aids or aid in self.revoked:
            return  # a duplicate ASSIGN (replayed after a crash) changes nothing
        self.seen_aids.add(aid)
        self.feed.statuses(status(rec["task_id"], aid, rec["vin"], "STARTED"), flush=False)
        self.running[aid] = (rec["task_id"], rec["vin"], time.monotonic() + self.rng.uniform(0.3, 1.5))

    def step(self) -> None:
        now = time.monotonic()
        for aid, (task_id, vin, done_at) in list(self.running.items()):
            if done_at <= now:
                del self.running[aid]
                self.done_aids.add(aid)
                self.feed.statuses(status(task_id, aid, vin, "COMPLETED"), flush=False)
        if now - self.last_report >= 1.0:
            self.last_report = now
            recs = []
            for vin, region in self.region.items():
                if self.churn and vin not in self.away_until and self.rng.random() < self.churn:
                    self.away_until[vin] = now + self.rng.uniform(1.0, 3.0)
                away = self.away_until.get(vin, 0) > now
                if not away:
                    self.away_until.pop(vin, None)
                recs.append(tel(vin, region, gear="D" if away else "P"))
            self.feed.telemetry(*recs, flush=False)
        self.feed.producer.poll(0)


# ---------------------------------------------------------------------------------------- checking
def check_history(
    out: Outputs, task_ids: Iterable[str], capacity: int = 1, site_capacity: int = 1
) -> dict[str, int]:
    """The guarantees, from the output topics alone:

    * an assignment id always names the same task and vin (a replay decides the same);
    * a task is never ASSIGNED while an earlier assignment of it is still current;
    * a node never holds more than ``capacity`` assignments at once (intervals in event time), a
      datacenter site (``site:<id>``) never more than ``site_capacity``;
    Returns counts for the report.
    """
    aid_owner: dict[str, tuple[str, str]] = {}
    for a in out.assignments:
        owner = (a["task_id"], a["vin"])
        assert aid_owner.setdefault(a["assignment_id"], owner) == owner, f"assignment id reused: {a}"
    intervals: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)
    for task_id in task_ids:
        current: dict[str, Any] | None = None
        for r in dedup(out.lifecycle.get(task_id, [])):
            counts[r["state"]] += 1
            if r["state"] == "ASSIGNED":
                assert current is None, f"{task_id} ASSIGNED to {r['vin']} while held by {current}"
                current = r
                owner = aid_owner.get(r["assignment_id"])
                assert owner is None or owner == (task_id, r["vin"]), f"lifecycle/assignment mismatch {r}"
            elif (
                r["state"] in ("PREEMPTED", "REQUEUED", "COMPLETED", "FAILED", "EXPIRED")
                and current is not None
                and r.get("assignment_id") in (None, current["assignment_id"])
            ):
                intervals[current["vin"]].append((current["ts"], r["ts"], current["assignment_id"]))
                current = None
        if current is not None:
            intervals[current["vin"]].append((current["ts"], 2**62, current["assignment_id"]))
    for vin, spans in intervals.items():
        points = sorted(
            [(s, 1, a) for s, _, a in spans] + [(e, -1, a) for _, e, a in spans], key=lambda p: (p[0], p[1])
        )
        held = 0
        for _, delta, aid in points:
            held += delta
            limit = site_capacity if vin.startswith("site:") else capacity
            assert held <= limit, f"{vin} over capacity at {aid}: {sorted(spans)}"
    return dict(counts)


# ------------------------------------------------------------------------------------- diagnostics
def find_on_topics(
    settings: Settings, needles: Iterable[str], topics: Iterable[str], within_s: float = 60.0
) -> dict[str, list[str]]:
    """For a failure message: where records containing each needle (a task id) are, as
    ``topic[partition]@offset``, scanning each topic from its start for at most ``within_s``; plus the
    scheduler group's committed offsets of those partitions, to tell a record never read from one read
    and dropped."""
    from confluent_kafka import TopicPartition

    wanted = {n: n.encode() for n in needles}
    found: dict[str, list[str]] = {n: [] for n in wanted}
    consumer = make_consumer(settings)
    consumer.subscribe(list(topics))
    partitions: set[tuple[str, int]] = set()
    deadline = time.monotonic() + within_s
    idle = 0
    try:
        while time.monotonic() < deadline and idle < 5:
            msgs = consumer.consume(5000, 1.0)
            idle = 0 if msgs else idle + 1
            for msg in msgs:
                value = msg.value() or b""
                for name, needle in wanted.items():
                    if needle in value:
                        topic, partition = str(msg.topic()), int(msg.partition() or 0)
                        found[name].append(f"{topic}[{partition}]@{msg.offset()}")
                        partitions.add((topic, partition))
    finally:
        consumer.close()
    group = make_consumer(settings, group_id="carnival-scheduler")
    try:
        tps = [TopicPartition(t, p) for t, p in sorted(partitions)]
        committed = group.committed(tps, timeout=10) if tps else []
        found["(committed)"] = [f"{c.topic}[{c.partition}]={c.offset}" for c in committed]
    finally:
        group.close()
    return found
