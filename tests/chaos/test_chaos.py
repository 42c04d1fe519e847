"""Issue 11's chaos suite: under simulator load, through the real broker and embedded ClickHouse, every
worker is SIGKILLed at random moments, the broker restarts, ClickHouse stops for a while, a webhook
receiver is down then answers 500 then malformed HTTP, and one poison record of each kind arrives
mid-stream. Afterwards nothing may be lost or duplicated, no task held by two cars, no fault missed, no
alert lost, every poison dead-lettered with a reason and every processor serving again within 10 s.

The run happens once (the ``chaos_run`` fixture) and prints its table: fault injected -> outcome.
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(1800)]  # the run is its setup

# Checks that fail today because of product defects other branches of issue 11 fix, by check name, with
# the defect. A family whose failures are all listed here is an expected failure (not strict): it turns
# green by itself once the fix is merged, and any other failure fails it.
_SINK_PAUSED = (
    "sink: partitions assigned while ClickHouse is down are paused in _on_assign and never resumed once "
    "_resolve_pending positions them (librdkafka keeps a partition paused across assign()), so the sink "
    "lands nothing more (sinks/kafka_sink.py); and it skips tombstones of non-compacted topics with no "
    "row and no dead letter (_route)"
)
_TOPICS = ("alerts.v1", "deadletter.v1", "emulator.actions.v1", "fleet.nodes.v1", "fleet.telemetry.v1",
           "power.events.v1", "power.incidents.v1", "tasks.assignments.v1", "tasks.lifecycle.v1",
           "tasks.requests.v1", "tasks.status.v1")  # fmt: skip
_NO_FUTURE_GUARD = "no future-timestamp guard: taken as it is, no FUTURE_TIMESTAMP dead letter"
_SCHED_NO_GUARD = f"scheduler: {_NO_FUTURE_GUARD} (matching.py on_request/on_status)"
_ATTEMPT_LOOP = (
    "scheduler: the status of a task whose lifecycle says attempt=2^31-1 makes routable() loop "
    "range(attempt, 0, -1) over uuid5 on the event loop (processors/scheduler/routing.py): the scheduler "
    "stops serving (no ASSIGN, no commit) for hours"
)
KNOWN_DEFECTS: dict[str, str] = {
    **{f"no record lost or duplicated: {t}": _SINK_PAUSED for t in _TOPICS},
    "every processor caught up after the run": (
        f"{_SINK_PAUSED}; alert router: see the faulty receiver; scheduler: the attempt=2^31-1 status loop"
    ),
    "every injected power fault of the ground truth found": (
        "power: a year-3000 power.events.v1 record moves its site's watermark, every later event of the "
        "site is LATE ('more than 1000 ms behind the site's clock'), the failover is missed "
        "(processors/power/reorder.py)"
    ),
    "power serving again within 10 s: year-3000 power.events.v1": "power: the site is blind (see above)",
    "every alert delivered once to the faulty receiver": (
        "alert router: the receiver's worker thread dies on a malformed response (http.client.BadStatusLine "
        "/ IncompleteRead are not caught by post_json: processors/alert_router/delivery.py); the receiver "
        "gets nothing after its first malformed answer and the router never commits again"
    ),
    "dead-lettered with a reason: status for an unknown task": (
        "scheduler: statuses of unknown tasks are held with no TTL (processors/scheduler/routing.py "
        "_route_status), never EXPIRED to the dead-letter topic"
    ),
    "dead-lettered with a reason: oversized record (~900 KB)": (
        "no documented string bound: a 900 KB tenant is accepted by the scheduler and the sink"
    ),
    "dead-lettered with a reason: year-3000 tasks.requests.v1": _SCHED_NO_GUARD,
    "dead-lettered with a reason: year-3000 tasks.status.v1": _SCHED_NO_GUARD,
    "dead-lettered with a reason: year-3000 power.events.v1": f"power: {_NO_FUTURE_GUARD} (reorder.py)",
    "dead-lettered with a reason: tasks.lifecycle.v1 attempt=2147483647": (
        "scheduler: attempt is taken as it is (processors/scheduler/routing.py _apply_lifecycle)"
    ),
    "scheduler serving again within 10 s: status of the attempt=2^31-1 task": _ATTEMPT_LOOP,
    "scheduler serving again within 10 s: tasks.lifecycle.v1 attempt=2147483647": _ATTEMPT_LOOP,
}


def _verdict(chaos_run, family: str) -> None:  # type: ignore[no-untyped-def]
    _, outcomes = chaos_run
    mine = [o for o in outcomes if o.family == family]
    assert mine, f"no {family} check ran"
    failed = [o for o in mine if not o.ok]
    unknown = [o for o in failed if o.name not in KNOWN_DEFECTS]
    assert not unknown, "\n".join(f"{o.name}: {o.detail}" for o in unknown)
    if failed:
        pytest.xfail("; ".join(f"{o.name}: {KNOWN_DEFECTS[o.name]}" for o in failed))


def test_no_record_lost_or_duplicated_in_clickhouse(chaos_run) -> None:  # type: ignore[no-untyped-def]
    _verdict(chaos_run, "loss")


def test_no_task_assigned_to_two_cars_at_once(chaos_run) -> None:  # type: ignore[no-untyped-def]
    _verdict(chaos_run, "assign")


def test_every_injected_power_fault_found(chaos_run) -> None:  # type: ignore[no-untyped-def]
    _verdict(chaos_run, "power")


def test_every_alert_delivered_once_to_every_receiver(chaos_run) -> None:  # type: ignore[no-untyped-def]
    _verdict(chaos_run, "alerts")


def test_every_poison_record_dead_lettered_with_its_reason(chaos_run) -> None:  # type: ignore[no-untyped-def]
    _verdict(chaos_run, "poison")


def test_every_processor_serves_again_within_10s_of_a_poison(chaos_run) -> None:  # type: ignore[no-untyped-def]
    _verdict(chaos_run, "recovery")


def test_no_worker_crashed_and_the_pipeline_caught_up(chaos_run) -> None:  # type: ignore[no-untyped-def]
    _verdict(chaos_run, "liveness")
