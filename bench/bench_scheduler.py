"""The scheduler worker: telemetry throughput and match latency, against baselines from the same run.

    python bench/bench_scheduler.py [--events 200000] [--cars 20000] [--task-rate 20] [--tasks 400]
                                    [--restore-cars 100000] [--restore-only]
                                    [--class-cars 20000] [--match-cars 20000,100000]
                                    [--match-rates 20,1000] [--match-seconds 5] [--in-process-only]

In process (no Kafka, so not disturbed by the broker or other load on the machine):

A. Cost per telemetry record class (``--class-cars``, one round of each, best of 3 runs): a first
   sighting, a record that changes nothing that matters to matching (same eligibility and pool, SoC
   +0.3), one that changes eligibility (gear P <-> D on half the cars). Split into Avro decode,
   ``Scheduler.on_telemetry`` and state persistence (``PartitionState.persist`` every 500 records, the
   worker's batch). Baseline: the bare decode loop of the same records.
B. Match latency (``--match-cars`` eligible cars in one pool, tasks at each of ``--match-rates``/s for
   ``--match-seconds`` of event time, with every car reporting every 20 s): each input is timed, and a
   single-threaded worker is replayed over those service times (an input starts when it has arrived
   and the previous one is done), so latency = queueing + the request's own matching. The first second
   (cold caches) is left out of the percentiles; the busy share says how much of the worker the load
   takes (>= 1: it cannot keep up). Baselines: ranking ``max_candidates`` nodes with no memo (one
   ``stay_probability`` each), and the p50 at the first ``--match-cars`` (the ratio says how flat).

0. Memory and restore (``--restore-cars``, in process, no Kafka): bytes per node in memory and in the
   table, and the time to rebuild a partition's scheduler from its table after a rebalance, against a
   raw ``orjson.loads`` of the same values.

1. Throughput: ``--events`` telemetry records of ``--cars`` cars (all eligible, 12 regions) are
   produced first; then ``carnival worker scheduler`` starts and drains them (route by region ->
   internal pool topic -> scheduler -> nodes + state changelog). Rate = events from the worker's first
   processed one to the last, read from its Prometheus counter.
   Baselines: a raw confluent-kafka consumer reading the same records (bytes only), and the worker's
   per-event work in one process without Kafka (Avro decode + ``Scheduler.on_telemetry`` + state
   serialization).
2. Match latency: once the worker has committed everything of phase 1 (steady, not still writing the
   backlog's state), with every car eligible, ``--tasks`` requests at ``--task-rate``/s, plus background
   telemetry at ``--background-rate``/s; latency = request produced -> its ASSIGN consumed from
   tasks.assignments.v1 (same clock, same process).

The bench starts its own Kafka broker (own ports and data dir) unless --use-running-stack is given.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import bench_kafka, bench_port, stop_process  # noqa: E402

from core.settings import Settings  # noqa: E402
from processors.scheduler import Scheduler, SchedulerConfig  # noqa: E402
from processors.scheduler.wiring_state import PartitionState  # noqa: E402
from streams.kafka import Producer, make_consumer  # noqa: E402
from streams.serde import AvroSerde, serde_from_settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TELEMETRY, REQUESTS, ASSIGNMENTS = "fleet.telemetry.v1", "tasks.requests.v1", "tasks.assignments.v1"
BYPOOL = "carnival-scheduler-bypool"
REGIONS = [f"bench-r{i:02d}" for i in range(12)]
METRICS_PORT = bench_port(1, 48390)  # the worker's metrics; the broker takes base + 2, + 3
WORKER_ENV = {
    "CARNIVAL_SCHEDULER_LEASE_S": "3600",  # cars stay eligible through the latency phase
    "CARNIVAL_SCHEDULER_CONFIRM_S": "3600",
    "CARNIVAL_METRICS_PORT": str(METRICS_PORT),
    "CARNIVAL_LOG_FORMAT": "json",
    "CARNIVAL_LOG_LEVEL": "WARNING",
}
_TEL = re.compile(
    r'^carnival_scheduler_events_processed_total\{kind="telemetry",result="ok"\} ([0-9.e+]+)$', re.M
)


def car(i: int) -> tuple[str, str]:
    return f"BENCH{i:07d}", REGIONS[i % len(REGIONS)]


def telemetry(i: int, ts: int, rnd: int) -> dict[str, Any]:
    vin, region = car(i)
    return {
        "vin": vin, "ts": ts, "hw": "HW4" if i % 5 else "HW5", "region": region, "charge_state": "CHARGING",
        "gear": "P", "soc_pct": 60.0 + (i % 30) + rnd * 0.3, "charge_limit_pct": 90.0,
        "minutes_to_full": 120.0, "scheduled_departure": None, "at_home": i % 3 != 0, "opted_in": True,
        "compute_temp_c": 45.0, "software_version": "2026.8.1",
    }  # fmt: skip


def encode_telemetry(serde: AvroSerde, n: int, cars: int, start_ms: int) -> list[tuple[str, bytes]]:
    out = []
    for k in range(n):
        rnd, i = divmod(k, cars)
        rec = telemetry(i, start_ms + rnd * 5_000 + i % 1000, rnd)
        out.append((rec["vin"], serde.encode(TELEMETRY, rec)))
    return out


def produce_all(settings: Settings, topic: str, encoded: list[tuple[str, bytes]]) -> float:
    t = time.perf_counter()
    with Producer(settings) as producer:
        for key, value in encoded:
            producer.produce(topic, value, key)
    assert producer.stats.failed == 0
    return time.perf_counter() - t


def bench_raw_consume(settings: Settings, n: int) -> float:
    consumer = make_consumer(settings)
    consumer.subscribe([TELEMETRY])
    got, nbytes, t = 0, 0, time.perf_counter()
    while got < n:
        for msg in consumer.consume(10_000, 1.0):
            if not msg.error():
                got += 1
                nbytes += len(msg.value())
    rate = n / (time.perf_counter() - t)
    consumer.close()
    return rate


def bench_in_process(encoded: list[tuple[str, bytes]]) -> float:
    """Decode + on_telemetry + serialize the dirty state, per event, no Kafka (the worker's floor)."""
    serde = AvroSerde(raw_timestamps=True)
    state = PartitionState(0, Scheduler(SchedulerConfig(lease_s=3600, confirm_s=3600)))
    sink: dict[bytes, bytes] = {}
    t = time.perf_counter()
    for k, (_, value) in enumerate(encoded):
        state.scheduler.on_telemetry(serde.decode(TELEMETRY, value))
        if k % 500 == 499:
            state.persist(sink, lambda p, key, v: None)
    state.persist(sink, lambda p, key, v: None)
    return len(encoded) / (time.perf_counter() - t)


def bench_record_classes(cars: int, repeats: int = 3) -> dict[str, dict[str, float]]:
    """us per record of each class (module docstring, A): decode, schedule, persist, total; the best of
    ``repeats`` runs from a fresh scheduler each (the machine is shared: the least disturbed run)."""
    best: dict[str, dict[str, float]] = {}
    for _ in range(repeats):
        for name, costs in _record_classes_once(cars).items():
            if name not in best or costs["total"] < best[name]["total"]:
                best[name] = costs
    return best


def _record_classes_once(cars: int) -> dict[str, dict[str, float]]:
    serde = AvroSerde(raw_timestamps=True)
    start = int(time.time() * 1000) - 600_000

    def encoded(rnd: int, gear_flip: bool = False) -> list[bytes]:
        out = []
        for i in range(cars):
            rec = telemetry(i, start + rnd * 15_000 + i % 1000, rnd)
            if gear_flip and i % 2:
                rec["gear"] = "D"
            out.append(serde.encode(TELEMETRY, rec))
        return out

    rounds = {"first sighting": encoded(0), "no change": encoded(1), "eligibility change": encoded(2, True)}
    state = PartitionState(0, Scheduler(SchedulerConfig(lease_s=3600, confirm_s=3600)))
    sink: dict[bytes, bytes] = {}
    results: dict[str, dict[str, float]] = {}
    clock = time.perf_counter
    for name, values in rounds.items():
        decode_s = schedule_s = persist_s = 0.0
        for k, value in enumerate(values):
            t0 = clock()
            rec = serde.decode(TELEMETRY, value)
            t1 = clock()
            state.scheduler.on_telemetry(rec)
            t2 = clock()
            decode_s, schedule_s = decode_s + t1 - t0, schedule_s + t2 - t1
            if k % 500 == 499 or k == len(values) - 1:
                state.persist(sink, lambda p, key, v: None)
                persist_s += clock() - t2
        n = len(values) / 1e6
        results[name] = {"decode": decode_s / n, "schedule": schedule_s / n, "persist": persist_s / n,
                         "total": (decode_s + schedule_s + persist_s) / n}  # fmt: skip
    t = clock()
    for value in rounds["no change"]:
        serde.decode(TELEMETRY, value)
    results["bare decode"] = {"total": (clock() - t) / cars * 1e6}
    return results


def report_record_classes(cars: int) -> None:
    print(f"cost per telemetry record class, {cars:,} cars, in process (us/record) ...", flush=True)
    r = bench_record_classes(cars)
    floor = r["bare decode"]["total"]
    print(f"  {'class':<20} {'decode':>7} {'schedule':>9} {'persist':>8} {'total':>7}  x bare decode")
    for name, c in r.items():
        if name != "bare decode":
            total = c["total"]
            print(f"  {name:<20} {c['decode']:>7.1f} {c['schedule']:>9.1f} {c['persist']:>8.1f} "
                  f"{total:>7.1f}  {total / floor:>5.1f}x  ({1e6 / total:,.0f}/s)")  # fmt: skip
    line = f"  {'bare decode loop':<20} {floor:>7.1f} {'':>18} {floor:>8.1f}  ({1e6 / floor:,.0f}/s)"
    print(line, flush=True)


def bench_match(cars: int, rate: float, seconds: float, period_s: float = 20.0) -> dict[str, float]:
    """Match latency in process (module docstring, B): ms percentiles after the first second."""
    serde = AvroSerde(raw_timestamps=True)
    cfg = SchedulerConfig(lease_s=3600, confirm_s=3600)
    sched = Scheduler(cfg)
    start = int(time.time() * 1000) - 3_600_000

    def tel(i: int, ts: int, rnd: int) -> dict[str, Any]:
        return {**telemetry(i, ts, rnd), "region": REGIONS[0]}

    for rnd in range(2):
        for i in range(cars):
            sched.on_telemetry(tel(i, start + rnd * 5_000 + i % 1000, rnd))
    gc.collect()
    gc.freeze()  # as the worker does (``PoolScheduler._gc_maintenance``): no full GC walks the fleet
    t_start = start + 20_000
    inputs: list[tuple[float, int, Any]] = []  # (arrival s, kind 0 = telemetry 1 = request, payload)
    per_s = cars / period_s
    for k in range(int(per_s * seconds)):
        at = k / per_s
        inputs.append((at, 0, serde.encode(TELEMETRY, tel(k % cars, t_start + int(at * 1000), 2))))
    for k in range(int(rate * seconds)):
        at = k / rate
        rec = {**request(f"m{k:06d}", k), "ts": t_start + int(at * 1000), "region": REGIONS[0]}
        inputs.append((at, 1, rec))
    inputs.sort(key=lambda x: (x[0], x[1]))
    clock = time.perf_counter
    free_at = busy = 0.0
    latencies: list[float] = []
    for at, kind, payload in inputs:
        t = clock()
        if kind == 0:
            sched.on_telemetry(serde.decode(TELEMETRY, payload))
        else:
            sched.on_request(payload)
        service = clock() - t
        busy += service
        free_at = max(free_at, at) + service
        if kind == 1 and at >= 1.0:
            latencies.append((free_at - at) * 1000)
    gc.unfreeze()
    assigned = sched.counters["task_assigned"]
    return {"p50": pct(latencies, 50), "p99": pct(latencies, 99), "max": max(latencies),
            "busy": busy / seconds, "assigned": assigned, "tasks": int(rate * seconds)}  # fmt: skip


def bench_uncached_pick(candidates: int) -> float:
    """ms to score ``candidates`` nodes with ``stay_probability`` once each: a pick with no memo."""
    from processors.scheduler.prediction import stay_probability

    cfg = SchedulerConfig(lease_s=3600, confirm_s=3600)
    sched = Scheduler(cfg)
    start = int(time.time() * 1000) - 3_600_000
    for i in range(candidates):
        sched.on_telemetry(telemetry(i, start + i % 1000, 0))
    now = start + 20_000
    t = time.perf_counter()
    for node in sched.nodes.values():
        stay_probability(node, 600.0, now, cfg)
    return (time.perf_counter() - t) * 1000


def report_match(cars_list: list[int], rates: list[float], seconds: float) -> None:
    print(f"match latency in process, one pool, every car reporting every 20 s, {seconds:g} s per run ...")
    n = SchedulerConfig().max_candidates
    print(f"  baseline: ranking {n} nodes with no memo costs {bench_uncached_pick(n):.2f} ms a pick")
    for rate in rates:
        first: float | None = None
        for cars in cars_list:
            r = bench_match(cars, rate, seconds)
            first = first or r["p50"]
            print(f"  {rate:>6g} tasks/s, {cars:>7,} cars: p50 {r['p50']:7.2f} ms  p99 {r['p99']:7.2f} ms  "
                  f"max {r['max']:7.1f} ms  busy {r['busy']:.2f}  assigned {r['assigned']}/{r['tasks']}  "
                  f"p50 x{r['p50'] / first:.1f} of {cars_list[0]:,} cars", flush=True)  # fmt: skip
    print("  goal: p99 < 50 ms at 1,000 tasks/s over 100,000 eligible cars")


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def bench_restore(cars: int) -> dict[str, float]:
    """Memory per node and the time to rebuild a partition's scheduler from its table, in process.

    ``cars`` nodes (one telemetry record each, two rounds so each has a plug-in history) go into one
    partition's ``Scheduler``; its table (what the changelog holds) is written; then the partition is
    rebuilt from the table as after a rebalance (``PartitionState.rebuild``). Baseline of the same run:
    ``orjson.loads`` of every table value, the parse any restore must do. Reading the changelog from Kafka
    comes on top (the raw consume rate above says how fast that can be)."""
    import gc

    import orjson

    cfg = SchedulerConfig(lease_s=3600, confirm_s=3600)
    gc.collect()
    rss_before = _rss_bytes()
    state = PartitionState(0, Scheduler(cfg))
    start_ms = int(time.time() * 1000) - 60_000
    for rnd in range(2):
        for i in range(cars):
            state.scheduler.on_telemetry(telemetry(i, start_ms + rnd * 5_000 + i % 1000, rnd))
    gc.collect()
    rss_nodes = _rss_bytes() - rss_before
    table: dict[bytes, bytes] = {}
    state.persist(table, lambda p, key, v: None)
    table_bytes = sum(len(k) + len(v) for k, v in table.items())
    items = list(table.items())
    del state
    gc.collect()
    t = time.perf_counter()
    for _, value in items:
        if value[:1] == b"{":
            orjson.loads(value)
    parse_s = time.perf_counter() - t
    t = time.perf_counter()
    rebuilt, restored = PartitionState.rebuild(0, items, cfg)
    rebuild_s = time.perf_counter() - t
    assert len(restored.nodes) == cars, (len(restored.nodes), cars)
    return {"rss_per_node": rss_nodes / cars, "table_per_node": table_bytes / cars, "rebuild_s": rebuild_s,
            "parse_s": parse_s}  # fmt: skip


def report_restore(cars: int) -> None:
    print(f"memory and restore of {cars:,} nodes in one partition (in process) ...", flush=True)
    r = bench_restore(cars)
    print(f"  memory per node (RSS): {r['rss_per_node']:,.0f} B   in the table: {r['table_per_node']:,.0f} B")
    print(
        f"  rebuild from the table: {r['rebuild_s']:.2f} s (goal: 100k nodes < 20 s);  raw orjson parse of "
        f"the same values: {r['parse_s']:.2f} s, ratio {r['rebuild_s'] / r['parse_s']:.1f}x",
        flush=True,
    )


def processed_telemetry() -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=0.5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    m = _TEL.search(text)
    return float(m.group(1)) if m else 0.0


def drain(proc: subprocess.Popen[bytes], n: int, timeout_s: float = 900) -> tuple[float, float]:
    deadline = time.monotonic() + timeout_s
    first: tuple[float, float] | None = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, "worker died"
        count = processed_telemetry()
        now = time.perf_counter()
        if count:
            if first is None:
                first = (now, count)
            if count >= n:
                elapsed = now - first[0]
                return (count - first[1]) / max(elapsed, 1e-9), elapsed
        time.sleep(0.25)  # a scrape costs the worker ~1 ms of CPU: not too often
    raise TimeoutError(f"worker processed {processed_telemetry()} of {n} telemetry events in {timeout_s} s")


def wait_settled(settings: Settings, timeout_s: float = 120) -> float:
    """Wait until the worker has committed all it read (pool topic included): its state writes of the
    throughput phase are durable, so the latency phase starts on a steady worker. Returns seconds."""
    from streams.lag import group_lag

    t = time.perf_counter()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lag = group_lag(settings, "carnival-scheduler", [BYPOOL])
        if sum(lag.values()) == 0:
            break
        time.sleep(0.25)
    return time.perf_counter() - t


class Background(threading.Thread):
    """Telemetry of the same cars at a steady rate (fresh timestamps), while tasks are matched."""

    def __init__(self, settings: Settings, cars: int, rate: int) -> None:
        super().__init__(daemon=True)
        self.settings, self.cars, self.rate = settings, cars, rate
        self.stop = threading.Event()
        self.sent = 0

    def run(self) -> None:
        if not self.rate:
            return
        serde = serde_from_settings(self.settings)
        with Producer(self.settings, **{"linger.ms": 5}) as producer:
            t0 = time.perf_counter()
            while not self.stop.is_set():
                due = int((time.perf_counter() - t0) * self.rate)
                while self.sent < due:
                    rec = telemetry(self.sent % self.cars, int(time.time() * 1000), 40)
                    producer.produce(TELEMETRY, serde.encode(TELEMETRY, rec), rec["vin"])
                    self.sent += 1
                producer.poll(0.005)


def request(task_id: str, i: int) -> dict[str, Any]:
    return {
        "task_id": task_id, "ts": int(time.time() * 1000), "tenant": "bench", "kind": "browse",
        "priority": i % 10, "est_duration_s": 600, "deadline": None, "min_hw": "HW4",
        "region": REGIONS[i % len(REGIONS)], "min_soc_pct": None,
    }  # fmt: skip


created: list[float] = []  # request produced -> ASSIGN produced (its CreateTime), ms, same tasks
steady: list[float] = []  # latencies of requests sent 2 s or more into the phase


def bench_latency(settings: Settings, tasks: int, rate: float) -> list[float]:
    serde = serde_from_settings(settings)
    consumer = make_consumer(settings, **{"auto.offset.reset": "latest", "fetch.wait.max.ms": 5})
    consumer.subscribe([ASSIGNMENTS])
    deadline = time.monotonic() + 30
    while not consumer.assignment() and time.monotonic() < deadline:
        consumer.poll(0.1)
    # "latest" is resolved after the assignment: wait for it, or the first ASSIGNs can be skipped.
    while time.monotonic() < deadline and any(
        tp.offset < 0 for tp in consumer.position(consumer.assignment())
    ):
        consumer.poll(0.05)
    producer = Producer(settings, **{"linger.ms": 0})
    # A cold producer holds its first records until it has a producer id and metadata (hundreds of ms,
    # counted as match latency before): one warm-up request, its ASSIGN awaited, outside the numbers.
    warm_id = f"warmup-{int(time.time() * 1000)}"
    producer.produce(REQUESTS, serde.encode(REQUESTS, request(warm_id, 0)), warm_id)
    producer.flush(30)
    while time.monotonic() < deadline + 30 and not any(
        not m.error() and m.value() is not None and serde.decode(ASSIGNMENTS, m.value())["task_id"] == warm_id
        for m in consumer.consume(100, 0.1)
    ):
        pass
    sent: dict[str, float] = {}
    latencies: list[float] = []
    created.clear()
    steady.clear()
    slow: list[str] = []  # when (seconds into the phase) requests took > 100 ms, and how long
    t_wall = time.time()
    tag = f"bt{int(time.time())}"
    t0 = time.perf_counter()
    i = 0
    end = time.monotonic() + tasks / rate + 30
    while len(latencies) < tasks and time.monotonic() < end:
        while i < tasks and i <= (time.perf_counter() - t0) * rate:
            task_id = f"{tag}-{i:05d}"
            producer.produce(REQUESTS, serde.encode(REQUESTS, request(task_id, i)), task_id)
            producer.poll(0)
            sent[task_id] = time.time()
            i += 1
        for msg in consumer.consume(100, 0.002):
            if msg.error() or msg.value() is None:
                continue
            received = time.time()
            rec = serde.decode(ASSIGNMENTS, msg.value())
            start = sent.pop(rec["task_id"], None) if rec["command"] == "ASSIGN" else None
            if start is not None:
                latencies.append((received - start) * 1000)
                created.append(msg.timestamp()[1] - start * 1000)  # until the worker produced it
                if start - t_wall >= 2:
                    steady.append(latencies[-1])
                if latencies[-1] > 100:
                    slow.append(f"{start - t_wall:.1f}s:{latencies[-1]:.0f}ms")
    producer.close()
    consumer.close()
    if sent:
        print(f"  no ASSIGN seen for {len(sent)} tasks: {sorted(sent)[:5]}")
    if slow:
        print(f"  > 100 ms: {len(slow)} requests, at {' '.join(slow[:20])}")
    return latencies


def pct(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--cars", type=int, default=20_000)
    ap.add_argument("--tasks", type=int, default=400)
    ap.add_argument("--task-rate", type=float, default=20.0)
    ap.add_argument("--background-rate", type=int, default=200)
    ap.add_argument("--use-running-stack", action="store_true", help="use the stack CARNIVAL_* points at")
    ap.add_argument("--restore-cars", type=int, default=100_000,
                    help="nodes of the in-process memory/restore phase (0: skip it)")  # fmt: skip
    ap.add_argument("--restore-only", action="store_true", help="only the memory/restore phase (no Kafka)")
    ap.add_argument("--class-cars", type=int, default=10_000, help="cars of the per-class phase (0: skip)")
    ap.add_argument("--match-cars", default="20000,100000", help="pool sizes of the in-process match phase")
    ap.add_argument("--match-rates", default="20,1000", help="task rates of the in-process match phase")
    ap.add_argument("--match-seconds", type=float, default=5.0, help="event time per in-process match run")
    ap.add_argument("--in-process-only", action="store_true", help="only the in-process phases (no Kafka)")
    args = ap.parse_args()
    if args.class_cars and not args.restore_only:
        report_record_classes(args.class_cars)
    cars_list = [int(c) for c in args.match_cars.split(",") if c and int(c) > 0]
    if cars_list and not args.restore_only:
        report_match(cars_list, [float(r) for r in args.match_rates.split(",") if r], args.match_seconds)
    if args.restore_cars:
        report_restore(args.restore_cars)
    if args.restore_only or args.in_process_only:
        return

    kafka = bench_kafka(None if args.use_running_stack else bench_port(2, 48390), "carnival-bench-scheduler-")
    settings, workdir = kafka.settings, kafka.workdir
    proc: subprocess.Popen[bytes] | None = None
    background: Background | None = None
    try:
        n, cars = args.events, args.cars
        print(f"encoding {n:,} telemetry records of {cars:,} cars in {len(REGIONS)} regions ...", flush=True)
        encoded = encode_telemetry(serde_from_settings(settings), n, cars, int(time.time() * 1000) - 60_000)
        secs = produce_all(settings, TELEMETRY, encoded)
        print(f"produced {n:,} in {secs:.2f} s ({n / secs:,.0f}/s)", flush=True)
        raw = bench_raw_consume(settings, n)
        inproc = bench_in_process(encoded[: min(n, 100_000)])
        del encoded

        print("starting the scheduler worker ...", flush=True)
        log = open(workdir / "worker.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "carnival.cli", "worker", "scheduler"],
            env={**os.environ, **WORKER_ENV}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        rate, elapsed = drain(proc, n)
        settle_s = wait_settled(settings)
        print(f"worker settled (pool topic all committed) {settle_s:.1f} s after the drain", flush=True)

        print(f"latency: {args.tasks} tasks at {args.task_rate}/s, {args.background_rate}/s background ...")
        background = Background(settings, cars, args.background_rate)
        background.start()
        time.sleep(2)
        lat = bench_latency(settings, args.tasks, args.task_rate)
        background.stop.set()

        print()
        print(f"telemetry through the scheduler worker: {rate:>10,.0f} events/s  ({n:,} in {elapsed:.1f} s)")
        print(f"  raw confluent-kafka consume (bytes):  {raw:>10,.0f} events/s")
        print(f"  in-process decode+schedule+serialize: {inproc:>10,.0f} events/s  (no Kafka)")
        print(f"  ratios: worker / raw consume {rate / raw:.2f}, worker / in-process {rate / inproc:.2f}")
        print("  goal: >= 40,000 events/s per worker")
        if lat:
            print(f"match latency (request produced -> ASSIGN consumed), {len(lat)}/{args.tasks} tasks, "
                  f"{cars:,} eligible cars:")  # fmt: skip
            print(f"  p50 {pct(lat, 50):.1f} ms   p90 {pct(lat, 90):.1f} ms   p99 {pct(lat, 99):.1f} ms   "
                  f"max {max(lat):.1f} ms   (goal: p99 < 50 ms)")  # fmt: skip
            if len(steady) > 1:
                print(f"  requests sent 2 s or more into the phase ({len(steady)}): "
                      f"p50 {pct(steady, 50):.1f} ms   p90 {pct(steady, 90):.1f} ms   "
                      f"p99 {pct(steady, 99):.1f} ms")  # fmt: skip
            c50, c90, c99 = pct(created, 50), pct(created, 90), pct(created, 99)
            print(f"  until the worker produced the ASSIGN (its CreateTime): p50 {c50:.1f} ms   "
                  f"p90 {c90:.1f} ms   p99 {c99:.1f} ms")  # fmt: skip
        else:
            print("match latency: no assignment seen")
    finally:
        if background is not None:
            background.stop.set()
        stop_process(proc)
        kafka.close()


if __name__ == "__main__":
    main()
