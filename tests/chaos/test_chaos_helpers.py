"""The chaos suite's own helpers, without a stack: the faulty receiver's modes and the double-assignment
check on hand-made records (a check that cannot fail would hide the defect it is there to catch)."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request

import pytest
from chaos_checks import Record, Stream, check_assignments, superseded
from chaos_receiver import DOWN, ERROR_500, MALFORMED, OK, FaultyReceiver

from streams.topics import ASSIGNMENTS_TOPIC, LIFECYCLE_TOPIC

pytestmark = pytest.mark.chaos


def _post(url: str) -> int:
    body = json.dumps({"alerts": [{"fingerprint": "f1", "status": "firing"}]}).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=5) as resp:
        resp.read()
        return int(resp.status)


def test_faulty_receiver_modes() -> None:
    rx = FaultyReceiver("t", DOWN)
    try:
        with pytest.raises(urllib.error.URLError):
            _post(rx.url)
        rx.set_mode(ERROR_500)
        with pytest.raises(urllib.error.HTTPError):
            _post(rx.url)
        rx.set_mode(MALFORMED)
        with pytest.raises(http.client.BadStatusLine):
            _post(rx.url)
        with pytest.raises(http.client.IncompleteRead):
            _post(rx.url)
        rx.set_mode(OK)
        assert _post(rx.url) == 200 and _post(rx.url) == 200
        assert rx.received == [("f1", "FIRING")] * 2 and rx.distinct() == {("f1", "FIRING")}
    finally:
        rx.stop()


def _assign(aid: str, task: str, vin: str, ts: int, command: str = "ASSIGN") -> Record:
    value = {"assignment_id": aid, "command": command, "task_id": task, "vin": vin, "ts": ts}
    return Record(0, ts, ts, vin.encode(), False, value)


def _state(aid: str, task: str, state: str, ts: int) -> Record:
    return Record(
        0, ts, ts, task.encode(), False, {"assignment_id": aid, "task_id": task, "state": state, "ts": ts}
    )


def _verdict(assignments: list[Record], lifecycle: list[Record]) -> bool:
    return check_assignments(Stream({ASSIGNMENTS_TOPIC: assignments, LIFECYCLE_TOPIC: lifecycle}))[0].ok


def test_double_assignment_check() -> None:
    # Handed over after a requeue, or after a REVOKE: fine. A replayed ASSIGN on the same car: fine.
    assert _verdict(
        [_assign("a1", "t", "V1", 10), _assign("a2", "t", "V2", 20)], [_state("a1", "t", "REQUEUED", 20)]
    )
    replayed = [_assign("a1", "t", "V1", 10), _assign("a1", "t", "V1", 12)]
    assert _verdict([*replayed, _assign("a1", "t", "V1", 15, "REVOKE"), _assign("a2", "t", "V2", 20)], [])
    # Held by V1 (never closed, or closed after V2 got it) while V2 got it too: caught.
    assert not _verdict([_assign("a1", "t", "V1", 10), _assign("a2", "t", "V2", 20)], [])
    assert not _verdict(
        [_assign("a1", "t", "V1", 10), _assign("a2", "t", "V2", 20)], [_state("a1", "t", "COMPLETED", 25)]
    )


def _node(offset: int, vin: str, ts: int) -> Record:
    return Record(0, offset, ts, vin.encode(), False, {"vin": vin, "ts": ts})


def test_latest_per_key_record_held_by_a_row_of_its_vin_at_least_as_recent() -> None:
    # V1's only record of the run (offset 66) was replaced by a record of the same ts (the last inserted
    # wins), V2's by a newer one published past the run window: the row its vin kept holds each of them.
    # The former rule (a row of the vin inside the window) called both lost once a merge had run.
    records = [_node(66, "V1", 1000), _node(67, "V2", 1000), _node(68, "V3", 2000)]
    held = superseded(records, {"V1": 1000, "V2": 5000, "V3": 1999})
    assert held == {(0, 66), (0, 67)}
    # A vin with no row, an older row than the record, or an undecodable record: not held.
    assert superseded([*records, Record(0, 69, 0, b"V1", False, None)], {"V3": 1999}) == set()
