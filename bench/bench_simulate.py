"""Benchmark ``carnival simulate --rate``: achieved events/s at a few targets, against the ceilings.

    python bench/bench_simulate.py                      # uses CARNIVAL_KAFKA_BOOTSTRAP (a running stack)
    python bench/bench_simulate.py --own-broker         # starts a private Kafka broker, stops it at the end
    python bench/bench_simulate.py --targets 10000,50000,80000 --seconds 10 --cars 2000

For each target it runs the rate mode in-process (world -> fast Avro encoder -> project Producer) for
``--seconds`` and prints the achieved rate and achieved/requested. Then two ceilings on the same broker:
the project Producer and raw confluent-kafka, both fed pre-encoded bytes as fast as they go.
"""

from __future__ import annotations

import argparse
import os
import time

from harness import bench_kafka

from core.settings import Settings
from simulator.config import DAY_MS, SimConfig
from simulator.rate import run_rate
from simulator.sinks import KafkaSink, MemorySink
from simulator.world import World
from streams.kafka import Producer, producer_config
from streams.serde import serde_from_settings

OWN_PORT = 43092


def world(cars: int, sink: object, seed: int = 1) -> World:
    config = SimConfig(
        seed=seed, cars=cars, sites=4, tasks_per_hour=cars * 1.5, self_assign=True, duration_ms=3650 * DAY_MS
    )
    return World(config, sink)  # type: ignore[arg-type]


def bench_rate(settings: Settings, target: int, seconds: float, cars: int) -> dict[str, float]:
    producer = Producer(settings)
    sink = KafkaSink(producer, serde_from_settings(settings))
    summary = run_rate(world(cars, sink, seed=target), float(target), seconds)
    producer.close()
    return {
        "achieved": summary.extra["achieved_rate"],
        "ratio": summary.extra["ratio"],
        "delivered": summary.extra["delivered_rate"],
        "failed": producer.stats.failed,
    }


def encoded_pool(settings: Settings, n: int, cars: int) -> list[tuple[str, bytes, str]]:
    mem = MemorySink()
    w = world(cars, mem)
    while len(mem.records) < n:
        w.run_until(w.config.end_ms, 50_000)
    from simulator.avro_fast import FastEncoder

    enc = FastEncoder(serde_from_settings(settings))
    return [
        (
            t,
            enc.encode(
                t, r if r.get("charge_state", "UNKNOWN") in _STATES else {**r, "charge_state": "UNKNOWN"}
            ),
            k,
        )
        for t, k, r in mem.records[:n]
    ]


_STATES = {"DISCONNECTED", "NO_POWER", "STARTING", "CHARGING", "COMPLETE", "STOPPED", "UNKNOWN"}


def ceiling(settings: Settings, pool: list[tuple[str, bytes, str]], seconds: float, raw: bool) -> float:
    if raw:
        from confluent_kafka import Producer as RawProducer

        p = RawProducer(producer_config(settings))

        def send(topic: str, value: bytes, key: str) -> None:
            while True:
                try:
                    p.produce(topic, value, key)
                    return
                except BufferError:
                    p.poll(0.05)
    else:
        p = Producer(settings)  # type: ignore[assignment]
        send = p.produce  # type: ignore[assignment]
    sent = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        for topic, value, key in pool[:10_000]:
            send(topic, value, key)
        sent += 10_000
        pool = pool[10_000:] + pool[:10_000]
        p.poll(0)
    p.flush(120)
    return sent / (time.monotonic() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default="10000,50000,80000")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--cars", type=int, default=2000)
    ap.add_argument("--own-broker", action="store_true", help=f"start a private broker on port {OWN_PORT}")
    args = ap.parse_args()

    kafka = bench_kafka(OWN_PORT if args.own_broker else None, "carnival-bench-")
    settings = kafka.settings
    try:
        cores = os.cpu_count()
        print(f"broker {settings.kafka_bootstrap}, {cores} cores, {args.cars} cars, {args.seconds:.0f}s each")
        print(f"{'requested/s':>12} {'achieved/s':>12} {'ratio':>7} {'delivered/s':>12}")
        for target in (int(t) for t in args.targets.split(",")):
            r = bench_rate(settings, target, args.seconds, args.cars)
            print(
                f"{target:>12,} {r['achieved']:>12,.0f} {r['ratio']:>7.3f} {r['delivered']:>12,.0f}"
                + (f"  ({r['failed']:.0f} failed)" if r["failed"] else "")
            )
        pool = encoded_pool(settings, 200_000, args.cars)
        secs = max(3.0, args.seconds / 2)
        project = ceiling(settings, pool, secs, raw=False)
        print(f"ceiling, pre-encoded bytes, project Producer:    {project:>10,.0f}/s")
        raw = ceiling(settings, pool, secs, raw=True)
        print(f"ceiling, pre-encoded bytes, raw confluent-kafka: {raw:>10,.0f}/s")
    finally:
        kafka.close()


if __name__ == "__main__":
    main()
