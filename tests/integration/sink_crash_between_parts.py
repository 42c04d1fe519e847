"""A real sink process that SIGKILLs itself right after the first insert of a batch landed, before the
next one: ``python sink_crash_between_parts.py GROUP TOPIC`` (settings from the environment).

For ``tests/integration/test_sink_partition_resume.py``: a batch spanning a month boundary is inserted
as one insert per month, and the crash falls between them."""

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

    def crash(piece: TopicBatch) -> None:
        print(f"landed {piece.rows} rows ({piece.token()}); SIGKILL before the next insert", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    sink.inserter.on_inserted = crash
    sink.run()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
