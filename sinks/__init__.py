"""Where records land for analysts: ClickHouse.

Public: ``sinks.clickhouse`` (clients, reachability), ``sinks.migrate`` (versioned DDL),
``sinks.query`` (run SQL and print it as table, JSON lines or CSV).
"""
