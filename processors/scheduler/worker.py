"""The scheduler worker: telemetry, requests and status -> pools -> ``Scheduler`` -> nodes, assignments,
lifecycle. Run with ``carnival worker scheduler`` (several processes form one consumer group).

Supply and demand meet in one place: everything is repartitioned by pool (region) into the internal
topic ``carnival-scheduler-bypool`` (key = pool, ``settings.topic_partitions`` partitions), read by ONE
agent that keeps an in-memory ``Scheduler`` per partition of that topic.

Agents (all concurrency 1):

* telemetry router   fleet.telemetry.v1 (key vin) -> bypool, key = region: NOT a faust agent but a
  confluent-kafka thread (``wiring_router.TelemetryRouter``, its own consumer group), consume -> produce
  -> flush -> commit. Reads the region without a full Avro decode when the writer schema allows it;
  undecodable records go to deadletter.v1.
* ``route_tasks``      tasks.requests.v1, tasks.status.v1, tasks.lifecycle.v1 (all keyed by task_id, so
  co-partitioned) with table ``routes`` (task_id -> pool, latest attempt, held statuses): see
  ``routing.TaskRouter``.
* ``schedule``         bypool -> ``Scheduler`` of the event's partition -> outputs
  (``scheduling.PoolScheduler``).
  Batches of events: decide (pure, in memory), produce every output, apply the batch's state changes to
  table ``state`` (journal first, see ``wiring_state``); the runtime's checkpoint
  (``processors.runtime.checkpoint``) sends their changelog records once the outputs are acknowledged and
  acks the events once Kafka has those too, so faust commits only what is durable. Outputs and changelog
  go through one confluent-kafka producer (``BatchProducer``).
* timer ``tick``       every ``tick_s``, a tick record (wall-clock ms) to each bypool partition this worker
  owns: leases, claim timeouts, deadlines and spills run in the owning agent, in stream order, and a
  replay after a crash sees the same ticks. A tick runs at event time (``wiring_state.TickClock``): the
  newest record's event time plus the wall time since that record arrived, never the wall clock itself,
  so a simulated or replayed past keeps its own clock.

Tables: ``state`` (changelog ``carnival-scheduler-state-changelog``) holds node and task dicts under
``<partition>/n/<vin>`` and ``<partition>/t/<task_id>``; written with an explicit changelog partition =
the bypool partition, so a partition's scheduler is restored from exactly its own changelog partition.
``routes`` (changelog ``carnival-scheduler-routes-changelog``) is written in ``route_tasks``' stream
context. Both use faust's in-memory store: a worker always restores from the changelog, which is
exactly what was durable when the input offsets were committed. (A RocksDB store can hold writes
whose changelog records a SIGKILL lost, so after a restart its state would be ahead of the changelog
that another worker restores from after a rebalance: two different pasts, and a task assigned twice.)

Partition assignment: faust revokes all partitions on a rebalance after waiting for every event taken
to be acked (the checkpoint timer goes on meanwhile). The revoke signal
drops every in-memory ``Scheduler``; the next event of a partition rebuilds it with
``Scheduler.from_parts`` from the table, which faust has recovered by then (streams resume only after
recovery completes). ``local_pools`` of a partition's scheduler are the configured pools that hash to
it, so any-region tasks hand off to other partitions through the bypool topic.
"""

from __future__ import annotations

import asyncio
import dataclasses

import faust
import structlog

import schemas
from core.settings import get_settings
from processors.runtime import drive
from processors.runtime import faust_glue as glue
from processors.runtime.app import create_app, declare_internal_topics
from processors.runtime.codec import AgentCodec
from processors.scheduler.routing import TASK_TOPICS, TaskRouter
from processors.scheduler.scheduling import PoolScheduler
from processors.scheduler.wiring_router import BatchProducer, TelemetryRouter
from processors.scheduler.wiring_runtime import (
    BYPOOL_TOPIC,
    MAP_ENTRIES,
    PROCESSOR,
    config_from_env,
    knobs_from_env,
    peek_ts_region,
)
from streams.serde import SINGLE_OBJECT_MAGIC, AvroSerde
from streams.topics import DEADLETTER_TOPIC, TELEMETRY_TOPIC

log = structlog.get_logger(__name__)

_CHANGELOG_CONFIG = {
    # Keep the changelogs near one record per key so restore time follows the state size.
    "segment.ms": str(10 * 60 * 1000),
    "min.cleanable.dirty.ratio": "0.2",
    "delete.retention.ms": str(24 * 3600 * 1000),
}


_fatal = drive.exit_on_failure(PROCESSOR)
settings = get_settings()
config = config_from_env()
knobs = knobs_from_env()
PARTITIONS = settings.topic_partitions

app = create_app(
    PROCESSOR,
    settings,
    # A SIGKILLed worker keeps its partitions until its session times out: 10 s, not faust's 60 s.
    broker_session_timeout=knobs.session_timeout_s,
    broker_heartbeat_interval=knobs.session_timeout_s / 4,
    # Every event is produced twice (pool topic, changelog): batch the producer's requests (one per
    # record costs a syscall and a broker round trip each) at the price of a few ms per hop.
    producer_linger=knobs.linger_s,
    producer_max_batch_size=256 * 1024,
    # Events are acked a checkpoint at a time: commits come from the 1 s timer, not every 500 acks
    # inline in faust's message drain loop.
    broker_commit_every=10_000_000,
)
codec = AgentCodec(app, settings, PROCESSOR)
serde = AvroSerde(codec.serde.registry, raw_timestamps=True)  # epoch-ms ints, as the scheduler wants

task_topics = app.topic(*TASK_TOPICS, key_type=bytes, value_type=bytes)
bypool_topic = app.topic(
    BYPOOL_TOPIC, partitions=PARTITIONS, internal=True,
    key_type=bytes, value_type=bytes,
)  # fmt: skip
# (A bare "memory://" is a falsy yarl URL, which faust would swap for the app's RocksDB default.)
state_table = app.Table(
    "state", default=None, key_type=bytes, value_type=bytes,
    partitions=PARTITIONS, store="memory://scheduler", extra_topic_configs=_CHANGELOG_CONFIG,
    help="<partition>/n/<vin>, <partition>/t/<task_id>, journal: the pool schedulers' state",
)  # fmt: skip
routes = app.Table(
    "routes", default=None, key_type=bytes, value_type=bytes,
    partitions=PARTITIONS, store="memory://scheduler", extra_topic_configs=_CHANGELOG_CONFIG,
    help="task_id -> pool, latest attempt, held status reports",
)  # fmt: skip

router = TaskRouter(
    routes, bypool_topic, codec, config, hold_max=knobs.hold_max,
    route_ttl_ms=int((knobs.route_ttl_s or config.tombstone_ttl_s + 3600) * 1000),
    held_ttl_ms=int(knobs.held_status_ttl_s * 1000),
)  # fmt: skip
pools = PoolScheduler(
    app, state_table, bypool_topic, codec, serde, config, knobs,
    lambda: BatchProducer(settings, linger_ms=knobs.linger_s * 1000),
    partitions=PARTITIONS, state_changelog=state_table.changelog_topic.get_topic_name(),
    checkpoint_s=knobs.checkpoint_s, max_unconfirmed=knobs.max_unconfirmed, on_failed=_fatal,
)  # fmt: skip

# Writer schemas of telemetry whose first fields are vin, ts, hw, region: peek the region.
_PEEKABLE = frozenset(
    SINGLE_OBJECT_MAGIC + sv.fingerprint_bytes
    for sv in schemas.history(TELEMETRY_TOPIC)
    if [f["name"] for f in sv.raw["fields"][:4]] == ["vin", "ts", "hw", "region"]
)


def _route_of(value: bytes) -> tuple[str, int]:
    """(pool, event ts) of a telemetry value, peeked without a full decode where the schema allows."""
    if value[:10] in _PEEKABLE:
        try:
            ts, region = peek_ts_region(value[10:])
            return region, ts
        except (IndexError, UnicodeDecodeError):
            pass  # the full decode below names the problem
    record = serde.decode(TELEMETRY_TOPIC, value)
    return str(record["region"] or ""), int(record["ts"])


telemetry_router = TelemetryRouter(
    settings, _route_of, serde.encode, max_future_skew_s=config.max_future_skew_s,
    session_timeout_s=knobs.session_timeout_s,
    batch_max=knobs.route_batch_max, pack_max=knobs.route_pack_max, linger_ms=knobs.route_linger_ms,
    processor=PROCESSOR, decode=serde.decode, partitions=PARTITIONS,
)  # fmt: skip


async def _declare_topics() -> None:
    # Before the consumer joins: on a fresh cluster faust's first assignment would miss a pool topic it
    # creates while subscribing (nothing triggers another rebalance for minutes), and its metadata
    # snapshot could hold a changelog with 0 partitions (``declare_internal_topics``).
    await asyncio.to_thread(declare_internal_topics, settings, app, (BYPOOL_TOPIC,))


async def _revoked() -> None:
    await pools.on_revoked()
    router.revoked()


async def _assigned(assigned: set[glue.TP]) -> None:
    mine = sorted(tp.partition for tp in assigned if tp.topic == BYPOOL_TOPIC)
    log.info("scheduler_partitions_assigned", partitions=mine, topic=BYPOOL_TOPIC)


glue.before_first_start(app, _declare_topics)
glue.on_revoked(app, _revoked)
glue.on_assigned(app, _assigned)


@app.task
async def run_telemetry_router() -> None:
    """The telemetry route runs in a thread (``wiring_router``); stop the worker if it dies."""
    telemetry_router.start()
    while not app.should_stop:
        await asyncio.sleep(0.5)
        if not telemetry_router.is_alive() and not telemetry_router.stopping.is_set():
            log.error("scheduler_router_died", error=repr(telemetry_router.failed))
            await app.crash(RuntimeError(f"telemetry router died: {telemetry_router.failed!r}"))
            return


async def _stop_router() -> None:
    if telemetry_router.is_alive():
        await asyncio.to_thread(telemetry_router.stop)


glue.before_shutdown(app, _stop_router)
drive.checkpoint_while_stopping(app, pools, _fatal)


@app.agent(task_topics, concurrency=1)
async def route_tasks(stream: faust.StreamT) -> None:
    async for event in stream.events():
        await router.handle(event)


@app.agent(bypool_topic, concurrency=1)
async def schedule(stream: faust.StreamT) -> None:
    await drive.run_batches(stream, pools, knobs.batch_max, knobs.batch_within_s, _fatal)


@app.timer(interval=knobs.checkpoint_s / 2)
async def checkpoint() -> None:
    await drive.checkpoint_if_due(pools, _fatal)


@app.timer(interval=knobs.tick_s)
async def tick() -> None:
    await pools.tick()
    for name, size in router.sizes().items():
        MAP_ENTRIES.labels(map=name, partition="all").set(size)


log.info("scheduler_worker_configured", partitions=PARTITIONS, knobs=dataclasses.asdict(knobs),
         ranking=config.ranking, pools=list(config.pools), lease_s=config.lease_s,
         claim_timeout_s=config.claim_timeout_s, deadletter_topic=DEADLETTER_TOPIC)  # fmt: skip
