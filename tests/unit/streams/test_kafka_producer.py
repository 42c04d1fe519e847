"""streams.kafka.Producer: the delivery callback is the client's default (set once in its config, not
passed with every record); failures are still counted and reported."""

from __future__ import annotations

import pytest

from core.settings import Settings
from streams.kafka import Producer


def test_failed_deliveries_are_counted_with_the_callback_in_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARNIVAL_KAFKA_BOOTSTRAP", "localhost:1")  # nothing listens: every record times out
    producer = Producer(Settings(), **{"message.timeout.ms": 200, "enable.idempotence": False})
    for i in range(3):
        producer.produce("fleet.telemetry.v1", b"x", f"k{i}")
    assert producer.flush(10) == 0
    assert (producer.stats.produced, producer.stats.failed, producer.stats.delivered) == (3, 3, 0)
    assert producer.stats.last_error
