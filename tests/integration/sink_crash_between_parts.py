"""A real sink process that SIGKILLs itself between two inserts of one batch, once about half of the
batch's inserts landed: ``python sink_crash_between_parts.py GROUP TOPIC`` (settings from the
environment).

For ``tests/integration/test_sink_partition_resume.py``: a batch spanning a month boundary is inserted
as one insert per run of one month, and the crash falls between two of them."""

from __future__ import annotations

import os
import signal
import sys

from core.logs import configure_logging
from core.settings import Settings
from sinks.batches import TopicBatch
from sinks.config import SinkConfig
from sinks.kafka_sink import KafkaSink


def main(group: str, topic: str) -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    sink = KafkaSink(settings, SinkConfig.from_settings(settings, group_id=group), [topic])

    landed: list[TopicBatch] = []

    def crash(piece: TopicBatch) -> None:
        landed.append(piece)
        pieces = sink.plans[topic][0].pieces
        left = len(pieces) if pieces else 0  # inserts of this batch still to come
        if left and len(landed) >= left:
            rows = sum(p.rows for p in landed)
            print(f"{len(landed)} inserts ({rows} rows) landed, {left} to go: SIGKILL", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    sink.inserter.on_inserted = crash
    sink.run()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
