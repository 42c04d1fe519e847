"""``carnival dashboard``: a light module (click only); the server loads on use."""

from __future__ import annotations

from datetime import timedelta

import click


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8050, show_default=True, type=click.IntRange(0, 65535),
              help="Port; 0 picks a free one.")  # fmt: skip
@click.option("--refresh", "refresh_s", default=5.0, show_default=True, type=click.FloatRange(min=0.5),
              help="Seconds between the page's polls.")  # fmt: skip
@click.option("--window", "window_h", default=12.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Hours of event time shown, up to the newest event in the data.")  # fmt: skip
@click.option("--no-lag", is_flag=True, help="Do not sample consumer lag from Kafka.")
def dashboard(host: str, port: int, refresh_s: float, window_h: float, no_lag: bool) -> None:
    """Live web dashboard over ClickHouse: capacity, tasks, failovers, alerts, traces, pipeline health.

    Serves a page (and its assets: it works offline) that polls one JSON endpoint per panel. The URL is
    printed at start; Ctrl-C stops it.
    """
    from carnival.dashboard.server import DashboardServer
    from core.settings import get_settings

    try:
        server = DashboardServer(
            get_settings(), host, port, refresh_s, timedelta(hours=window_h), sample_lag=not no_lag
        )
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - the client's handshake: one clear line for the operator
        url = get_settings().clickhouse_url
        raise click.ClickException(f"ClickHouse at {url} is not reachable: {exc}") from exc
    click.echo(f"carnival dashboard: {server.url}  (refresh {refresh_s:g} s; Ctrl-C stops)", color=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
