"""The power failover worker: ``power.events.v1`` -> site detectors -> ``power.incidents.v1`` + ``alerts.v1``.

Run with ``carnival worker power``. Declarations only; what happens per batch, per tick and per checkpoint
is ``processors.power.processor.PowerProcessor``, made durable by the runtime's checkpoint protocol
(``processors.runtime.checkpoint``) under its error policy (``processors.runtime.policy``).

* table ``sites``: site_id -> detector state (orjson bytes), RocksDB, changelog
  ``carnival-power-sites-changelog``, co-partitioned with ``power.events.v1`` (both keyed by site_id,
  murmur2, ``settings.topic_partitions`` partitions).
* agent ``detect`` (concurrency 1): batches of events (what arrived within ``batch_within_s``, at most
  ``batch_max``), never acked by faust: the checkpoint acks them once their outputs and state are in Kafka.
* timer ``checkpoint``: checkpoints when no events come (the agent checkpoints while they do).
* timer ``tick`` (every ``tick_s``): ``Detector.on_tick`` for every site of this worker's partitions,
  so held events are released, failed-transfer/start/stability timers fire and silent sites raise
  SITE_SILENT without new events.

A failure Kafka gives past the producer's retries (outputs or state not delivered) exits the process
(code 70) for its supervisor to restart it: the unacked events are replayed from the committed offset.
"""

from __future__ import annotations

import asyncio
import dataclasses

import faust
import structlog

from core.settings import get_settings
from processors.power.processor import PowerProcessor, wall_us
from processors.power.runtime import DetectorCache, config_from_env, knobs_from_env
from processors.runtime import drive
from processors.runtime import faust_glue as glue
from processors.runtime.app import create_app, declare_internal_topics
from processors.runtime.codec import AgentCodec
from streams.topics import POWER_EVENTS_TOPIC

log = structlog.get_logger(__name__)

PROCESSOR = "power"
TABLE = "sites"
knobs = knobs_from_env()
"""Batches, checkpoints and faust client settings: ``PowerKnobs`` (processors/power/config.py) documents
each, ``CARNIVAL_POWER_<KNOB>`` sets it. A batch is what arrived within ``batch_within_s``, or
``batch_max`` events under load; detection latency depends on batches only, the state is written per
checkpoint (``checkpoint_s``)."""

_fatal = drive.exit_on_failure(PROCESSOR)
settings = get_settings()
config = config_from_env()
app = create_app(
    PROCESSOR,
    settings,
    broker_session_timeout=knobs.session_timeout_s,
    producer_max_batch_size=knobs.producer_max_batch_size,
    broker_commit_every=knobs.commit_every,
)
codec = AgentCodec(app, settings, PROCESSOR)
events_topic = codec.topic(POWER_EVENTS_TOPIC)
sites = app.Table(
    TABLE,
    default=None,
    key_type=bytes,
    value_type=bytes,
    partitions=settings.topic_partitions,
    help="site_id -> failover detector state (orjson)",
)
power = PowerProcessor(
    app, sites, codec, DetectorCache(config, sites.get, wall_us, knobs.max_sites),
    checkpoint_s=knobs.checkpoint_s, checkpoint_events=knobs.checkpoint_events,
    max_unconfirmed=knobs.max_unconfirmed, max_future_skew_s=knobs.max_future_skew_s,
    on_failed=_fatal,
)  # fmt: skip


async def _declare_topics() -> None:
    # The changelog exists with its partitions before the consumer subscribes (see the function).
    await asyncio.to_thread(declare_internal_topics, settings, app)


glue.before_first_start(app, _declare_topics)
glue.on_revoked(app, power.on_revoked)
drive.checkpoint_while_stopping(app, power, _fatal)


@app.agent(events_topic, concurrency=1)
async def detect(stream: faust.StreamT) -> None:
    await drive.run_batches(stream, power, knobs.batch_max, knobs.batch_within_s, _fatal)


@app.timer(interval=knobs.checkpoint_s / 2)
async def checkpoint() -> None:
    await drive.checkpoint_if_due(power, _fatal)


@app.timer(interval=knobs.tick_s)
async def tick() -> None:
    await power.tick()


log.info("power_worker_configured", config=config.to_dict(), partitions=settings.topic_partitions,
         knobs=dataclasses.asdict(knobs))  # fmt: skip
