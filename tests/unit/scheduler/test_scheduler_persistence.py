"""State round-trips mid-stream and the restored scheduler continues exactly as the original."""

from __future__ import annotations

import heapq
import json
import random
from typing import Any

from test_scheduler_support import MIN, T0, S, cfg, req, status, tel

from processors.scheduler import Out, Scheduler, SchedulerConfig

Event = tuple[str, Any]


def feed(s: Scheduler, ev: Event) -> list[Out]:
    kind, payload = ev
    if kind == "tel":
        return s.on_telemetry(payload)
    if kind == "req":
        return s.on_request(payload)
    if kind == "status":
        return s.on_status(payload)
    return s.on_tick(payload)


def random_stream(config: SchedulerConfig, seed: int, n_cars: int = 25, minutes: int = 90) -> list[Event]:
    """A reactive random workload run against a live scheduler; returns the exact inputs it fed."""
    rng = random.Random(seed)
    s = Scheduler(config)
    pending: list[tuple[int, int, Event]] = []  # (at, seq, event)
    seq = 0

    def push(at: int, ev: Event) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(pending, (at, seq, ev))

    cars = {}
    for i in range(n_cars):
        region, hw = rng.choice(["us-west", "us-east"]), rng.choice(["HW3", "HW4", "HW4", "HW5"])
        cars[f"V{i:03d}"] = {"gear": "P", "charge_state": "CHARGING", "region": region, "hw": hw}
    for t in range(0, minutes * MIN, 20 * S):
        for vin, car in cars.items():
            if rng.random() < 0.02:
                car["gear"] = "D" if car["gear"] == "P" else "P"
            if rng.random() < 0.02:
                car["charge_state"] = rng.choice(["DISCONNECTED", "CHARGING", "COMPLETE", "UNKNOWN"])
            if rng.random() < 0.9:  # some telemetry is lost
                ts = T0 + t + rng.randrange(0, 15 * S)
                soc = float(rng.randrange(20, 100))
                push(ts, ("tel", tel(vin, ts, soc_pct=soc, **car)))
                if rng.random() < 0.05:  # duplicate or late copy
                    push(ts + rng.randrange(0, 30 * S), ("tel", tel(vin, ts, region=car["region"])))
        if rng.random() < 0.5:
            ts = T0 + t + rng.randrange(0, 20 * S)
            tid = f"T{t}"
            want = {
                "priority": rng.randrange(10),
                "est_duration_s": rng.randrange(60, 1800),
                "region": rng.choice(["us-west", "us-east", None]),
                "min_hw": rng.choice(["HW3", "HW4", "HW5"]),
                "deadline": ts + rng.randrange(5, 60) * MIN if rng.random() < 0.3 else None,
            }
            push(ts, ("req", req(tid, ts, **want)))
            if rng.random() < 0.05:
                push(ts + S, ("req", req(tid, ts + S)))  # duplicate request
        push(T0 + t + 10 * S, ("tick", T0 + t + 10 * S))
    inputs: list[Event] = []
    while pending:
        at, _, ev = heapq.heappop(pending)
        inputs.append(ev)
        for o in feed(s, ev):
            if o.topic == "tasks.assignments.v1" and o.value["command"] == "ASSIGN":
                v = o.value
                r = random.Random(v["assignment_id"])
                ids = (v["task_id"], v["assignment_id"], v["vin"])
                if r.random() < 0.85:  # else the node never claims it: claim timeout
                    start = at + r.randrange(1, 40) * S
                    push(start, ("status", status(*ids, start, "STARTED")))
                    end = at + r.randrange(60, 1200) * S
                    st = "COMPLETED" if r.random() < 0.85 else "FAILED"
                    push(end, ("status", status(*ids, end, st)))
                    if r.random() < 0.1:  # duplicate report
                        push(end + S, ("status", status(*ids, end, st)))
        s.check_invariants()
    return inputs


CONFIG = cfg(pools=("us-west", "us-east"), spill_after_s=120)


def run(inputs: list[Event], config: SchedulerConfig = CONFIG) -> list[list[Out]]:
    s = Scheduler(config)
    outs = []
    for ev in inputs:
        outs.append(feed(s, ev))
        s.check_invariants()
    return outs


def test_stream_exercises_everything() -> None:
    inputs = random_stream(CONFIG, seed=1)
    s = Scheduler(CONFIG)
    for ev in inputs:
        feed(s, ev)
    c = s.counters
    keys = ("task_assigned", "task_completed", "task_preempted", "task_requeued", "request_duplicate")
    for key in (*keys, "telemetry_duplicate", "status_stale", "claim_timeout", "task_expired"):
        assert c[key] > 0, (key, dict(c))


def test_whole_state_round_trip_continues_identically() -> None:
    inputs = random_stream(CONFIG, seed=2)
    expected = run(inputs)
    for cut in (len(inputs) // 3, len(inputs) // 2, 2 * len(inputs) // 3):
        s = Scheduler(CONFIG)
        got = [feed(s, ev) for ev in inputs[:cut]]
        state = json.loads(json.dumps(s.to_dict()))  # JSON-safe
        s = Scheduler.from_dict(state, CONFIG)
        s.check_invariants()
        assert s.to_dict() == state
        for ev in inputs[cut:]:
            got.append(feed(s, ev))
            s.check_invariants()
        assert got == expected, f"diverged after restoring at input {cut}"


def test_per_key_tables_restore_in_any_order() -> None:
    """What a faust worker does: write drain_dirty() to tables per key, restore from table values."""
    inputs = random_stream(CONFIG, seed=3)
    expected = run(inputs)
    cut = len(inputs) // 2
    s = Scheduler(CONFIG)
    node_table: dict[str, Any] = {}
    task_table: dict[str, Any] = {}
    got = []
    for ev in inputs[:cut]:
        got.append(feed(s, ev))
        nodes, tasks = s.drain_dirty()
        node_table.update({k: json.dumps(v) for k, v in nodes.items()})
        for k, v in tasks.items():
            if v is None:
                task_table.pop(k, None)
            else:
                task_table[k] = json.dumps(v)
    assert set(task_table) == set(s.tasks) and set(node_table) == set(s.nodes)
    rng = random.Random(0)
    nodes_vals, task_vals = list(node_table.values()), list(task_table.values())
    rng.shuffle(nodes_vals)
    rng.shuffle(task_vals)
    r = Scheduler.from_parts(map(json.loads, nodes_vals), map(json.loads, task_vals), s.clock, CONFIG)
    assert r.to_dict() == s.to_dict()
    for ev in inputs[cut:]:
        got.append(feed(r, ev))
    assert got == expected


def test_replaying_an_input_after_restore_is_idempotent() -> None:
    """At-least-once: the input that was being processed when the worker died comes again."""
    inputs = random_stream(CONFIG, seed=4)
    s = Scheduler(CONFIG)
    for ev in inputs[: len(inputs) // 2]:
        feed(s, ev)
    kinds = {"req": 0, "status": 0}
    for ev in inputs[: len(inputs) // 2]:
        if ev[0] in kinds:  # every request / status event again: all no-ops now
            before = json.dumps(s.to_dict(), sort_keys=True)
            assert feed(s, ev) == []
            assert json.dumps(s.to_dict(), sort_keys=True) == before
            kinds[ev[0]] += 1
    assert kinds["req"] > 0 and kinds["status"] > 0


def test_finished_tasks_are_forgotten_after_the_tombstone_ttl() -> None:
    config = cfg(tombstone_ttl_s=3600)
    s = Scheduler(config)
    s.on_telemetry(tel("V1", T0))
    s.on_request(req("t", T0 + S))
    t = s.tasks["t"]
    s.on_status(status("t", t.assignment_id, "V1", T0 + 2 * S, "COMPLETED"))
    s.drain_dirty()
    s.on_tick(T0 + 2 * S + 3600 * S)
    assert "t" not in s.tasks
    assert s.drain_dirty()[1] == {"t": None}
