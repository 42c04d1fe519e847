"""Pure decision logic of the car cloud: node eligibility, idle-time prediction, matching, preemption.

No Kafka or faust here: the processors call these classes and publish what they return.

Public API:

- ``SchedulerConfig`` / ``DEFAULT_CONFIG``: every threshold.
- ``Scheduler``: per-pool queues and idle sets; ``on_telemetry``, ``on_request``, ``on_status``,
  ``on_tick``, ``on_handoff`` return ``Out(topic, key, value)`` records; ``to_dict``/``from_dict``,
  ``drain_dirty``/``from_parts`` persist it.
- ``NodeState``, ``apply_telemetry``, ``evaluate`` and the reason constants: eligibility.
- ``stay_probability``, ``idle_until``: the idle-time model.
- ``pool_for_telemetry``, ``pool_for_request``: repartition keys for the wiring.
"""

from processors.scheduler.config import DEFAULT_CONFIG, SchedulerConfig
from processors.scheduler.eligibility import REASONS, NodeState, TelemetryResult, apply_telemetry, evaluate
from processors.scheduler.exceptions import InvalidRecord, SchedulerError
from processors.scheduler.matching import Scheduler, pool_for_request, pool_for_telemetry
from processors.scheduler.prediction import IdleHistory, idle_until, stay_probability
from processors.scheduler.records import ASSIGNMENTS_TOPIC, HANDOFF, LIFECYCLE_TOPIC, NODES_TOPIC, Out
from processors.scheduler.tasks import Task, assignment_id_for, effective_priority

__all__ = [
    "ASSIGNMENTS_TOPIC",
    "DEFAULT_CONFIG",
    "HANDOFF",
    "LIFECYCLE_TOPIC",
    "NODES_TOPIC",
    "REASONS",
    "IdleHistory",
    "InvalidRecord",
    "NodeState",
    "Out",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerError",
    "Task",
    "TelemetryResult",
    "apply_telemetry",
    "assignment_id_for",
    "effective_priority",
    "evaluate",
    "idle_until",
    "pool_for_request",
    "pool_for_telemetry",
    "stay_probability",
]
