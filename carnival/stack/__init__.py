"""Start, stop and inspect the local Kafka broker and the embedded ClickHouse server."""
