"""What a chaos run must show afterwards, computed from what Kafka holds (the ground truth of the run),
the rows in ClickHouse, the simulator's truth and the receivers' logs. Every check has a stable name
(the tests' KNOWN_DEFECTS refer to it) and a family (one test per family)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import chaos_poison
from chaos_run import GROUP_OF, RunResult, offsets
from confluent_kafka import TopicPartition

from core.settings import Settings
from sinks.clickhouse import get_client
from sinks.tables import TABLE_FOR_TOPIC
from streams.kafka import make_consumer
from streams.serde import serde_from_settings
from streams.topics import (
    ALERTS_TOPIC,
    ASSIGNMENTS_TOPIC,
    DEADLETTER_TOPIC,
    LIFECYCLE_TOPIC,
    NODES_TOPIC,
    TOPICS,
)

RECOVERY_LIMIT_S = 10.0
# Tables that keep one row per key (ReplacingMergeTree(ts) ORDER BY vin: the nodes' current state), so
# a merge removes the rows of superseded records: there a record is also landed when the row its key kept
# is at least as recent as the record (see ``superseded``).
LATEST_PER_KEY = frozenset({NODES_TOPIC})
SINK_PROCESSOR = "carnival-sink"
DECODED = (ALERTS_TOPIC, ASSIGNMENTS_TOPIC, DEADLETTER_TOPIC, LIFECYCLE_TOPIC)
CLOSING_STATES = ("COMPLETED", "FAILED", "PREEMPTED", "REQUEUED", "EXPIRED", "REJECTED")
# Which dead letters are a component's own (the processor field of deadletter.v1).
PROCESSOR_MATCH = {
    "scheduler": "scheduler",
    "scheduler-router": "scheduler",
    "power": "power",
    "sink": SINK_PROCESSOR,
}


@dataclass
class Outcome:
    family: str
    name: str
    ok: bool
    detail: str


@dataclass
class Record:
    partition: int
    offset: int
    kafka_ts_ms: int
    key: bytes | None
    null: bool
    value: dict[str, Any] | None = None


@dataclass
class Stream:
    """Every record of the run per topic, read back from Kafka."""

    records: dict[str, list[Record]] = field(default_factory=dict)

    def by_partition(self, topic: str, partition: int) -> list[Record]:
        return [r for r in self.records.get(topic, []) if r.partition == partition]


def read_stream(settings: Settings, result: RunResult) -> Stream:
    serde = serde_from_settings(settings)
    consumer = make_consumer(settings, "chaos-reader", **{"enable.partition.eof": True, "log_level": 0})
    todo = {k: hi for k, hi in result.hi.items() if hi > result.lo.get(k, 0)}
    consumer.assign([TopicPartition(t, p, result.lo.get((t, p), 0)) for (t, p) in todo])
    stream = Stream({t: [] for t in TABLE_FOR_TOPIC})
    idle = 0
    while todo and idle < 30:
        msgs = consumer.consume(5000, timeout=1)
        idle = 0 if msgs else idle + 1
        for m in msgs:
            if m.error():
                continue
            k = (m.topic(), m.partition())
            if k not in todo or m.offset() >= result.hi[k]:
                todo.pop(k, None)
                continue
            value = m.value()
            rec = Record(m.partition(), m.offset(), m.timestamp()[1], m.key(), value is None)
            if value is not None and (m.topic() in DECODED or m.topic() in LATEST_PER_KEY):
                try:
                    rec.value = serde.decode(m.topic(), value)
                except Exception:  # noqa: BLE001 - a poison or a bug: the checks see value None
                    rec.value = None
            stream.records[m.topic()].append(rec)
            if m.offset() >= result.hi[k] - 1:
                todo.pop(k, None)
    consumer.close()
    return stream


def _ms(value: Any) -> int:
    return int(value.timestamp() * 1000) if isinstance(value, datetime) else int(value)


def dead_letters(stream: Stream) -> dict[tuple[str, int, int], list[dict[str, Any]]]:
    out: dict[tuple[str, int, int], list[dict[str, Any]]] = defaultdict(list)
    for r in stream.records[DEADLETTER_TOPIC]:
        v = r.value
        if v is not None and v.get("source_partition") is not None and v.get("source_offset") is not None:
            out[(v["source_topic"], int(v["source_partition"]), int(v["source_offset"]))].append(v)
    return out


# ---------------------------------------------------------------------------------------- checks
def check_loss(settings: Settings, result: RunResult, stream: Stream) -> list[Outcome]:
    """Every record of the run is one row of its table, or a dead letter of the sink; none twice."""
    client = get_client(settings)
    dls = dead_letters(stream)
    out = []
    for topic, table in sorted(TABLE_FOR_TOPIC.items()):
        compacted = TOPICS[topic].compacted
        expected = {(r.partition, r.offset) for r in stream.records[topic] if not (r.null and compacted)}
        floor = min((o for (t, _), o in result.lo.items() if t == topic), default=0)
        rows = client.query(
            f"SELECT _partition, _offset, count() FROM {table} "
            f"WHERE _topic = {{t:String}} AND _offset >= {floor} GROUP BY _partition, _offset",
            parameters={"t": topic},
        ).result_rows
        in_run = {
            (int(p), int(o)): int(n)
            for p, o, n in rows
            if result.lo.get((topic, int(p)), 0) <= int(o) < result.hi.get((topic, int(p)), 0)
        }
        sink_dl = {
            (p, o)
            for (t, p, o), v in dls.items()
            if t == topic and any(d.get("processor") == SINK_PROCESSOR for d in v)
        }
        landed = set(in_run) | sink_dl
        if topic in LATEST_PER_KEY:  # a row per key by design: a later row of the key holds the record
            kept = client.query(
                f"SELECT vin, max(ts), argMax((_partition, _offset), (ts, _offset)) FROM {table} "
                f"WHERE _topic = {{t:String}} GROUP BY vin",
                parameters={"t": topic},
            ).result_rows
            held = superseded(stream.records[topic], {str(v): _ms(ts) for v, ts, _ in kept}) - landed
            landed |= held
            after = sum(1 for _, _, (p, o) in kept if int(o) >= result.hi.get((topic, int(p)), 0))
            note = f"; {len(held)} held by a later row of their vin ({after} vins kept a row past the run)"
            recs = {(r.partition, r.offset): r.value for r in stream.records[topic]}
            why = {str(v): (_ms(ts), po) for v, ts, po in kept}
            for po in sorted(expected - landed)[:3]:
                v = recs.get(po) or {}
                vin = str(v.get("vin"))
                note += f"; {po}: vin {vin} ts {v.get('ts')}, kept (ts, row) {why.get(vin)}"
        else:
            note = ""
        lost = sorted(expected - landed)
        dup = sorted(k for k, n in in_run.items() if n > 1) + sorted(set(in_run) & sink_dl)
        stray = sorted(set(in_run) - expected)
        detail = (
            f"{len(expected)} records, {len(in_run)} rows, {len(sink_dl)} sink dead letters; "
            f"{len(lost)} lost, {len(dup)} duplicated, {len(stray)} rows for no record"
        )
        detail += note
        if lost:
            detail += f"; lost e.g. partition/offset {lost[:3]}"
        if dup:
            detail += f"; duplicated e.g. {dup[:3]}"
        out.append(
            Outcome(
                "loss", f"no record lost or duplicated: {topic}", not lost and not dup and not stray, detail
            )
        )
    return out


def superseded(records: list[Record], kept_ts: dict[str, int]) -> set[tuple[int, int]]:
    """The records of a latest-per-key table whose key kept a row at least as recent as the record.

    ReplacingMergeTree(ts) keeps, per key, the row of the highest ts (of equal ts, the last inserted), so
    once a merge ran, a landed record's row is gone whenever a row of its key with ts >= its own exists,
    and such a row is the only trace left. That row may come from past the run window: ``hi`` is taken
    when the catch-up starts, while the scheduler still works off its backlog (after a SIGKILL) and keeps
    publishing newer states of the cars, which the sink lands too; a merge then replaces every row of a
    vin from the window with that later row (a chaos run shows about a dozen such vins). Counting only
    rows of the window then called that vin's records of the run lost, though each one landed and was
    replaced as designed. A row of the key older than the record does not hold it: the record's own row
    would have replaced it (stricter than the former "any row of the key in the window").
    """
    out = set()
    for r in records:
        v = r.value
        if v is None or v.get("ts") is None:
            continue  # undecodable: only its own row or a sink dead letter accounts for it
        best = kept_ts.get(str(v["vin"]))
        if best is not None and best >= _ms(v["ts"]):
            out.add((r.partition, r.offset))
    return out


def check_assignments(stream: Stream) -> list[Outcome]:
    """No task is held by two cars at once: an ASSIGN holds until its REVOKE or its lifecycle end."""
    closed: dict[str, int] = {}
    for r in stream.records[LIFECYCLE_TOPIC]:
        v = r.value
        if v and v.get("assignment_id") and v["state"] in CLOSING_STATES:
            aid, ts = v["assignment_id"], _ms(v["ts"])
            closed[aid] = min(ts, closed.get(aid, ts))
    held: dict[str, list[tuple[int, str, str]]] = defaultdict(list)  # task -> (from, vin, assignment)
    seen: set[str] = set()
    for r in stream.records[ASSIGNMENTS_TOPIC]:
        v = r.value
        if not v:
            continue
        if v["command"] == "REVOKE":
            ts = _ms(v["ts"])
            closed[v["assignment_id"]] = min(ts, closed.get(v["assignment_id"], ts))
        elif v["assignment_id"] not in seen:
            seen.add(v["assignment_id"])
            held[v["task_id"]].append((_ms(v["ts"]), v["vin"], v["assignment_id"]))
    overlaps = []
    for task, spans in held.items():
        spans.sort()
        for i, (_a_from, a_vin, a_id) in enumerate(spans):
            a_to = closed.get(a_id, 2**62)
            for b_from, b_vin, b_id in spans[i + 1 :]:
                if b_vin != a_vin and b_from < a_to:
                    overlaps.append(f"{task}: {a_id}@{a_vin} and {b_id}@{b_vin}")
    detail = f"{len(seen)} assignments of {len(held)} tasks; {len(overlaps)} overlapping on two cars"
    if overlaps:
        detail += f", e.g. {overlaps[0]}"
    return [Outcome("assign", "no task assigned to two cars at once", not overlaps, detail)]


def check_power_faults(settings: Settings, result: RunResult) -> list[Outcome]:
    from carnival.report.power import check_power, incident_from_row
    from carnival.report.queries import QUERIES
    from carnival.report.truth import load_truth

    truth = load_truth(result.truth_path)
    start = datetime.fromtimestamp(truth.start_ms / 1000, UTC)
    end = datetime.fromtimestamp(truth.end_ms / 1000, UTC) + timedelta(minutes=5)
    q = get_client(settings).query(
        QUERIES["incidents"], parameters={"since": result.since, "start": start, "end": end}
    )
    incidents = [incident_from_row(dict(zip(q.column_names, row, strict=True))) for row in q.result_rows]
    section = check_power(truth.failovers, incidents, truth.late_power, [], truth.end_ms)
    found = next(c for c in section.checks if c.name == "every injected failover and fault found")
    missed, failover = [], ""
    for line in section.lines:
        if line.startswith("failover"):
            failover = line.split(", transfer")[0]
        elif "MISSED" in line:
            missed.append(f"{line.strip()} of the {failover}")
    detail = found.detail + (f"; {', '.join(missed[:4])}" if missed else "")
    ok = found.ok and bool(truth.failovers)
    if not truth.failovers:
        detail += " (no failover in the window: nothing was tested)"
    return [Outcome("power", "every injected power fault of the ground truth found", ok, detail)]


def check_alerts(settings: Settings, result: RunResult, stream: Stream) -> list[Outcome]:
    """What alerts.v1 held at the end of the run reached each receiver; what a receiver got beyond
    that must be on alerts.v1 by now (alerts fired while the run wound down, e.g. SITE_SILENT)."""
    fired = {(v["fingerprint"], v["status"]) for r in stream.records[ALERTS_TOPIC] if (v := r.value)}
    lo = {k: o for k, o in result.lo.items() if k[0] == ALERTS_TOPIC}
    now = RunResult(result.scale, result.since, lo, offsets(settings, [ALERTS_TOPIC]))
    later = {(v["fingerprint"], v["status"]) for r in read_stream(settings, now).records[ALERTS_TOPIC]
             if (v := r.value)}  # fmt: skip
    out = []
    for rx in result.receivers:
        got = rx.distinct()
        missing, extra = fired - got, got - later - fired
        dupes = len(rx.received) - len(got)
        detail = (
            f"{len(fired)} (fingerprint, status) fired; {len(got & fired)} received, {len(missing)} "
            f"missing, {len(extra)} unknown; {dupes} repeats removed by dedup; answers {rx.answers}"
        )
        ok = not missing and not extra and bool(fired)
        if not fired:
            detail += " (no alert fired: nothing was tested)"
        out.append(Outcome("alerts", f"every alert delivered once to the {rx.name} receiver", ok, detail))
    return out


def check_poison(result: RunResult, stream: Stream) -> list[Outcome]:
    dls = dead_letters(stream)
    out = []
    for p in result.poisons:
        if p.error:
            out.append(
                Outcome("poison", f"dead-lettered with a reason: {p.name}", False, f"not produced: {p.error}")
            )
            continue
        got = dls.get((p.topic, p.partition, p.offset), [])
        reasons = sorted({f"{d.get('processor')}:{d['error_kind']}" for d in got})
        with_reason = [d for d in got if d.get("error_kind") and d.get("error")]
        detail = f"{p.topic}[{p.partition}]@{p.offset}: " + (", ".join(reasons) or "no dead letter")
        if p.value is not None and with_reason:
            sizes = {d.get("value_size") for d in with_reason}
            detail += f"; value_size {sorted(s for s in sizes if s is not None)} of {len(p.value)}"
            if any(d.get("value_size") not in (None, len(p.value)) for d in with_reason):
                with_reason = []
                detail += " (WRONG SIZE)"
        if p.dead_letter:
            out.append(Outcome("poison", f"dead-lettered with a reason: {p.name}", bool(with_reason), detail))
        else:
            out.append(Outcome("poison", f"handled: {p.name}", True, detail + f" ({p.note})"))
    nan_eligible = [
        r
        for r in stream.records[NODES_TOPIC]
        if r.key == chaos_poison.NAN_VIN.encode() and r.value and r.value.get("eligible")
    ]
    nan_assigned = [
        r for r in stream.records[ASSIGNMENTS_TOPIC] if r.value and r.value.get("vin") == chaos_poison.NAN_VIN
    ]
    out.append(
        Outcome(
            "poison",
            "a car with NaN soc_pct/compute_temp_c is never eligible nor assigned",
            not nan_eligible and not nan_assigned,
            f"{len(nan_eligible)} eligible node states, {len(nan_assigned)} assignments",
        )
    )
    return out


def check_recovery(result: RunResult, stream: Stream) -> list[Outcome]:
    """Per poison and component that reads it: seconds from its delivery until the component committed
    the next normal record of that key (else partition) that it did not dead-letter: it is serving
    again. For the scheduler the time to its next ASSIGN is shown as well."""
    dls = dead_letters(stream)
    poison_at = {(p.topic, p.partition, p.offset) for p in result.poisons}
    assign_ts = sorted(
        r.kafka_ts_ms for r in stream.records[ASSIGNMENTS_TOPIC] if r.value and r.value["command"] == "ASSIGN"
    )
    # Wave 2 can disable a processor for good: wave 1 is timed on records that came well before it.
    wave2_ms = min((p.kafka_ts_ms for p in result.poisons if p.wave == 2 and not p.error), default=2**62)
    out = []
    for p in result.poisons:
        if p.error:
            continue
        until_ms = wave2_ms - RECOVERY_LIMIT_S * 1000 if p.wave == 1 else 2**62
        for reader in p.readers:
            group, match = GROUP_OF[reader], PROCESSOR_MATCH[reader]
            later = [
                r
                for r in stream.by_partition(p.topic, p.partition)
                if r.offset > p.offset
                and (p.topic, p.partition, r.offset) not in poison_at
                and not r.null
                and r.kafka_ts_ms < until_ms
            ]
            # The next record of the poison's key (a site's later events: a blinded site shows there),
            # else of its partition; one the component dead-lettered is not "served".
            same_key = [r for r in later if r.key == p.key.encode()] or later
            served = [
                r
                for r in same_key
                if not any(
                    match in str(d.get("processor")) for d in dls.get((p.topic, p.partition, r.offset), [])
                )
            ]
            normal_rec = served[0] if served else None
            # A partition with nothing after the poison: the time to get past the poison itself.
            normal = p.offset if not later else None if normal_rec is None else normal_rec.offset
            samples = result.samples.get((group, p.topic, p.partition), [])
            when = None if normal is None else next((t for t, c in samples if c > normal), None)
            # From the poison's delivery, or from the next normal record's arrival when that came later
            # (a quiet partition is not a slow processor). Kafka timestamps are mapped to this clock.
            since = p.delivered_at
            if normal_rec is not None:
                since = max(since, p.delivered_at + (normal_rec.kafka_ts_ms - p.kafka_ts_ms) / 1000)
            seconds = None if when is None else max(0.0, when - since)
            took = "never" if seconds is None else f"after {seconds:.1f} s"
            of_key = " of its key" if same_key is not later else ""
            if not later:
                detail = (
                    f"nothing after it in its partition{' before wave 2' * (p.wave == 1)}; "
                    f"the poison itself committed {took}"
                )
            elif normal is None:
                detail = f"blind: all {len(same_key)} later records{of_key} dead-lettered"
            else:
                detail = f"next normal record @{normal}{of_key} committed {took}"
            if reader == "scheduler":
                nxt = next((t for t in assign_ts if t > p.kafka_ts_ms), None)
                assign_s = None if nxt is None else (nxt - p.kafka_ts_ms) / 1000
                # Shown, not asserted: how soon a task is assigned depends on the fleet's idle cars too.
                detail += "; next ASSIGN " + ("never" if assign_s is None else f"after {assign_s:.1f} s")
            ok = seconds is not None and seconds < RECOVERY_LIMIT_S
            out.append(Outcome("recovery", f"{reader} serving again within 10 s: {p.name}", ok, detail))
    return out


def check_liveness(result: RunResult) -> list[Outcome]:
    crashed = {n: c for n, c in result.crashes.items() if c}
    detail = ", ".join(f"{n} {c}x" for n, c in crashed.items()) or "none"
    if crashed:
        first = next(iter(crashed))
        tail = [ln for ln in result.logs.get(first, "").splitlines() if "rror" in ln][-2:]
        detail += f"; {first}: {' | '.join(t[:300] for t in tail)}"
    behind = {g: n for g, n in result.caught_up.items() if n}
    return [
        Outcome("liveness", "no worker exited by itself", not crashed, detail),
        Outcome(
            "liveness",
            "every processor caught up after the run",
            not behind,
            ", ".join(f"{g} {n} behind" for g, n in behind.items()) or "all caught up",
        ),
        Outcome("liveness", "the simulator ran to its end", result.sim_exit == 0, f"exit {result.sim_exit}"),
    ]


def all_checks(settings: Settings, result: RunResult) -> list[Outcome]:
    stream = read_stream(settings, result)
    families: list[tuple[str, Callable[[], list[Outcome]]]] = [
        ("loss", lambda: check_loss(settings, result, stream)),
        ("assign", lambda: check_assignments(stream)),
        ("power", lambda: check_power_faults(settings, result)),
        ("alerts", lambda: check_alerts(settings, result, stream)),
        ("poison", lambda: check_poison(result, stream)),
        ("recovery", lambda: check_recovery(result, stream)),
        ("liveness", lambda: check_liveness(result)),
    ]
    out = []
    for family, check in families:
        try:
            out.extend(check())
        except Exception as exc:  # noqa: BLE001 - one broken check must not cost the whole run's verdicts
            out.append(Outcome(family, f"{family} checks ran", False, f"{type(exc).__name__}: {exc}"))
    return out


def render(result: RunResult, outcomes: list[Outcome], known: dict[str, str]) -> str:
    lines = [f"== chaos run ({result.scale.name}): faults injected", f"{'at s':>7}  {'fault':<48} outcome"]
    for ev in result.events:
        lines.append(f"{ev.at_s:>7.1f}  {ev.what:<48} {ev.outcome}")
    lines.append(f"kills: {dict(result.kills)}; exits by themselves: {dict(result.crashes)}")
    lines.append(f"exits of a worker started with the broker down (restarted): {dict(result.broker_exits)}")
    lines.append("")
    lines.append("== outcomes")
    for o in outcomes:
        verdict = "PASS" if o.ok else ("XFAIL" if o.name in known else "FAIL")
        lines.append(f"[{verdict}] {o.name}: {o.detail}")
    counts = Counter("PASS" if o.ok else ("XFAIL" if o.name in known else "FAIL") for o in outcomes)
    lines.append(f"== {dict(counts)}")
    return "\n".join(lines)
