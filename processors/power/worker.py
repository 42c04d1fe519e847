"""The power failover worker: ``power.events.v1`` -> site detectors -> ``power.incidents.v1`` + ``alerts.v1``.

Run with ``carnival worker power``. Declarations only; what happens per batch, per tick and per checkpoint
is ``processors.power.processor.PowerProcessor``, made durable by the runtime's checkpoint protocol
(``processors.runtime.checkpoint``) under its error policy (``processors.runtime.policy``).

* table ``sites``: site_id -> detector state (orjson bytes), RocksDB, changelog
  ``carnival-power-sites-changelog``, co-partitioned with ``power.events.v1`` (both keyed by site_id,
  murmur2, ``settings.topic_partitions`` partitions).
* agent ``detect`` (concurrency 1): batches of events (what arrived within ``BATCH_WITHIN_S``, at most
  ``BATCH_MAX``), never acked by faust: the checkpoint acks them once their outputs and state are in Kafka.
* timer ``checkpoint``: checkpoints when no events come (the agent checkpoints while they do).
* timer ``tick`` (every ``TICK_S``): ``Detector.on_tick`` for every site of this worker's partitions,
  so held events are released, failed-transfer/start/stability timers fire and silent sites raise
  SITE_SILENT without new events.

A failure Kafka gives past the producer's retries (outputs or state not delivered) exits the process
(code 70) for its supervisor to restart it: the unacked events are replayed from the committed offset.
"""

from __future__ import annotations

import asyncio
import os
import sys

import faust
import structlog

from core.settings import get_settings
from processors.app import create_app, declare_internal_topics
from processors.codec import AgentCodec
from processors.power.processor import PowerProcessor, wall_us
from processors.power.runtime import EVENTS_TOPIC, DetectorCache, config_from_env
from processors.runtime import faust_glue as glue

log = structlog.get_logger(__name__)

PROCESSOR = "power"
TABLE = "sites"
TICK_S = 1.0
BATCH_MAX = 2000
BATCH_WITHIN_S = 0.005
CHECKPOINT_S = 0.5
CHECKPOINT_EVENTS = 20_000
MAX_UNCONFIRMED = 4
"""A batch is what arrived within ``BATCH_WITHIN_S`` (at low rates: one event, <= 5 ms of extra latency),
or ``BATCH_MAX`` events at once under load. Detection latency depends on batches only; the state is
written per checkpoint (``CHECKPOINT_S``): at most one changelog record per site per checkpoint,
however many events it had, and the offsets of its events are acked when those records are in Kafka
(faust commits every ``broker_commit_interval`` = 1 s anyway)."""
# A SIGKILLed worker's partitions move on after this long (faust's default is 60 s; a failover detector
# that is down for a minute is itself an incident).
SESSION_TIMEOUT_S = 10.0
# A checkpoint writes up to one state (~1-2 KB) per site at once; aiokafka sends one batch per
# partition per request and makes the sender (and faust's producer buffer, and with it the consumer)
# wait when a partition's batch is full: 256 KB batches instead of 16 KB.
PRODUCER_MAX_BATCH_SIZE = 262_144
# Events are acked a checkpoint at a time, thousands at once under load: faust's count-triggered
# commit (``broker_commit_every``, 500 acks) would then run inline in its message drain loop at every
# checkpoint and hold up the delivery of events for a producer flush and a commit round trip. Commits
# come from the 1 s ``broker_commit_interval`` timer instead, which runs beside it.
COMMIT_EVERY = 10_000_000


def _fatal(exc: BaseException) -> None:
    """Kafka refused outputs or state past the producer's own retries, or the batch loop itself broke:
    the pending events must not be acked and nothing after them processed. Exit like a SIGKILL; the next
    start replays from the committed offset, which is the case the design already covers."""
    log.critical("power_batch_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(70)


settings = get_settings()
config = config_from_env()
app = create_app(
    PROCESSOR,
    settings,
    broker_session_timeout=SESSION_TIMEOUT_S,
    producer_max_batch_size=PRODUCER_MAX_BATCH_SIZE,
    broker_commit_every=COMMIT_EVERY,
)
codec = AgentCodec(app, settings, PROCESSOR)
events_topic = codec.topic(EVENTS_TOPIC)
sites = app.Table(
    TABLE,
    default=None,
    key_type=bytes,
    value_type=bytes,
    partitions=settings.topic_partitions,
    help="site_id -> failover detector state (orjson)",
)
power = PowerProcessor(
    app, sites, codec, DetectorCache(config, sites.get, wall_us),
    checkpoint_s=CHECKPOINT_S, checkpoint_events=CHECKPOINT_EVENTS, max_unconfirmed=MAX_UNCONFIRMED,
    on_failed=_fatal,
)  # fmt: skip


async def _declare_topics() -> None:
    # The changelog exists with its partitions before the consumer subscribes (see the function).
    await asyncio.to_thread(declare_internal_topics, settings, app)


glue.before_first_start(app, _declare_topics)
glue.on_revoked(app, power.on_revoked)


@app.agent(events_topic, concurrency=1)
async def detect(stream: faust.StreamT) -> None:
    power.inputs.stream = stream
    async for events in glue.noack_batches(stream, BATCH_MAX, BATCH_WITHIN_S):
        try:
            await power.handle(events)
        except asyncio.CancelledError:
            raise  # stopping: pending events are not acked, the next start (or owner) replays them
        except Exception as exc:
            _fatal(exc)


@app.timer(interval=CHECKPOINT_S / 2)
async def checkpoint() -> None:
    """Checkpoints when no events come. Also while rebalancing: faust waits for every event taken to be
    acked before it gives partitions away."""
    if power.checkpointer.due():
        try:
            await power.checkpointer.checkpoint()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _fatal(exc)


@app.timer(interval=TICK_S)
async def tick() -> None:
    await power.tick()


log.info("power_worker_configured", config=config.to_dict(), partitions=settings.topic_partitions,
         batch_max=BATCH_MAX)  # fmt: skip
