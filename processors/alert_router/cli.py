"""``carnival alerts ...``: the click group the main CLI registers (``main.add_command(alerts)``)."""

from __future__ import annotations

import re
import sys
import threading
from typing import Any

import click

__all__ = ["alerts", "broker_problem", "parse_receivers"]

WEBHOOKS_ENV = "CARNIVAL_ALERT_WEBHOOKS"


def parse_receivers(webhooks: tuple[str, ...] | list[str], slack_webhooks: tuple[str, ...] | list[str],
                    env_value: str | None = None) -> list:  # type: ignore[type-arg]  # fmt: skip
    """Receivers from the options plus ``CARNIVAL_ALERT_WEBHOOKS`` (comma or space separated URLs;
    prefix one with ``slack:`` for the Slack text shape, e.g. ``slack:https://hooks.slack.com/...``)."""
    from processors.alert_router.delivery import Receiver

    entries = [("alertmanager", u) for u in webhooks] + [("slack", u) for u in slack_webhooks]
    for item in re.split(r"[,\s]+", env_value or ""):
        if item:
            entries.append(("slack", item[6:]) if item.startswith("slack:") else ("alertmanager", item))
    receivers, counts = [], {"alertmanager": 0, "slack": 0}
    if len(set(entries)) != len(entries):
        raise click.BadParameter("the same receiver URL is given twice")
    for kind, url in entries:
        if not url.startswith(("http://", "https://")):
            raise click.BadParameter(f"not an http(s) URL: {url!r}")
        counts[kind] += 1
        name = f"{'webhook' if kind == 'alertmanager' else 'slack'}-{counts[kind]}"
        receivers.append(Receiver(name, url, kind))  # type: ignore[arg-type]
    return receivers


class _DebugLog:
    """A librdkafka ``logger``: its lines go to the structured log at debug level, not to the terminal."""

    def log(self, level: int, fmt: str, *args: Any) -> None:
        import structlog

        structlog.get_logger("librdkafka").debug(fmt % args if args else fmt, librdkafka_level=level)


def broker_problem(settings: Any, timeout_s: float) -> str | None:
    """None if the broker answers a metadata request within ``timeout_s``; else one sentence saying what
    was tried, for how long, and which settings to check. librdkafka's own lines go to the debug log."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from streams.kafka import admin_config

    bootstrap = settings.kafka.bootstrap
    admin = AdminClient(admin_config(settings, logger=_DebugLog(), **{"log.connection.close": False}))
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else exc
        reason = error.str() if hasattr(error, "str") else str(error)
        return (f"cannot reach the Kafka broker at {bootstrap} (tried for {timeout_s:g} s: {reason}); "
                "check CARNIVAL_KAFKA_BOOTSTRAP and the CARNIVAL_KAFKA_* security settings, or allow more "
                "time with --broker-timeout / CARNIVAL_ALERT_BROKER_TIMEOUT_S")  # fmt: skip
    return None


@click.group()
def alerts() -> None:
    """Alerting: deliver alerts.v1 to on-call tooling."""


@alerts.command("route")
@click.option(
    "--webhook",
    "webhooks",
    multiple=True,
    metavar="URL",
    help="Alertmanager-style webhook receiver (repeatable).",
)
@click.option(
    "--slack-webhook",
    "slack_webhooks",
    multiple=True,
    metavar="URL",
    help='Slack-compatible {"text": ...} webhook (repeatable).',
)
@click.option("--group-id", help="Kafka consumer group [CARNIVAL_ALERT_GROUP_ID, carnival-alert-router].")
@click.option(
    "--dedup-window",
    "dedup_window_s",
    type=click.FloatRange(min=0),
    help="Seconds within which a repeated (fingerprint, status) is not sent again "
    "[CARNIVAL_ALERT_DEDUP_WINDOW_S, 300].",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1),
    help="HTTP timeout per attempt, seconds [CARNIVAL_ALERT_TIMEOUT_S, 5].",
)
@click.option(
    "--max-backoff",
    "backoff_max_s",
    type=click.FloatRange(min=0.1),
    help="Longest wait between retries of a receiver that is down, seconds "
    "[CARNIVAL_ALERT_BACKOFF_MAX_S, 30].",
)
@click.option("--external-url", help="Link sent as externalURL/generatorURL [CARNIVAL_ALERT_EXTERNAL_URL].")
@click.option(
    "--broker-timeout",
    "broker_timeout_s",
    type=click.FloatRange(min=0.1),
    help="Give up with an error if the Kafka broker cannot be reached within S seconds at start "
    "[CARNIVAL_ALERT_BROKER_TIMEOUT_S, 30].",
)
@click.option(
    "--max-idle",
    "max_idle_s",
    type=click.FloatRange(min=0),
    default=None,
    help="Exit once everything is delivered and no alert came for S seconds.",
)
def route(
    webhooks: tuple[str, ...],
    slack_webhooks: tuple[str, ...],
    group_id: str | None,
    dedup_window_s: float | None,
    timeout_s: float | None,
    backoff_max_s: float | None,
    external_url: str | None,
    broker_timeout_s: float | None,
    max_idle_s: float | None,
) -> None:
    """Consume alerts.v1 and deliver each alert to every receiver.

    Receivers come from --webhook, --slack-webhook and CARNIVAL_ALERT_WEBHOOKS. Each receiver reads
    alerts.v1 in its own consumer group, so one that is down holds up only itself; the router's group is
    committed only once every receiver delivered (or dead-lettered) an alert, so a restart re-delivers
    rather than loses.
    """  # fmt: skip
    from core.metrics import serve_metrics
    from core.settings import get_settings
    from processors.alert_router.router import AlertRouter, RouterConfig

    settings = get_settings()
    receivers = parse_receivers(webhooks, slack_webhooks, settings.alerts.webhooks.get_secret_value())
    if not receivers:
        click.secho(
            f"error: no receivers: give --webhook/--slack-webhook or set {WEBHOOKS_ENV}", fg="red", err=True
        )
        sys.exit(2)
    options = {"group_id": group_id, "dedup_window_s": dedup_window_s, "timeout_s": timeout_s,
               "backoff_max_s": backoff_max_s, "external_url": external_url,
               "broker_timeout_s": broker_timeout_s}  # fmt: skip
    config = RouterConfig.from_settings(settings, **{k: v for k, v in options.items() if v is not None})
    problem = broker_problem(settings, config.broker_timeout_s)
    if problem:
        click.secho(f"error: {problem}", fg="red", err=True)
        sys.exit(1)
    serve_metrics(settings.metrics_port)
    router = AlertRouter(settings, receivers, config)
    stop = threading.Event()
    try:
        router.run(stop, max_idle_s=max_idle_s)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (the main command maps it): run() already closed cleanly
        stop.set()
    stats = router.stats
    deliveries = sum(w.delivered for w in router.workers)
    click.echo(f"alerts route: {stats['consumed']} consumed, {stats['deduplicated']} deduplicated, "
               f"{deliveries} deliveries", err=True)  # fmt: skip
