"""``carnival simulate``: the seeded fleet, task, emulator and power simulator, on Kafka or to files."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from simulator.config import DEFAULT_START, parse_mix, parse_slots


def _mix(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, float] | None:
    if value is None:
        return None
    try:
        return parse_mix(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _slots(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        return parse_slots(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("simulate")
@click.option("--seed", default=42, show_default=True, help="Same seed, same events.")
@click.option("--cars", default=100, show_default=True, type=click.IntRange(min=0))
@click.option("--sites", default=2, show_default=True, type=click.IntRange(min=0))
@click.option(
    "--duration",
    default=None,
    help="Simulated time to run [1d]; with --rate, wall-clock seconds of load [10s]. E.g. 6h, 7d, 90s.",
)
@click.option(
    "--start",
    "start",
    default=DEFAULT_START.isoformat().replace("+00:00", "Z"),
    show_default=True,
    help="Simulated start time (ISO-8601 or 'now'); the default is a fixed Monday 00:00 UTC.",
)
@click.option(
    "--speed",
    default=1440.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Simulated seconds per wall second (1440 = a day in a minute; 0 = as fast as possible).",
)
@click.option("--as-fast-as-possible", "afap", is_flag=True, help="Same as --speed 0.")
@click.option("--rate", type=click.FloatRange(min=1), help="Rate mode: push N events/s (load test).")
@click.option("--topics", help="Comma-separated subset of topics to send (default: every input topic).")
@click.option("--hw-mix", callback=_mix, help="Hardware mix, e.g. HW3=35,HW4=55,HW5=10.")
@click.option(
    "--region-mix", callback=_mix, help="Region mix, e.g. us-west=35,us-east=30,us-central=20,ca-east=15."
)
@click.option(
    "--profile-mix",
    callback=_mix,
    help="Habit mix, e.g. commuter=55,home_worker=20,night_shift=8,erratic=17.",
)
@click.option("--opt-in", "opt_in", type=click.FloatRange(0, 1), help="Share of cars opted in [0.6].")
@click.option(
    "--faulty-share",
    type=click.FloatRange(0, 1),
    help="Share of cars whose emulator fails most tasks [0.02].",
)
@click.option(
    "--tasks-per-hour", type=click.FloatRange(min=0), help="Mean weekday task arrivals per hour [400]."
)
@click.option(
    "--fault-share", type=click.FloatRange(0, 1), help="Share of failovers with an injected fault [0.4]."
)
@click.option(
    "--habits",
    type=click.Choice(["off", "realistic"]),
    help="Owner habits profile [off]: realistic = sleeping cars, owner back before the drive-off, "
    "departures late/early/skipped, fast charges end at full, gig drivers, Wi-Fi per location.",
)
@click.option(
    "--site-compute",
    type=click.Choice(["off", "realistic", "small"]),
    help="Datacenter sites as emulator capacity [off]: slots per site (realistic 200-400, small 8-16), "
    "sessions in the site's load, capacity reports on sites.capacity.v1, a site controller for "
    "site:<site_id> assignments, long battery islands, task placement.",
)
@click.option("--site-slots", callback=_slots, help="Slots per site, N or N-M (turns --site-compute on).")
@click.option(
    "--placement-mix",
    callback=_mix,
    help="Task placement with site compute, e.g. ANY=80,FLEET=10,DATACENTER=10.",
)
@click.option(
    "--self-assign/--no-self-assign",
    default=None,
    help="Run tasks on idle simulated cars without a matcher [on with --rate, off otherwise].",
)
@click.option(
    "--emulator/--no-emulator",
    default=None,
    help="Run the emulator runtime on tasks.assignments.v1 [on when producing to Kafka, off with --rate].",
)
@click.option(
    "--truth",
    "truth_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Ground-truth JSONL file [<data_dir>/simulate/truth.jsonl].",
)
@click.option("--no-truth", is_flag=True, help="Do not write ground truth.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write JSON lines, one <topic>.jsonl per topic, instead of producing to Kafka.",
)
@click.option("--dry-run", is_flag=True, help="Generate and count only: nothing is produced or written.")
def simulate(**opts: Any) -> None:
    """Simulate the fleet, task submitters, emulator nodes and site power; publish to Kafka.

    Seeded and reproducible: the same options give the same events. Without --rate the world runs on
    simulated time, accelerated by --speed, for --duration of simulated time. With --rate N it pushes N
    events per second for --duration of wall time. Ground truth (true departures, faulty cars, injected
    faults, every task) goes to the --truth file, never to Kafka.
    """
    from simulator.app import run_command

    sys.exit(run_command(opts))
