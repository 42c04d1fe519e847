"""Avro in and out of faust agents, with the dead-letter topic for whatever cannot be decoded.

Topics carry raw bytes in faust; decoding happens here so a bad record becomes a ``deadletter.v1``
record with its source position instead of an exception that crashes the agent.
"""

from __future__ import annotations

from typing import Any

import faust
import structlog

from core.metrics import RECORDS_CONSUMED, RECORDS_REJECTED
from core.settings import Settings
from streams.bounds import oversized_error
from streams.deadletter import OVERSIZED, PROCESSING, deadletter_record
from streams.exceptions import SerializationError
from streams.serde import AvroSerde, serde_from_settings
from streams.topics import DEADLETTER_TOPIC

log = structlog.get_logger(__name__)


class AgentCodec:
    """Decode events of an agent's input topics; encode and send its outputs."""

    def __init__(self, app: faust.App, settings: Settings, processor: str) -> None:
        self.app = app
        self.processor = processor
        self.serde: AvroSerde = serde_from_settings(settings)
        self._topics: dict[str, faust.TopicT] = {}

    def topic(self, name: str) -> faust.TopicT:
        """A raw-bytes faust topic handle (created once per name)."""
        if name not in self._topics:
            self._topics[name] = self.app.topic(
                name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
            )
        return self._topics[name]

    async def decode(self, event: faust.EventT) -> dict[str, Any] | None:
        """The decoded record of ``event``, or None after dead-lettering it."""
        msg = event.message
        try:
            record = self.serde.decode(msg.topic, msg.value or b"")  # a tombstone is BAD_MAGIC
        except SerializationError as exc:
            await self.dead_letter(msg, exc.kind, str(exc))
            return None
        if (too_long := oversized_error(msg.topic, record)) is not None:
            await self.dead_letter(msg, OVERSIZED, too_long)
            return None
        RECORDS_CONSUMED.labels(topic=msg.topic).inc()
        return record

    async def dead_letter(self, msg: Any, kind: str, error: str) -> None:
        RECORDS_REJECTED.labels(topic=msg.topic, kind=kind).inc()
        log.warning(
            "record_dead_lettered",
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            kind=kind,
            error=error,
            processor=self.processor,
        )
        record = deadletter_record(
            msg.topic,
            kind,
            error,
            value=msg.value,
            key=msg.key,
            partition=msg.partition,
            offset=msg.offset,
            processor=self.processor,
        )
        await self.topic(DEADLETTER_TOPIC).send(
            key=msg.topic.encode(), value=self.serde.encode(DEADLETTER_TOPIC, record)
        )

    async def processing_failed(self, event: faust.EventT, exc: Exception) -> None:
        """A record that decoded but broke the processor's logic: dead-letter it, keep running."""
        log.exception("record_processing_failed", topic=event.message.topic, processor=self.processor)
        await self.dead_letter(event.message, PROCESSING, f"{type(exc).__name__}: {exc}")

    async def send(self, topic: str, key: str, record: dict[str, Any]) -> None:
        await self.topic(topic).send(key=key.encode(), value=self.serde.encode(topic, record))
