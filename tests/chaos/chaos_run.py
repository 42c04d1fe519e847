"""The chaos scenario: the whole pipeline under simulator load while faults are injected on a timeline.

Processes: the three workers (`carnival worker scheduler|power|sink`, each its own process, restarted
like the supervisor does when one dies by itself), the alert router (`carnival alerts route`) to a
healthy and a faulty receiver, and the seeded simulator. Three threads inject faults while it runs:

* infra: the poison records, a broker restart (same data dir), ClickHouse stopped for a while;
* kills: SIGKILL of each worker at seeded random moments, restarted at once;
* receiver: the faulty receiver is down from the start; from the first alert the healthy one gets
  (or mid-run at the latest) it stays down a while longer, then answers 500, then malformed, then ok.

A watcher samples the committed offsets of every group on the poison records' partitions, from which
the checks time how long each processor took to serve normal records again.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import chaos_poison
from chaos_receiver import DOWN, ERROR_500, MALFORMED, OK, FaultyReceiver
from chaos_scale import Scale
from confluent_kafka import Consumer, TopicPartition
from worker_process import ROOT, WorkerProcess

from core.settings import Settings
from processors.groups import POWER, SCHEDULER, TELEMETRY_ROUTER
from sinks.tables import TABLE_FOR_TOPIC
from streams.kafka import make_consumer
from streams.serde import serde_from_settings
from streams.topics import POWER_EVENTS_TOPIC

SINK_GROUP = "carnival-sink"
ROUTER_GROUP = "chaos-alert-router"
GROUP_OF = {
    "scheduler": SCHEDULER.group,
    "scheduler-router": TELEMETRY_ROUTER.group,
    "power": POWER.group,
    "sink": SINK_GROUP,
}
WORKERS = ("scheduler", "power", "sink")


@dataclass
class Event:
    at_s: float  # wall seconds after the simulator started
    what: str
    outcome: str = ""


@dataclass
class RunResult:
    scale: Scale
    since: datetime
    lo: dict[tuple[str, int], int]  # (topic, partition) -> first offset of the run
    hi: dict[tuple[str, int], int] = field(default_factory=dict)  # -> end offset (exclusive)
    poisons: list[chaos_poison.Poison] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    crashes: dict[str, int] = field(default_factory=dict)  # worker -> exits it did by itself
    # Exits of a worker started while the broker was down: it gives up at start after a timeout, with a
    # clear message and a non-zero code (by design, issue 11 item 7), and the supervisor starts it again.
    broker_exits: dict[str, int] = field(default_factory=dict)
    kills: dict[str, int] = field(default_factory=dict)
    samples: dict[tuple[str, str, int], list[tuple[float, int]]] = field(default_factory=dict)
    receivers: list[FaultyReceiver] = field(default_factory=list)
    truth_path: Path = Path()
    caught_up: dict[str, int] = field(default_factory=dict)  # group -> records still behind at the end
    sim_exit: int | None = None
    t0: float = 0.0  # monotonic time the simulator started
    logs: dict[str, str] = field(default_factory=dict)  # worker -> tail of its last log


def offsets(settings: Settings, topics: list[str]) -> dict[tuple[str, int], int]:
    """High watermark of every partition of ``topics``."""
    consumer = make_consumer(settings, "chaos-watermarks", log_level=0)
    try:
        meta = consumer.list_topics(timeout=20).topics
        out = {}
        for t in topics:
            for p in meta[t].partitions:
                out[(t, p)] = consumer.get_watermark_offsets(TopicPartition(t, p), timeout=20)[1]
        return out
    finally:
        consumer.close()


class CommittedWatcher(threading.Thread):
    """Samples the committed offset of (group, topic, partition) every half second."""

    def __init__(self, settings: Settings, result: RunResult) -> None:
        super().__init__(daemon=True, name="chaos-watcher")
        self.settings, self.result = settings, result
        self.watch: dict[str, set[tuple[str, int]]] = {}
        self.stopping = threading.Event()
        self._consumers: dict[str, Consumer] = {}

    def add(self, group: str, topic: str, partition: int) -> None:
        self.watch.setdefault(group, set()).add((topic, partition))

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            for group, tps in list(self.watch.items()):
                try:
                    consumer = self._consumers.get(group) or make_consumer(self.settings, group, log_level=0)
                    self._consumers[group] = consumer
                    got = consumer.committed([TopicPartition(t, p) for t, p in tps], timeout=2)
                except Exception:  # noqa: BLE001 - the broker is down for a while on purpose
                    continue
                now = time.monotonic()
                for tp in got:
                    self.result.samples.setdefault((group, tp.topic, tp.partition), []).append(
                        (now, tp.offset)
                    )
        for consumer in self._consumers.values():
            consumer.close()


class Scenario:
    def __init__(self, settings: Settings, stack_env: dict[str, str], workdir: Path, scale: Scale) -> None:
        from carnival.demo import worker_overrides

        self.settings, self.scale, self.workdir = settings, scale, workdir
        self.rng = random.Random(scale.seed * 1000 + 11)
        self.env = {
            **os.environ,
            **stack_env,
            "PYTHONPATH": str(ROOT),
            "CARNIVAL_LOG_FORMAT": "json",
            "CARNIVAL_SINK_INSTANCE_ID": "chaos-sink-1",
            **worker_overrides(scale.speed),
        }
        (workdir / "logs").mkdir(parents=True, exist_ok=True)
        self.workers = {n: WorkerProcess(n, self.env, workdir / "logs", name="chaos") for n in WORKERS}
        self.lock = threading.Lock()  # a kill-and-restart is not mistaken for a crash
        self.healthy = FaultyReceiver("healthy", OK)
        self.faulty = FaultyReceiver("faulty", DOWN)
        self.router: subprocess.Popen[bytes] | None = None
        self.sim: Any = None
        self.site = ""
        self.done = threading.Event()
        topics = sorted(TABLE_FOR_TOPIC)
        self.result = RunResult(scale, datetime.now(UTC).replace(microsecond=0), offsets(settings, topics))
        self.result.receivers = [self.healthy, self.faulty]
        self.result.truth_path = workdir / "truth.jsonl"
        self.result.crashes = dict.fromkeys(WORKERS, 0)
        self.result.broker_exits = dict.fromkeys(WORKERS, 0)
        self.started_at: dict[str, float] = {}  # worker -> at() of its current incarnation's start
        self.broker_down: tuple[float, float] | None = None  # (stopped, ready) of the broker restart
        self.result.kills = dict.fromkeys(WORKERS, 0)
        self.watcher = CommittedWatcher(settings, self.result)

    # -- the timeline ------------------------------------------------------------------------
    def at(self) -> float:
        return time.monotonic() - self.result.t0

    def event(self, what: str, outcome: str = "") -> Event:
        ev = Event(round(self.at(), 1), what, outcome)
        self.result.events.append(ev)
        print(f"chaos {ev.at_s:7.1f} s: {what} {outcome}", flush=True)  # progress, with pytest -s
        return ev

    def sleep_until(self, at_s: float) -> bool:
        """False when the run ended first."""
        return not self.done.wait(max(0.0, at_s - self.at()))

    def run(self) -> RunResult:
        try:
            self._start()
            threads = [
                threading.Thread(target=f, daemon=True, name=f.__name__)
                for f in (self._infra, self._kills, self._receiver_phases)
            ]
            for t in threads:
                t.start()
            while self.sim.poll() is None:
                self._supervise()
                time.sleep(0.5)
            self.result.sim_exit = self.sim.wait()
            self.event("simulator finished", f"exit {self.result.sim_exit}")
            self.done.set()
            for t in threads:
                t.join(timeout=180)
            self.faulty.set_mode(OK)  # whatever the phase reached, the faulty receiver recovers
            self._catch_up()
        finally:
            self._stop()
        return self.result

    def _start(self) -> None:
        from carnival.sim_process import SimulatorProcess
        from simulator.options import parse_start_ms

        for name in self.workers:
            self._start_worker(name)
        self.router = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "carnival.cli",
                "alerts",
                "route",
                "--webhook",
                self.healthy.url,
                "--webhook",
                self.faulty.url,
                "--group-id",
                ROUTER_GROUP,
                "--max-backoff",
                "2",
                "--timeout",
                "5",
            ],
            env=self.env,
            cwd=ROOT,
            stdout=open(self.workdir / "logs" / "router.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        time.sleep(15)  # let the faust apps join their groups before the first events (as the demo does)
        s = self.scale
        args = [
            "--cars",
            str(s.cars),
            "--sites",
            str(s.sites),
            "--start",
            s.start,
            "--duration",
            s.duration,
            "--speed",
            str(s.speed),
            "--seed",
            str(s.seed),
            "--tasks-per-hour",
            str(s.tasks_per_hour),
            "--truth",
            str(self.result.truth_path),
        ]
        self.start_ms = parse_start_ms(s.start)
        self.result.t0 = time.monotonic()
        self.sim = SimulatorProcess(
            args, self.env, self.workdir / "logs" / "simulate.log", self.start_ms, s.speed
        )
        self.watcher.start()
        self.event("simulator started", " ".join(args[:-2]))

    def _supervise(self) -> None:
        """Restart a worker that exited by itself, as `carnival worker` does (1 s backoff)."""
        with self.lock:
            for name, w in self.workers.items():
                if not w.alive():
                    code = f"code {w.proc.returncode if w.proc else '?'}"
                    if self._started_with_broker_down(name):
                        self.result.broker_exits[name] += 1
                        self.event(f"{name} exited: started while the broker was down", code)
                    else:
                        self.result.crashes[name] += 1
                        self.result.logs[name] = w.log_tail(3000)
                        self.event(f"{name} exited by itself", code)
                    time.sleep(1)
                    self._start_worker(name)

    def _start_worker(self, name: str) -> None:
        self.workers[name].start()
        self.started_at[name] = self.at()

    def _started_with_broker_down(self, name: str) -> bool:
        if self.broker_down is None:
            return False
        down, up = self.broker_down
        return down <= self.started_at.get(name, -1.0) <= up

    def _kills(self) -> None:
        s = self.scale
        plan = []
        for name in WORKERS:
            for _ in range(s.kills_per_worker):
                at = self.rng.uniform(s.poison_at_s + 2 * s.quiet_after_poison_s, s.sim_wall_s - 5)
                plan.append((at, name))
        for at, name in sorted(plan):
            if not self.sleep_until(at):
                return
            with self.lock:
                self.workers[name].kill()
                self._start_worker(name)
                self.result.kills[name] += 1
            self.event(f"SIGKILL {name}", "restarted")

    def _infra(self) -> None:
        from carnival.stack import clickhouse_server, kafka_broker

        s = self.scale
        if not self.sleep_until(s.poison_at_s):
            return
        self._inject_poison(wave=1)
        if not self.sleep_until(s.poison_at_s + s.quiet_after_poison_s):
            return
        self._inject_poison(wave=2)
        if not self.sleep_until(s.broker_restart_at_s):
            return
        ev = self.event("broker restart (same data dir)")
        started = time.monotonic()
        self.broker_down = (self.at(), float("inf"))
        kafka_broker.stop_broker(self.settings)
        kafka_broker.start_broker(self.settings)
        self.broker_down = (self.broker_down[0], self.at())
        ev.outcome = f"back after {time.monotonic() - started:.1f} s"
        if not self.sleep_until(s.clickhouse_stop_at_s):
            return
        ev = self.event(f"ClickHouse stopped for {s.clickhouse_down_s:.0f} s")
        clickhouse_server.stop_clickhouse(self.settings)
        time.sleep(s.clickhouse_down_s)
        clickhouse_server.start_clickhouse(self.settings)
        ev.outcome = f"back at {self.at():.0f} s"

    def _inject_poison(self, wave: int) -> None:
        if wave == 1:
            self.site = self._a_real_site()
        site = self.site
        region = site.split("-", 1)[1].rsplit("-", 1)[0] if site.startswith("dc-") else "us-west"
        sim_now = self.sim.sim_ms(self.start_ms + 10**12)
        poisons = [p for p in chaos_poison.build(self.settings, sim_now, site, region, self.scale.seed)
                   if p.wave == wave]  # fmt: skip
        ev = self.event(f"{len(poisons)} poison records (wave {wave})", f"site {site}")
        chaos_poison.inject(self.settings, poisons)
        for p in poisons:
            for reader in p.readers:
                self.watcher.add(GROUP_OF[reader], p.topic, p.partition)
        self.result.poisons += poisons
        failed = [p.name for p in poisons if p.error]
        ev.outcome += f"; {len(poisons) - len(failed)} delivered" + (f", FAILED: {failed}" if failed else "")

    def _a_real_site(self) -> str:
        """A site of this run, read back from power.events.v1 (its watermark is the poison's target)."""
        serde = serde_from_settings(self.settings)
        consumer = make_consumer(self.settings, "chaos-site-probe", log_level=0)
        try:
            parts = [
                TopicPartition(POWER_EVENTS_TOPIC, p, o)
                for (t, p), o in self.result.lo.items()
                if t == POWER_EVENTS_TOPIC
            ]
            consumer.assign(parts)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                msg = consumer.poll(1)
                if msg is not None and not msg.error() and msg.value():
                    return str(serde.decode(POWER_EVENTS_TOPIC, msg.value())["site_id"])
            return "dc-us-west-01"
        finally:
            consumer.close()

    def _receiver_phases(self) -> None:
        s = self.scale
        deadline = s.sim_wall_s * 0.4
        while not self.healthy.distinct() and self.at() < deadline and not self.done.is_set():
            time.sleep(0.2)
        self.event(
            "faulty receiver: down (since the start)",
            f"first alert {'seen' if self.healthy.distinct() else 'not yet'}",
        )
        for mode, seconds in (
            (DOWN, s.receiver_down_s),
            (ERROR_500, s.receiver_500_s),
            (MALFORMED, s.receiver_malformed_s),
        ):
            self.faulty.set_mode(mode)
            self.event(f"faulty receiver: {mode} for {seconds:.0f} s")
            time.sleep(seconds)
        self.faulty.set_mode(OK)
        self.event("faulty receiver: recovered")

    # -- the end -----------------------------------------------------------------------------
    def _catch_up(self) -> None:
        """Wait until every group has committed what was there at the end, then take the end offsets."""
        from carnival.demo import processor_inputs

        inputs = {**processor_inputs()}
        inputs.pop("carnival-alert-router", None)
        inputs[ROUTER_GROUP] = ["alerts.v1"]
        deadline = time.monotonic() + self.scale.catch_up_s
        end = offsets(self.settings, sorted(TABLE_FOR_TOPIC))
        behind: dict[str, int] = {}
        while time.monotonic() < deadline:
            self._supervise()
            behind = {
                g: _behind(self.settings, g, self.result.lo, end, topics) for g, topics in inputs.items()
            }
            if not any(behind.values()):
                break
            time.sleep(2)
        self.result.caught_up = behind
        self.result.hi = end
        self.event(
            "catch-up", ", ".join(f"{g} {n} behind" for g, n in behind.items() if n) or "all caught up"
        )
        fired_deadline = time.monotonic() + 30
        while time.monotonic() < fired_deadline and self.faulty.distinct() != self.healthy.distinct():
            time.sleep(1)

    def _stop(self) -> None:
        self.done.set()
        self.watcher.stopping.set()
        if self.sim is not None and self.sim.poll() is None:
            self.sim.stop()
        if self.router is not None and self.router.poll() is None:
            self.router.terminate()
            try:
                self.router.wait(30)
            except subprocess.TimeoutExpired:
                self.router.kill()
        for name, w in self.workers.items():
            self.result.logs.setdefault(name, w.log_tail(3000))
            w.stop()
        for r in self.result.receivers:
            r.stop()


def _behind(
    settings: Settings,
    group: str,
    lo: dict[tuple[str, int], int],
    end: dict[tuple[str, int], int],
    topics: list[str],
) -> int:
    """Records of the run at ``topics`` that ``group`` has not committed yet (-1: could not tell)."""
    tps = [TopicPartition(t, p) for (t, p) in end if t in topics]
    consumer = make_consumer(settings, group, log_level=0)
    try:
        committed = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(tps, timeout=10)}
    except Exception:  # noqa: BLE001
        return -1
    finally:
        consumer.close()
    return sum(max(0, end[k] - max(committed.get(k, -1), lo.get(k, 0))) for k in end if k[0] in topics)
