"""The power failover worker: ``power.events.v1`` -> site detectors -> ``power.incidents.v1`` + ``alerts.v1``
+ ``sites.power_state.v1``.

Run with ``carnival worker power`` (several processes form one consumer group, ``carnival-power``).
Declarations and one loop; what happens per batch, per tick and per checkpoint is
``processors.power.processor.PowerProcessor``, made durable by the runtime's checkpoint protocol
(``processors.runtime.checkpoint``) under its error policy (``processors.runtime.policy``).

* input: ``power.events.v1`` on plain confluent-kafka (``processors.runtime.kafka_io.InputConsumer``):
  each batch is what is waiting when the loop asks (one event at low rates, up to ``batch_max`` under
  load; no batching window), handled at once. Offsets are committed by the checkpoint only.
* outputs: incidents, alerts, site power states (keyed by site_id) and dead letters are produced as
  soon as a rule fires (``FutureProducer``, no linger); the checkpoint waits for their acks before it
  writes any state, so a power state has the delivery guarantee of an incident.
* state: site_id -> detector state (orjson bytes) in ``carnival-power-sites-changelog`` (compacted,
  partition = the site's input partition, co-partitioned with ``power.events.v1``: both keyed by
  site_id, murmur2), held in memory (``ChangelogStore``) and restored from the changelog whenever
  partitions are assigned (a restart, a rebalance).
* timer ``checkpoint`` (every ``checkpoint_s / 2``): checkpoints when no events come (batches start one
  when it is due); timer ``tick`` (every ``tick_s``): ``Detector.on_tick`` for every site of this
  worker's partitions, so held events are released, failed-transfer/start/stability timers fire and
  silent sites raise SITE_SILENT without new events.

A failure Kafka gives past the producer's retries (outputs or state not delivered), or partitions lost
to an expired session, exits the process (code 70) for its supervisor to restart it: the uncommitted
events are replayed from the committed offset into state restored from the changelog.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal

import structlog

from core.settings import Settings
from processors.groups import POWER
from processors.power.processor import CHANGELOG_TOPIC, PowerProcessor, wall_us
from processors.power.runtime import DetectorCache, power_config, power_knobs
from processors.runtime.kafka_io import ChangelogStore, FutureProducer, InputConsumer, declare_changelog
from processors.runtime.loop import exit_on_failure, run_every
from streams.serde import AvroSerde, serde_from_settings
from streams.topics import POWER_EVENTS_TOPIC

log = structlog.get_logger(__name__)

PROCESSOR = "power"


class KafkaPowerIO:
    """``processors.power.processor.PowerIO`` on the worker's consumer and producer."""

    def __init__(self, consumer: InputConsumer, producer: FutureProducer) -> None:
        self.consumer, self.producer = consumer, producer
        self.send = producer.send
        self.flush = producer.flush
        self.commit = consumer.commit

    def highwater(self, partition: int) -> int | None:
        return self.consumer.highwater(POWER_EVENTS_TOPIC, partition)

    def position(self, partition: int) -> int | None:
        return self.consumer.position(POWER_EVENTS_TOPIC, partition)

    def assigned(self) -> frozenset[int]:
        return frozenset(self.consumer.assigned)

    def settling(self) -> bool:
        return self.consumer.rebalancing


def run(settings: Settings) -> None:
    """``carnival worker power``: until SIGTERM/SIGINT."""
    asyncio.run(_main(settings))


async def _main(settings: Settings) -> None:
    knobs, config = power_knobs(settings), power_config(settings)
    fatal = exit_on_failure(PROCESSOR)
    loop = asyncio.get_running_loop()
    await asyncio.to_thread(
        declare_changelog, settings, CHANGELOG_TOPIC, settings.topic_partitions, "power site detector states"
    )
    store = ChangelogStore(settings, CHANGELOG_TOPIC, POWER.group)
    # Timestamps as epoch µs ints, not datetimes: what the detector keeps anyway, and a cheaper decode.
    serde = AvroSerde(serde_from_settings(settings).registry, raw_timestamps=True)
    producer = FutureProducer(settings, loop, linger_ms=knobs.linger_ms)
    power: PowerProcessor | None = None

    async def assigned(partitions: list[int]) -> None:
        restored = await asyncio.to_thread(store.restore, partitions)
        log.info("power_state_restored", partitions=partitions, sites=restored)
        assert power is not None
        await power.on_assigned(partitions)

    async def revoked(partitions: list[int], lost: bool) -> None:
        assert power is not None
        await power.on_revoked(partitions, lost)

    consumer = InputConsumer(
        settings, POWER.group, [POWER_EVENTS_TOPIC], loop, assigned, revoked,
        session_timeout_s=knobs.session_timeout_s, fetch_wait_ms=knobs.fetch_wait_ms,
    )  # fmt: skip
    power = PowerProcessor(
        KafkaPowerIO(consumer, producer), store, serde,
        DetectorCache(config, store.get, wall_us, knobs.max_sites),
        checkpoint_s=knobs.checkpoint_s, checkpoint_events=knobs.checkpoint_events,
        max_unconfirmed=knobs.max_unconfirmed, max_future_skew_s=knobs.max_future_skew_s, on_failed=fatal,
    )  # fmt: skip
    log.info("power_worker_configured", config=config.to_dict(), partitions=settings.topic_partitions,
             knobs=dataclasses.asdict(knobs))  # fmt: skip

    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    async def checkpoint() -> None:
        power.checkpoint_if_due()

    timers = [
        asyncio.ensure_future(run_every(knobs.checkpoint_s / 2, checkpoint, fatal, stopping)),
        asyncio.ensure_future(run_every(knobs.tick_s, power.tick, fatal, stopping)),
    ]
    try:
        while not stopping.is_set():
            events = await consumer.batch(knobs.batch_max, 0.1)
            if events:
                try:
                    await power.handle(events)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the policy absorbs record failures: this is Kafka or a bug
                    fatal(exc)
    finally:
        for timer in timers:
            timer.cancel()
        await _stop(power, consumer, producer)


async def _stop(power: PowerProcessor, consumer: InputConsumer, producer: FutureProducer) -> None:
    """Checkpoint and commit what was applied, leave the group, flush the producer."""
    try:
        await power.settle()
    except Exception as exc:  # noqa: BLE001 - not committed: replayed by the next owner
        log.warning("power_stop_checkpoint_failed", error=f"{type(exc).__name__}: {exc}")
    await consumer.close()
    await asyncio.to_thread(producer.close)
    log.info("power_worker_stopped")
