"""The scheduler worker under failure: SIGKILL mid-stream, and two workers sharing the partitions.

Simulated cars report every second, run what they are assigned (STARTED, then COMPLETED within 1.5 s)
and now and then drive off for a few seconds (preemption). Tasks arrive at a steady rate, some with
no region (they start in a hashed pool and move on to the next pool after 1 s, 2 s, ...). The
guarantees are checked from the output topics alone (``check_history``): an assignment id always names the
same node, a task is never ASSIGNED while it is held, a node never holds more than one task, and every
task is accounted for (COMPLETED).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from test_scheduler_itsupport import (
    Feed,
    NodeSim,
    Outputs,
    SchedWorker,
    check_history,
    find_on_topics,
    req,
    tag,
    worker_env,
)

from core.settings import Settings

pytestmark = pytest.mark.integration

GROUP = "carnival-scheduler"
BYPOOL = "carnival-scheduler-bypool"
KILL_REGIONS = [tag(f"kill{i}") for i in range(3)]
REBALANCE_REGIONS = [tag(f"rebal{i}") for i in range(4)]
WORKER_CONFIG = {
    "pools": ",".join(KILL_REGIONS + REBALANCE_REGIONS),
    "spill_after_s": 1,
    "claim_timeout_s": 30,
    "lease_s": 20,
    "tick_s": 0.5,
}


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sched-failover")


@pytest.fixture(scope="module")
def workers(stack_env: dict[str, str], log_dir: Path) -> Iterator[list[SchedWorker]]:
    env = worker_env(stack_env, **WORKER_CONFIG)
    ws = [SchedWorker(env, log_dir, name="a"), SchedWorker(env, log_dir, name="b")]
    ws[0].start()
    try:
        yield ws
    finally:
        for w in ws:
            w.stop()


def _cars(name: str, per_region: int) -> dict[str, list[str]]:
    """Cars in every configured pool, so any-region tasks find one wherever they land."""
    return {r: [f"{r}-{name}{i}" for i in range(per_region)] for r in KILL_REGIONS + REBALANCE_REGIONS}


def _run(
    outputs: Outputs, sim: NodeSim, feed: Feed, tasks: list[dict[str, object]], rate_per_s: float,
    actions: Mapping[float, Callable[[], None]] | None = None, timeout_s: float = 180.0,
    log_dir: Path | None = None, supervised: Sequence[SchedWorker] = (),
) -> None:  # fmt: skip
    """Submit ``tasks`` at ``rate_per_s`` while the cars run; call ``actions[t]()`` at t seconds;
    return when every task is COMPLETED. A ``supervised`` worker that exits by itself is restarted, as
    its supervisor would."""
    outputs.listeners.append(sim.on_record)
    try:
        start = time.monotonic()
        pending_actions = sorted((actions or {}).items())
        submitted = 0
        ids = [str(t["task_id"]) for t in tasks]
        while True:
            elapsed = time.monotonic() - start
            due = min(len(tasks), int(elapsed * rate_per_s) + 1)
            if submitted < due:
                feed.requests(
                    *(dict(t, ts=int(time.time() * 1000)) for t in tasks[submitted:due]), flush=False
                )
                submitted = due
            while pending_actions and pending_actions[0][0] <= elapsed:
                _, action = pending_actions.pop(0)
                action()
            for w in supervised:
                w.restart_if_exited()
            sim.step()
            feed.producer.poll(0)
            outputs.poll(0.05)
            if (
                submitted == len(tasks)
                and not pending_actions
                and all(outputs.states(i)[-1:] == ["COMPLETED"] for i in ids)
            ):
                return
            if elapsed > timeout_s:
                unfinished = {i: outputs.states(i) for i in ids if outputs.states(i)[-1:] != ["COMPLETED"]}
                missing = list(unfinished)[:10]
                where = find_on_topics(outputs.settings, missing, ["tasks.requests.v1", BYPOOL])
                raise AssertionError(
                    f"{len(unfinished)} tasks unfinished: {list(unfinished.items())[:10]}\n"
                    f"found on topics: {where}\n" + _what_became_of(outputs, log_dir, missing)
                )
    finally:
        outputs.listeners.remove(sim.on_record)
        feed.flush()


def _what_became_of(outputs: Outputs, log_dir: Path | None, task_ids: list[str]) -> str:
    """For a failure message: the dead letters of these tasks, and the worker log lines that name them or
    report a failed, retried or quarantined batch."""
    keys = {t.encode() for t in task_ids}
    dead = [(d.get("source_topic"), d.get("kind"), d.get("error")) for d in outputs.deadletters
            if d.get("key") in keys]  # fmt: skip
    lines = []
    marks = ("quarantined", "batch_failed", "_failed", "dead_lettered", "Traceback", *task_ids)
    for path in sorted(log_dir.glob("*.log")) if log_dir else []:
        for line in path.read_text(errors="replace").splitlines():
            if any(m in line for m in marks):
                lines.append(f"{path.name}: {line[:400]}")
    return f"dead letters: {dead}\nworker log lines:\n" + "\n".join(lines[-40:])


def _tasks(prefix: str, regions: list[str], n: int, any_every: int = 5) -> list[dict[str, object]]:
    rng = random.Random(prefix)
    return [
        req(f"{prefix}-t{i:03d}", None if i % any_every == 0 else regions[i % len(regions)],
            priority=rng.randint(0, 9), est_duration_s=rng.choice([60, 600, 1800]))
        for i in range(n)
    ]  # fmt: skip


def _wait_up(worker: SchedWorker, outputs: Outputs, feed: Feed, region: str) -> None:
    """Until the worker processes a fresh record (it is in the group and has recovered).

    The probe is resent every 10 s: while the worker still replays older records of the shared topic,
    its clock lags, and a live probe counts as too far in the future until the first tick catches up."""
    from test_scheduler_itsupport import tel

    probes: list[str] = []
    deadline = time.monotonic() + 120
    try:
        while True:
            probes.append(f"{region}-{tag('up')}")
            feed.telemetry(tel(probes[-1], region, opted_in=False))
            try:
                outputs.wait(lambda: any(outputs.node(p) for p in probes), timeout_s=10, what="worker up")
                return
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
    except AssertionError:
        pytest.fail(f"scheduler worker did not come up:\n{worker.log_tail()}")


def _members(stack: Settings) -> list[list[int]]:
    """The bypool partitions of each member of the group, as the broker sees them."""
    admin = AdminClient(stack.kafka_client_config())
    desc = admin.describe_consumer_groups([GROUP])[GROUP].result(timeout=30)
    return sorted(
        sorted(tp.partition for tp in m.assignment.topic_partitions if tp.topic == BYPOOL)
        for m in desc.members
    )


def test_sigkill_mid_stream_loses_nothing_and_assigns_nothing_twice(
    stack: Settings, workers: list[SchedWorker], outputs: Outputs, feed: Feed, log_dir: Path
) -> None:
    worker = workers[0]
    _wait_up(worker, outputs, feed, KILL_REGIONS[0])
    cars = _cars("k", 5)
    # Churn often enough that some car surely leaves while it runs a task (at 0.02 per car-second, a CI
    # run once saw none: the preemption check below then had nothing to check).
    sim = NodeSim(feed, cars, seed=3, churn=0.05)
    tasks = _tasks(tag("killtask"), KILL_REGIONS, 150)
    kills: list[float] = []

    def kill_and_restart() -> None:
        kills.append(time.monotonic())
        worker.kill()
        worker.start()

    started = time.monotonic()
    kills_at = {7.0: kill_and_restart, 17.0: kill_and_restart, 27.5: kill_and_restart}
    _run(outputs, sim, feed, tasks, rate_per_s=4.0, actions=kills_at, log_dir=log_dir, supervised=[worker])
    took = time.monotonic() - started
    ids = [str(t["task_id"]) for t in tasks]
    counts = check_history(outputs, ids)
    assert len(kills) == 3 and worker.starts == 4 + len(worker.exits)
    assert all(outputs.states(i).count("REQUESTED") == 1 for i in ids)
    assert counts["COMPLETED"] == len(ids) and counts["QUEUED"] == counts["REQUESTED"] == len(ids)
    assert counts["PREEMPTED"] > 0, "the cars' churn should have preempted some tasks"
    assert not [d for d in outputs.deadletters if b"killtask" in (d.get("key") or b"")]
    raw = sum(len(outputs.lifecycle[i]) for i in ids)
    print(f"\nSIGKILL x3: {len(ids)} tasks completed in {took:.0f}s; lifecycle counts {counts}; "
          f"{raw - sum(counts.values())} lifecycle records republished after restarts; "
          f"exits restarted as a supervisor would: {worker.exits}")  # fmt: skip


def test_two_workers_split_partitions_and_match_correctly_across_rebalances(
    stack: Settings, workers: list[SchedWorker], outputs: Outputs, feed: Feed, log_dir: Path
) -> None:
    a, b = workers
    _wait_up(a, outputs, feed, REBALANCE_REGIONS[0])
    b.start()
    cars = _cars("r", 4)
    sim = NodeSim(feed, cars, seed=5, churn=0.01)
    prefix = tag("rebtask")

    def run(tasks: list[dict[str, object]]) -> None:
        _run(outputs, sim, feed, tasks, rate_per_s=8.0, log_dir=log_dir, supervised=workers)

    def split() -> bool:
        members = _members(stack)
        return len(members) == 2 and all(members) and sorted(sum(members, [])) == list(range(6))

    outputs.wait(split, timeout_s=90, what=lambda: f"partitions split between two workers: {_members(stack)}")
    split_view = _members(stack)
    run(_tasks(f"{prefix}-split", REBALANCE_REGIONS, 40))

    b.stop()  # leaves the group: a takes every partition
    outputs.wait(lambda: _members(stack) == [list(range(6))], timeout_s=60, what="a alone")
    run(_tasks(f"{prefix}-alone", REBALANCE_REGIONS, 40))

    b.start()  # joins again mid-stream
    run(_tasks(f"{prefix}-rejoin", REBALANCE_REGIONS, 40))
    outputs.wait(split, timeout_s=90, what="split again")
    run(_tasks(f"{prefix}-again", REBALANCE_REGIONS, 40))

    ids = [t for t in outputs.lifecycle if t.startswith(prefix)]
    assert len(ids) == 160
    counts = check_history(outputs, ids)
    assert counts["COMPLETED"] == 160
    a_log, b_log = a.log_text(), b.log_text()
    assert "scheduler_partition_rebuilt" in a_log and "scheduler_partition_rebuilt" in b_log
    print(f"\nrebalance: split {split_view}; 160 tasks completed; lifecycle counts {counts}")
