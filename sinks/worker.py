"""``python -m sinks.worker``: run the ClickHouse sink until SIGTERM/SIGINT (``carnival worker sink``)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from core.logs import configure_logging
from core.metrics import serve_metrics
from core.settings import Settings
from sinks.config import SINK_TABLES, SinkConfig
from sinks.kafka_sink import run_sink


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sinks.worker", description=__doc__.splitlines()[0])
    parser.add_argument(
        "topics", nargs="*", help=f"topics to land (default: all of {', '.join(SINK_TABLES)})"
    )
    parser.add_argument("--group", help="consumer group id [carnival-sink]")
    parser.add_argument("--instance-id", help="static group member id, stable across restarts of this worker")
    args = parser.parse_args(argv)

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    serve_metrics(settings.metrics_port)
    overrides: dict[str, object] = {}
    if args.group:
        overrides["group_id"] = args.group
    if args.instance_id:
        overrides["instance_id"] = args.instance_id
    config = SinkConfig.from_settings(settings, **overrides)

    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    run_sink(settings, args.topics or None, stop_event=stop, config=config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
