"""Power worker throughput and detection latency, against raw baselines measured in the same run.

    python bench/bench_power.py [--events 200000] [--sites 500] [--triggers 100]
                                [--background-rates 1,2000,20000] [--busy-core] [--kafka-port 47592]

1. Throughput: pre-produce ``--events`` MEASUREMENT events from ``--sites`` sites (4 devices each, 4 Hz),
   then start ``carnival worker power`` and time it draining them (its
   ``carnival_power_events_processed_total`` counter, polled every 100 ms, from its first processed event
   to the last). Baselines on the same records: raw confluent-kafka consume (the worker's client), raw
   aiokafka consume, and the worker's work in one process without Kafka (Avro decode -> detector per
   event, the dirty sites' states encoded every 10,000 events, as a checkpoint does). Ratios: worker /
   raw consume and worker / in-process. Also the worker's CPU time per event (from /proc).
2. Profile: ``PowerProcessor`` itself (screen, detect, route, checkpoints; no Kafka) on the same records
   under cProfile, CPU µs per event by part; the worker's CPU per event minus that is its Kafka clients.
3. Latency, for each ``--background-rates`` rate: with the worker caught up and a steady background of
   MEASUREMENT events (from ``--sites`` sites of their own, event time advancing with the wall clock),
   produce ``--triggers`` LOAD_SHED events (one new site each, so the detector can release it at once)
   and time each from ``produce()`` to its FIRING alert read from ``alerts.v1``; the raw baseline of the
   same run is the trigger record itself read back from ``power.events.v1`` by the same consumer (the
   broker and the clients, no worker). ``--busy-core`` keeps one core busy meanwhile.

Absolute figures move with the machine's load (it is shared); the ratios to the baselines of the same
run much less. The bench starts its own Kafka broker (own ports and data dir) unless
--use-running-stack is given.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import bench_kafka, stop_process  # noqa: E402

from core.settings import Settings  # noqa: E402
from processors.power import Detector, PowerConfig  # noqa: E402
from processors.power.runtime import encode_state  # noqa: E402
from processors.power.scenario import SiteEvents  # noqa: E402
from streams.kafka import Producer, make_consumer  # noqa: E402
from streams.serde import AvroSerde, serde_from_settings  # noqa: E402

TOPIC = "power.events.v1"
DEVICES = ("meter-1", "ats-1", "gen-1", "bat-1")
METRICS_PORT = 47591
_PROCESSED = re.compile(r'^carnival_power_events_processed_total\{result="ok"\} ([0-9.e+]+)$', re.M)


def measurement_events(
    sites: int, n: int, tag: str, start_s: float = 0.0, period_s: float = 0.25
) -> list[dict[str, Any]]:
    """``n`` MEASUREMENT events, round-robin over sites and devices, one per device every ``period_s``
    of event time (4 Hz by default)."""
    builders = [SiteEvents(f"bench-{tag}-{i:04d}") for i in range(sites)]
    out: list[dict[str, Any]] = []
    step = 0
    while len(out) < n:
        t = start_s + step * period_s
        for site in builders:
            for j, dev in enumerate(DEVICES):
                out.append(site.measure(t + j * 0.01, device=dev, load_mw=10.0, frequency_hz=60.0))
        step += 1
    return out[:n]


def produce_all(settings: Settings, encoded: list[tuple[str, bytes]]) -> float:
    t0 = time.perf_counter()
    with Producer(settings) as producer:
        for key, value in encoded:
            producer.produce(TOPIC, value, key)
    assert producer.stats.failed == 0
    return time.perf_counter() - t0


def bench_raw_confluent(settings: Settings, n: int) -> float:
    consumer = make_consumer(settings, **{"fetch.wait.max.ms": 10})
    consumer.subscribe([TOPIC])
    seen, t0 = 0, None
    try:
        while seen < n:
            for msg in consumer.consume(10_000, 1.0):
                if msg.error():
                    continue
                if t0 is None:
                    t0 = time.perf_counter()
                _ = msg.value()
                seen += 1
    finally:
        consumer.close()
    assert t0 is not None
    return seen / (time.perf_counter() - t0)


def bench_raw_aiokafka(settings: Settings, n: int) -> float:
    from aiokafka import AIOKafkaConsumer

    async def run() -> float:
        consumer = AIOKafkaConsumer(
            TOPIC,
            bootstrap_servers=settings.kafka_bootstrap,
            auto_offset_reset="earliest",
            group_id=f"bench-aiokafka-{uuid.uuid4().hex[:8]}",
            enable_auto_commit=False,
        )
        await consumer.start()
        seen, t0 = 0, None
        try:
            while seen < n:
                batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
                for records in batches.values():
                    if t0 is None:
                        t0 = time.perf_counter()
                    for rec in records:
                        _ = rec.value
                        seen += 1
        finally:
            await consumer.stop()
        assert t0 is not None
        return seen / (time.perf_counter() - t0)

    return asyncio.run(run())


def bench_in_process(settings: Settings, encoded: list[tuple[str, bytes]]) -> float:
    """The worker's work without Kafka or faust: decode and detect per event, encode the states of the
    sites touched since the last "checkpoint" every 10,000 events. Events per CPU second (this process's
    CPU time: what one free core would do, whatever else the machine runs)."""
    serde = serde_from_settings(settings)
    config = PowerConfig()
    dets: dict[str, Detector] = {}
    dirty: set[str] = set()
    t0 = time.process_time()
    for i, (key, value) in enumerate(encoded, 1):
        rec = serde.decode(TOPIC, value)
        det = dets.get(key)
        if det is None:
            det = dets[key] = Detector(key, config)
        det.on_event(rec, arrival_us=time.time_ns() // 1000)
        dirty.add(key)
        if i % 10_000 == 0 or i == len(encoded):
            for site in dirty:
                encode_state(dets[site])
            dirty.clear()
    return len(encoded) / (time.process_time() - t0)


def metric(name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=0.5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else None


def processed(timeout: float = 0.5) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=timeout) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    m = _PROCESSED.search(text)
    return float(m.group(1)) if m else 0.0


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log = open(log_path, "wb")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "carnival.cli", "worker", "power"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_worker_drain(
    proc: subprocess.Popen[bytes], n: int, timeout_s: float = 600
) -> tuple[float, float, float]:
    """(events/s, seconds from the worker's first processed event to the n-th, worker CPU seconds in
    between)."""
    deadline = time.monotonic() + timeout_s
    first: tuple[float, float, float] | None = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, "worker died"
        count = processed()
        now = time.perf_counter()
        if count:
            if first is None:
                first = (now, count, cpu_seconds(proc.pid))
            if count >= n:
                elapsed = now - first[0]
                return (count - first[1]) / elapsed, elapsed, cpu_seconds(proc.pid) - first[2]
        time.sleep(0.1)
    raise TimeoutError(f"worker processed {processed()} of {n} events in {timeout_s} s")


class Background(threading.Thread):
    """Steady MEASUREMENT traffic at ``rate`` events/s from ``sites`` sites for ``seconds`` (or until
    stopped).

    Encoded before it starts (the bench's own Python must not compete with the worker for the CPU while
    it measures). Event time advances with the wall clock (each device reports every
    ``len(DEVICES) * sites / rate`` seconds): at a lower rate than 4 Hz per device, 4 Hz event time would
    fall behind the sites' clocks (extrapolated by processing time while a site is idle) and every event
    would be LATE, i.e. a dead letter instead of plain background traffic. Each rate uses sites of its
    own, so a later run never starts behind the clocks an earlier one left."""

    def __init__(self, settings: Settings, sites: int, rate: int, seconds: float) -> None:
        super().__init__(daemon=True)
        self.settings, self.rate = settings, max(rate, 1)
        sites = max(1, min(sites, self.rate))  # at 1 event/s, one site (each site's devices report in turn)
        period = len(DEVICES) * sites / self.rate
        serde = serde_from_settings(settings)
        events = measurement_events(sites, int(self.rate * seconds) + 1, f"bg{rate}", 1_000_000.0, period)
        self.encoded = [(e["site_id"], serde.encode(TOPIC, e)) for e in events]
        self.stop_flag = threading.Event()
        self.sent = 0

    def run(self) -> None:
        with Producer(self.settings, **{"linger.ms": 1}) as producer:
            t0 = time.perf_counter()
            for key, value in self.encoded:
                if self.stop_flag.is_set():
                    break
                producer.produce(TOPIC, value, key)
                self.sent += 1
                ahead = self.sent / self.rate - (time.perf_counter() - t0)
                if ahead > 0.002:
                    producer.poll(0)
                    time.sleep(ahead)


def bench_latency(settings: Settings, triggers: int) -> tuple[list[float], list[float]]:
    """(trigger -> FIRING alert consumed, trigger -> the trigger record itself consumed) in ms: the second
    is the raw baseline of the same run (the broker and a plain consumer, no worker)."""
    serde = serde_from_settings(settings)
    consumer = make_consumer(settings, **{"fetch.wait.max.ms": 1, "auto.offset.reset": "latest"})
    consumer.subscribe(["alerts.v1", TOPIC])
    deadline = time.monotonic() + 15
    while len(consumer.assignment()) < 2 * settings.topic_partitions and time.monotonic() < deadline:
        consumer.poll(0.1)
    sent: dict[str, float] = {}
    unseen_raw: set[str] = set()
    latencies: list[float] = []
    raw: list[float] = []
    tag = uuid.uuid4().hex[:6]
    producer = Producer(settings, **{"linger.ms": 0})

    def drain(timeout: float) -> None:
        for msg in consumer.consume(1000, timeout):
            if msg.error() or msg.value() is None:
                continue
            t = time.perf_counter()
            if msg.topic() == TOPIC:
                key = (msg.key() or b"").decode()
                if key in unseen_raw:
                    unseen_raw.discard(key)
                    raw.append((t - sent[key]) * 1000)
                continue
            alert = serde.decode("alerts.v1", msg.value())
            site = alert["site_id"] or ""
            if site in sent and alert["status"] == "FIRING" and site not in unseen_raw:
                latencies.append((t - sent.pop(site)) * 1000)

    for i in range(triggers):
        site = SiteEvents(f"bench-trigger-{tag}-{i:04d}")
        value = serde.encode(TOPIC, site.event("ctl-1", "LOAD_SHED", 1.0, detail="bench trigger"))
        sent[site.site_id] = time.perf_counter()
        unseen_raw.add(site.site_id)
        producer.produce(TOPIC, value, site.site_id)
        producer.poll(0)
        end = time.perf_counter() + 0.05  # ~20 triggers/s
        while time.perf_counter() < end:
            drain(0.005)
    end = time.monotonic() + 10
    while sent and time.monotonic() < end:
        drain(0.05)
    producer.close()
    consumer.close()
    if sent:
        print(f"  warning: {len(sent)} trigger alerts not seen within 10 s")
    return latencies, raw


def bench_profile(
    settings: Settings, encoded: list[tuple[str, bytes]], batch: int = 5000
) -> tuple[float, list[tuple[str, float]]]:
    """The worker's own Python per event, without Kafka: ``PowerProcessor`` on the same records (batches
    of ``batch``, its real checkpointer, a store in memory, deliveries acknowledged at once): its CPU µs
    per event, and the shares of that time by part (from a second run under cProfile)."""
    import cProfile
    import pstats

    from processors.power.processor import PowerProcessor
    from processors.power.runtime import DetectorCache
    from processors.runtime.kafka_io import Record

    class NullIO:
        def send(self, topic: str, key: Any, value: Any, partition: int = -1) -> asyncio.Future[Any]:
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            fut.set_result(None)
            return fut

        async def flush(self) -> None:
            return None

        def commit(self, offsets: Any, wait: bool = False) -> None:
            return None

        def highwater(self, partition: int) -> None:
            return None

        position = highwater

        def assigned(self) -> frozenset[int]:
            return frozenset()

        def settling(self) -> bool:
            return False

    class Store(dict[str, bytes]):
        def __init__(self) -> None:
            super().__init__()
            self.data, self.partition_of = self, {}

        def put(self, key: str, value: bytes, partition: int) -> None:
            self[key] = value

        def drop(self, partitions: Any) -> None:
            return None

    now = time.time()
    records = [Record(TOPIC, 0, i, k.encode(), v, now) for i, (k, v) in enumerate(encoded)]
    store = Store()
    serde = AvroSerde(None, raw_timestamps=True)
    power = PowerProcessor(
        NullIO(), store, serde, DetectorCache(PowerConfig(), store.get, lambda: time.time_ns() // 1000),
        checkpoint_s=0.5, checkpoint_events=20_000, max_unconfirmed=4,
    )  # fmt: skip

    async def run(part: list[Any]) -> None:
        for start in range(0, len(part), batch):
            await power.handle(part[start : start + batch])
            await asyncio.sleep(0)  # where the worker polls for its next batch: the checkpoint runs
        await power.settle()

    half = len(records) // 2  # the first half plain (CPU per event), the second under the profiler (shares)
    cpu0 = time.process_time()
    asyncio.run(run(records[:half]))
    cpu_us = (time.process_time() - cpu0) / half * 1e6
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    asyncio.run(run(records[half:]))
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    parts: dict[str, float] = {}
    for (path, _, func), (_, _, tottime, _, _) in stats.items():
        parts[_category(path, func)] = parts.get(_category(path, func), 0.0) + tottime
    total = sum(parts.values()) or 1.0
    return cpu_us, sorted(((k, v / total) for k, v in parts.items()), key=lambda kv: -kv[1])


def _category(path: str, func: str) -> str:
    if "serde" in path or "fastavro" in path or "schemaless" in func:
        return "Avro decode/encode (streams/serde.py, fastavro)"
    if "reorder" in path:
        return "detector: reorder buffer"
    if path.endswith(("detector.py", "events.py")) or "/rules/" in path:
        return "detector: rules, normalize, timers"
    if "orjson" in func or func in ("encode_state", "to_dict", "snapshot"):
        return "state encoding (checkpoints)"
    if "power/processor.py" in path or "power/runtime.py" in path:
        return "processor: screen, batch, route"
    if "checkpoint.py" in path or "policy.py" in path or "asyncio" in path or "prometheus" in path:
        return "checkpoint, policy, asyncio, metrics"
    return "other (builtins, dict/list work)"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--sites", type=int, default=500)
    ap.add_argument("--triggers", type=int, default=100, help="per background rate")
    ap.add_argument("--background-rates", default="1,2000,20000", help="events/s, comma separated")
    ap.add_argument("--busy-core", action="store_true", help="keep one core busy during the latency runs")
    ap.add_argument("--use-running-stack", action="store_true", help="use the stack CARNIVAL_* points at")
    ap.add_argument("--kafka-port", type=int, default=47592, help="the private broker's port (controller +1)")
    ap.add_argument("--metrics-port", type=int, default=47591, help="the worker's metrics port")
    args = ap.parse_args()
    global METRICS_PORT
    METRICS_PORT = args.metrics_port
    rates = [int(r) for r in args.background_rates.split(",") if r.strip()]

    kafka = bench_kafka(None if args.use_running_stack else args.kafka_port, "carnival-bench-power-")
    settings, workdir = kafka.settings, kafka.workdir
    env = {
        **os.environ,
        "CARNIVAL_METRICS_PORT": str(METRICS_PORT),
        "CARNIVAL_LOG_FORMAT": "json",
        "CARNIVAL_LOG_LEVEL": "WARNING",
    }
    proc: subprocess.Popen[bytes] | None = None
    busy: subprocess.Popen[bytes] | None = None
    try:
        n = args.events
        print(f"encoding {n:,} power events from {args.sites} sites ...", flush=True)
        serde = serde_from_settings(settings)
        encoded = [(e["site_id"], serde.encode(TOPIC, e)) for e in measurement_events(args.sites, n, "tp")]
        secs = produce_all(settings, encoded)
        print(f"produced {n:,} in {secs:.2f} s ({n / secs:,.0f}/s)")

        raw_c = bench_raw_confluent(settings, n)
        raw_a = bench_raw_aiokafka(settings, n)
        inproc = bench_in_process(settings, encoded[:50_000])
        profile_us, profile = bench_profile(settings, encoded[:60_000])
        del encoded

        print("starting the power worker ...", flush=True)
        proc = start_worker(env, workdir / "worker.log")
        rate, elapsed, cpu_s = bench_worker_drain(proc, n)
        cpu_us = cpu_s / n * 1e6
        batches = metric("carnival_power_batch_events_count") or 0
        batch_events = metric("carnival_power_batch_events_sum") or 0
        handle_us = (metric("carnival_power_batch_seconds_sum") or 0) / max(batch_events, 1) * 1e6
        writes = metric("carnival_power_state_writes_total") or 0
        checkpoints = metric("carnival_power_checkpoint_seconds_count") or 0

        if args.busy_core:
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        runs: list[tuple[int, float, float, list[float], list[float]]] = []
        seconds = args.triggers * 0.05 + 12
        for bg_rate in rates:
            print(f"latency: {args.triggers} triggers with {bg_rate:,}/s background ...", flush=True)
            background = Background(settings, args.sites, bg_rate, seconds)
            background.start()
            time.sleep(2)
            t_bg, bg_sent0, done0 = time.perf_counter(), background.sent, processed() or 0
            latencies, raw = bench_latency(settings, args.triggers)
            took = time.perf_counter() - t_bg
            worker_rate = ((processed() or 0) - done0) / took
            runs.append((bg_rate, (background.sent - bg_sent0) / took, worker_rate, latencies, raw))
            background.stop_flag.set()
            background.join(30)
            time.sleep(1)

        print()
        print("== power events/s (one worker, 2 shared cores)")
        print(f"  raw confluent-kafka consume          {raw_c:>10,.0f}/s")
        print(f"  raw aiokafka consume                 {raw_a:>10,.0f}/s")
        print(f"  in-process decode+detect+checkpoints {inproc:>10,.0f}/s   (no Kafka; per CPU second)")
        print(f"  power worker drain                   {rate:>10,.0f}/s   ({n:,} events in {elapsed:.1f} s)")
        print(f"  ratio worker / raw confluent consume {rate / raw_c:>10.3f}")
        print(
            f"  worker per CPU second                {1e6 / cpu_us:>10,.0f}/s   (what one free core would do)"
        )
        print(f"  ratio worker / in-process, per CPU s {1e6 / cpu_us / inproc:>10.3f}")
        mean_batch = batch_events / max(batches, 1)
        print(f"  (worker CPU {cpu_us:.0f} µs per event, wall time in its batch code {handle_us:.0f} µs;")
        print(f"   {batches:,.0f} batches of {mean_batch:,.0f} events on average,")
        print(f"   {writes:,.0f} state writes in {checkpoints:,.0f} checkpoints)")
        print(f"== where the worker's CPU goes: {cpu_us:.0f} µs per event, of which its own Python")
        print(f"   without Kafka (PowerProcessor in one process, CPU time) {profile_us:.0f} µs; by cProfile:")
        for what, share in profile:
            print(f"    {share * profile_us:>6.1f} µs  {share:>4.0%}  {what}")
        rest = max(cpu_us - profile_us, 0)
        print(f"    the rest, {rest:.0f} µs: the Kafka clients (librdkafka's threads, Record objects, the")
        print("    polling thread hop)")
        busy_note = ", one core kept busy" if args.busy_core else ""
        for bg_rate, bg_real, worker_rate, latencies, raw in runs:
            print(f"== detection latency at {bg_rate:,}/s background (sent {bg_real:,.0f}/s, worker "
                  f"processed {worker_rate:,.0f}/s{busy_note})")  # fmt: skip
            for name, values in (("produce -> FIRING alert consumed", latencies),
                                 ("raw: produce -> the trigger consumed", raw)):  # fmt: skip
                if values:
                    print(
                        f"  {name:38} n={len(values):<4} p50 {pct(values, 0.50):7.1f} ms  "
                        f"p90 {pct(values, 0.90):7.1f} ms  p99 {pct(values, 0.99):7.1f} ms  "
                        f"max {max(values):7.1f} ms"
                    )
            if latencies and raw:
                p99, raw99 = pct(latencies, 0.99), pct(raw, 0.99)
                print(f"  ratio p99 alert / p99 raw: {p99 / max(raw99, 0.001):.1f}; "
                      f"p99 alert - p99 raw: {p99 - raw99:.1f} ms")  # fmt: skip
    finally:
        if busy is not None:
            busy.kill()
        stop_process(proc)
        kafka.close()


if __name__ == "__main__":
    main()
