"""``carnival produce`` and ``carnival consume``: terminal front ends of streams.produce/streams.consume.

Both first wait for the cluster (``kafka_connect_timeout_s``): an unreachable broker is one error line
naming the bootstrap servers and the settings to check, and exit code 1, not a retry loop on the terminal.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
from typing import BinaryIO

import click

from core.settings import Settings
from streams.topics import DEADLETTER_TOPIC, DERIVED_TOPICS, INPUT_TOPICS, TOPICS


def _check_topic(topic: str) -> bool:
    if topic in TOPICS:
        return True
    click.secho(f"error: unknown topic {topic!r}; known topics: {', '.join(TOPICS)}", fg="red", err=True)
    return False


def _check_writable(topic: str, allow_derived: bool) -> bool:
    if topic not in DERIVED_TOPICS or allow_derived:
        return True
    click.secho(
        f"error: {topic} is a derived topic: Carnival's processors publish it, and a hand-made record there "
        f"could forge what they say. Producers publish {', '.join(INPUT_TOPICS)}; "
        "pass --allow-derived to write it anyway.",
        fg="red",
        err=True,
    )
    return False


def _broker_answers(settings: Settings) -> bool:
    from streams.exceptions import BrokerUnreachable
    from streams.kafka import await_broker

    try:
        await_broker(settings)
    except BrokerUnreachable as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        return False
    return True


def _open_input(path: str) -> BinaryIO:
    if path == "-":
        return sys.stdin.buffer
    return open(path, "rb")  # noqa: SIM115 - closed by the caller's context manager


def run_produce(settings: Settings, topic: str, path: str, quiet: bool, allow_derived: bool = False) -> int:
    """Returns the exit code: 0 all good, 1 if any line was rejected or not delivered or Kafka does not
    answer, 2 for a usage error (unknown or derived topic, no such file), 130 on Ctrl-C."""
    from streams.kafka import Producer
    from streams.produce import ProduceSummary, Rejection, produce_json_lines
    from streams.serde import serde_from_settings

    if not _check_topic(topic) or not _check_writable(topic, allow_derived):
        return 2
    if path != "-" and not Path(path).is_file():
        click.secho(f"error: no such file: {path}", fg="red", err=True)
        return 2
    if not _broker_answers(settings):
        return 1

    def report(rejection: Rejection) -> None:
        if not quiet:
            click.echo(f"{path}:{rejection}", err=True)

    serde = serde_from_settings(settings)
    producer = Producer(settings)
    summary: ProduceSummary | None = None
    interrupted = False
    progress = _progress(path)
    try:
        with _open_input(path) as lines, progress as bar:
            on_progress = None
            if bar is not None:
                task = bar.add_task(f"producing {topic}", total=None)

                def on_progress(n: int) -> None:
                    bar.update(task, completed=n)

            summary = produce_json_lines(
                topic,
                lines,
                producer,
                serde,
                on_reject=report,
                on_progress=on_progress,
                max_message_bytes=producer.max_message_bytes,
            )
    except KeyboardInterrupt:
        interrupted = True
        click.echo("interrupted: flushing what was produced so far", err=True)
    finally:
        pending = producer.flush(60)
    stats = producer.stats
    if summary is not None:
        click.echo(
            f"{topic}: {summary.read} records read, {summary.produced} produced, "
            f"{summary.rejected} rejected (sent to {DEADLETTER_TOPIC}); "
            f"{stats.delivered} delivered, {stats.failed} failed, {pending} pending",
            err=True,
        )
    if interrupted:
        return 130
    if stats.failed or pending:
        click.secho(
            f"error: {stats.failed + pending} records were not delivered: {stats.last_error}",
            fg="red",
            err=True,
        )
        return 1
    return 1 if summary is None or summary.rejected else 0


def _progress(path: str):  # type: ignore[no-untyped-def]
    """A live counter on a terminal; nothing when stderr is a pipe or a log file."""
    if not sys.stderr.isatty():
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import MofNCompleteColumn, Progress, SpinnerColumn, TimeElapsedColumn

    return Progress(
        SpinnerColumn(),
        "{task.description}",
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def run_consume(
    settings: Settings, topic: str, from_beginning: bool, max_records: int | None, timeout_s: float | None
) -> int:
    from confluent_kafka import KafkaException

    from streams.consume import consume_json_lines
    from streams.kafka import make_consumer

    if not _check_topic(topic):
        return 2
    if not _broker_answers(settings):
        return 1
    consumer = make_consumer(settings)
    try:
        summary = consume_json_lines(
            consumer,
            topic,
            _raw_ts_serde(settings),
            sys.stdout.buffer,
            from_beginning,
            max_records,
            timeout_s,
            on_error=lambda m: click.echo(f"skipped: {m}", err=True),
        )
    except LookupError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        return 2
    except KafkaException as exc:  # the cluster went away between the check and the metadata request
        click.secho(f"error: Kafka at {settings.kafka_bootstrap}: {exc.args[0]}", fg="red", err=True)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        consumer.close()
    if summary.undecodable:
        click.echo(f"{summary.undecodable} records could not be decoded", err=True)
    if summary.raw_timestamps:
        click.echo(
            f"{summary.raw_timestamps} timestamps outside years 1..9999 were written as raw epoch integers",
            err=True,
        )
    return 0


def _raw_ts_serde(settings: Settings):  # type: ignore[no-untyped-def]
    """Timestamps stay epoch ints through decode; the JSON formatter renders them directly."""
    from streams.serde import AvroSerde, registry_client

    url = settings.schema_registry_url
    return AvroSerde(registry_client(url) if url else None, raw_timestamps=True)
