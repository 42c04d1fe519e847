"""`carnival worker power --replicas 2`: a worker group under its supervisor, against the real broker.

The two replicas join the power processor's consumer group and split its partitions. One replica is
SIGKILLed while events are in flight: the survivor takes over its partitions (the time it took is
printed), the supervisor starts it again, the partitions are split again, and every site's incident was
detected once (one incident id per site), before, across and after the takeover.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from test_power_worker import Outputs, new_site, produce

from core.settings import Settings
from processors.groups import POWER
from processors.power.scenario import SiteEvents

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SITES_PER_ROUND = 12  # a few sites per partition (6), so every replica has some


class Supervisor:
    """`carnival worker power --replicas 2` in a subprocess; its children log to the same file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "carnival.cli", "worker", "power", "--replicas", "2"],
                env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def events(self, name: str) -> list[dict[str, object]]:
        found = []
        for line in self.log_path.read_bytes().splitlines():
            if line.startswith(b"{") and f'"{name}"'.encode() in line:
                found.append(orjson.loads(line))
        return found

    def pid_of(self, replica: int) -> int:
        spawned = [e for e in self.events("worker_spawned") if e.get("replica") == replica]
        return int(spawned[-1]["pid"])  # type: ignore[call-overload]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise
        return int(self.proc.returncode)


def members(settings: Settings) -> dict[str, list[int]]:
    """member id -> its partitions of the power events topic, as the broker sees the group now ({} while
    the group coordinator is loading or moving: NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS)."""
    admin = AdminClient(settings.kafka_client_config())
    try:
        desc = admin.describe_consumer_groups([POWER.group])[POWER.group].result(timeout=30)
    except KafkaException:
        return {}
    return {
        m.member_id: sorted(tp.partition for tp in m.assignment.topic_partitions if tp.topic in POWER.topics)
        for m in desc.members
    }


def wait(cond, timeout_s: float, what) -> float:  # type: ignore[no-untyped-def]
    """Seconds until ``cond()`` holds; fails with ``what()`` after ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if cond():
            return time.monotonic() - started
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what()}")


def split_between(settings: Settings, n: int, partitions: int) -> bool:
    now = members(settings)
    owned = sorted(p for parts in now.values() for p in parts)
    return len(now) == n and all(now.values()) and owned == list(range(partitions))


@pytest.fixture(scope="module")
def supervisor(
    stack: Settings, stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Supervisor]:
    env = {**os.environ, **stack_env, "CARNIVAL_POWER_SILENT_AFTER_S": "4"}
    sup = Supervisor(env, tmp_path_factory.mktemp("replicas") / "supervisor.log")
    try:
        yield sup
    finally:
        sup.stop()


def send_round(settings: Settings, name: str) -> list[SiteEvents]:
    """One LOAD_SHED event for each of ``SITES_PER_ROUND`` new sites (each opens one incident)."""
    sites = [new_site(name) for _ in range(SITES_PER_ROUND)]
    produce(settings, [s.event("ctl-1", "LOAD_SHED", 1.0) for s in sites])
    return sites


def all_detected(outputs: Outputs, sites: list[SiteEvents], timeout_s: float, what: str) -> None:
    outputs.wait(lambda: all(outputs.incidents(s.site_id) for s in sites), timeout_s, what)


def test_replicas_split_partitions_take_over_a_killed_one_and_miss_no_incident(
    stack: Settings, supervisor: Supervisor
) -> None:
    partitions = stack.topic_partitions
    outputs = Outputs(stack)

    def log_tail() -> str:
        return supervisor.log_path.read_text(errors="replace")[-3000:]

    try:
        wait(lambda: split_between(stack, 2, partitions), 180,
             lambda: f"two replicas splitting the partitions: {members(stack)}\n{log_tail()}")  # fmt: skip

        before = send_round(stack, "rep-before")
        all_detected(outputs, before, 60, "incidents before the kill")

        old = set(members(stack))
        across = send_round(stack, "rep-across")
        os.kill(supervisor.pid_of(1), signal.SIGKILL)

        def taken_over() -> bool:  # one of the two old members left, every partition owned
            now = members(stack)
            return len(old & set(now)) == 1 and split_between(stack, len(now), partitions)

        takeover_s = wait(taken_over, 120, lambda: f"the survivor owning every partition: {members(stack)}")
        all_detected(outputs, across, 90, "incidents across the kill")

        rejoin_s = wait(lambda: split_between(stack, 2, partitions), 120,
                        lambda: f"the restarted replica back in the group: {members(stack)}")  # fmt: skip
        exits = supervisor.events("worker_exited")
        assert [(e["processor"], e["replica"], e["code"]) for e in exits] == [("power", 1, -signal.SIGKILL)]

        after = send_round(stack, "rep-after")
        all_detected(outputs, after, 60, "incidents after the rejoin")

        for site in before + across + after:  # a replay may repeat a record, never make a second incident
            sheds = {r["incident_id"] for r in outputs.incidents(site.site_id) if r["kind"] == "LOAD_SHED"}
            assert len(sheds) == 1, (site.site_id, outputs.incidents(site.site_id))
        print(f"\nreplicas: takeover of a SIGKILLed replica's partitions {takeover_s:.1f} s, "
              f"back to two replicas {rejoin_s:.1f} s later")  # fmt: skip
    finally:
        outputs.close()
    assert supervisor.stop() == 0
    assert not supervisor.events("worker_killed"), "a replica did not stop on SIGTERM"
