"""Where generated records go: Kafka (Avro through the project's serde and producer), JSON lines, memory.

Every sink has ``write(topic, key, record)``, ``close()`` and per-topic ``counts``. Records carry
timestamps as integers in the field's unit (millis; micros for power.events.v1).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import orjson

from streams.topics import TELEMETRY_TOPIC

TELEMETRY = TELEMETRY_TOPIC
CHARGE_STATES = frozenset(
    {"DISCONNECTED", "NO_POWER", "STARTING", "CHARGING", "COMPLETE", "STOPPED", "UNKNOWN"}
)


class Sink:
    def __init__(self, topics: Iterable[str] | None = None) -> None:
        self.counts: Counter[str] = Counter()
        self.topics = frozenset(topics) if topics else None

    def write(self, topic: str, key: str, record: dict[str, Any]) -> None:
        self.counts[topic] += 1

    def flush(self) -> int:
        return 0

    def close(self) -> None:
        pass

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class MemorySink(Sink):
    def __init__(self, topics: Iterable[str] | None = None) -> None:
        super().__init__(topics)
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def write(self, topic: str, key: str, record: dict[str, Any]) -> None:
        if self.topics is None or topic in self.topics:
            self.counts[topic] += 1
            self.records.append((topic, key, dict(record)))


class JsonlSink(Sink):
    """One ``<topic>.jsonl`` per topic in ``directory``, ready for ``carnival produce TOPIC FILE``.

    Raw values are kept as generated, including charge states outside the enum, so ``carnival produce``
    rejects them to the dead-letter topic like it would real bad input.
    """

    def __init__(self, directory: Path, topics: Iterable[str] | None = None) -> None:
        super().__init__(topics)
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._files: dict[str, IO[bytes]] = {}

    def write(self, topic: str, key: str, record: dict[str, Any]) -> None:
        if self.topics is not None and topic not in self.topics:
            return
        fh = self._files.get(topic)
        if fh is None:
            fh = self._files[topic] = open(self.directory / f"{topic}.jsonl", "wb")  # noqa: SIM115
        fh.write(orjson.dumps(record) + b"\n")
        self.counts[topic] += 1

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()


class KafkaSink(Sink):
    """Avro through ``streams.serde`` and the project ``Producer``, keyed by the topic's key field.

    A telemetry charge state outside the documented enum cannot be written as Avro: it is sent as
    UNKNOWN ("not reported") and counted in ``mapped_unknown``.
    """

    def __init__(self, producer: Any, serde: Any, topics: Iterable[str] | None = None) -> None:
        from simulator.avro_fast import FastEncoder

        super().__init__(topics)
        self.producer = producer
        self.serde = FastEncoder(serde)  # byte-identical to serde.encode, 2-3x faster
        self.mapped_unknown = 0

    def write(self, topic: str, key: str, record: dict[str, Any]) -> None:
        if self.topics is not None and topic not in self.topics:
            return
        if topic == TELEMETRY and record["charge_state"] not in CHARGE_STATES:
            record = {**record, "charge_state": "UNKNOWN"}
            self.mapped_unknown += 1
        self.producer.produce(topic, self.serde.encode(topic, record), key)
        self.counts[topic] += 1

    def flush(self) -> int:
        return int(self.producer.flush(60.0))

    def close(self) -> None:
        self.producer.flush(60.0)
