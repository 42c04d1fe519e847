"""Prometheus metrics, named ``carnival_<system>_<verb>_total`` with a topic label.

One registry (prometheus_client's default) per process; ``serve_metrics`` exposes it over HTTP when
``CARNIVAL_METRICS_PORT`` is set.
"""

from __future__ import annotations

import structlog
from prometheus_client import Counter, Histogram, start_http_server

log = structlog.get_logger(__name__)

KAFKA_PRODUCED = Counter("carnival_kafka_produced_total", "Records handed to the Kafka producer", ["topic"])
KAFKA_DELIVERED = Counter("carnival_kafka_delivered_total", "Records acknowledged by Kafka", ["topic"])
KAFKA_DELIVERY_FAILED = Counter(
    "carnival_kafka_delivery_failed_total", "Records Kafka did not acknowledge", ["topic"]
)
RECORDS_REJECTED = Counter(
    "carnival_records_rejected_total", "Input records sent to the dead-letter topic", ["topic", "kind"]
)
RECORDS_CONSUMED = Counter("carnival_records_consumed_total", "Records read and decoded", ["topic"])
PROCESSING_SECONDS = Histogram(
    "carnival_processing_seconds", "Time spent processing one batch", ["processor"]
)

_serving: int | None = None


def serve_metrics(port: int) -> None:
    """Start the /metrics endpoint once per process; port 0 means metrics are not served."""
    global _serving
    if not port or _serving == port:
        return
    start_http_server(port)
    _serving = port
    log.info("metrics_serving", port=port)
