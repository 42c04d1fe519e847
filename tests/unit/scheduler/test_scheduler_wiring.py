"""The scheduler worker's faust-free pieces: journalled persistence, envelopes, config from the env,
the region peek; and the duplicate hand-off / request guards the partitioned wiring relies on."""

from __future__ import annotations

import pytest
from test_scheduler_support import MIN, T0, H, S, capacity, cfg, power_state, req, tel

from processors.scheduler import Scheduler
from processors.scheduler.exceptions import InvalidRecord
from processors.scheduler.wiring_runtime import (
    HANDOFF,
    TELEMETRY,
    TELEMETRY_BATCH,
    config_from_env,
    knobs_from_env,
    local_pools_of,
    pack,
    pack_batch,
    pack_tick,
    partition_of,
    peek_region,
    tick_ms,
    unpack,
    unpack_batch,
)
from processors.scheduler.wiring_state import PartitionState, decode_chunk, encode_chunks, restore
from streams.serde import AvroSerde


class Changelog:
    """A table dict plus the ordered changelog records, to cut anywhere like a SIGKILL would."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.log: list[tuple[int, bytes, bytes | None]] = []

    def send(self, partition: int, key: bytes, value: bytes | None) -> None:
        self.log.append((partition, key, value))

    def replay(self, upto: int) -> dict[bytes, bytes]:
        state: dict[bytes, bytes] = {}
        for _, key, value in self.log[:upto]:
            if value is None:
                state.pop(key, None)
            else:
                state[key] = value
        return state


def test_journal_chunks_round_trip() -> None:
    entries = [(b"0/n/a", b"x" * 300), (b"0/t/b", None), (b"0/n/c", b"{}")]
    chunks = encode_chunks(7, entries, limit=256)
    assert len(chunks) == 2
    decoded = [decode_chunk(c) for c in chunks]
    assert {seq for seq, _ in decoded} == {7}
    assert [e for _, es in decoded for e in es] == entries


def test_a_batch_cut_anywhere_restores_to_a_batch_boundary() -> None:
    """Every prefix of the changelog restores either the state before or after each batch."""
    s = Scheduler(cfg())
    state = PartitionState(3, s)
    log = Changelog()
    boundaries = [len(log.log)]
    snapshots = [s.to_dict()]
    batches = [
        [lambda i=i: s.on_telemetry(tel(f"v{i}", T0 + i)) for i in range(4)],
        [lambda: s.on_request(req("t1", T0 + 10)), lambda: s.on_request(req("t2", T0 + 11))],
        [lambda: s.on_telemetry(tel("v0", T0 + 20 * S, gear="D"))],  # preempts, requeues, reassigns
        [lambda: s.on_tick(T0 + 30 * MIN)],
    ]
    for batch in batches:
        for call in batch:
            call()
        state.persist(log.data, log.send)
        boundaries.append(len(log.log))
        snapshots.append(s.to_dict())
    assert log.replay(len(log.log)) == log.data
    for cut in range(len(log.log) + 1):
        restored = restore(3, log.replay(cut).items())
        rebuilt = Scheduler.from_parts(
            restored.nodes.values(), restored.tasks.values(), restored.clock, cfg()
        )
        rebuilt.check_invariants()
        k = max(i for i, b in enumerate(boundaries) if b <= cut)
        if rebuilt.to_dict() != snapshots[k]:  # past the journal header: the batch is complete
            assert rebuilt.to_dict() == snapshots[k + 1], f"cut {cut} restored neither boundary"


def test_a_partition_with_sites_restores_them_from_the_table() -> None:
    """Sites are kept with the nodes (key ``site:<id>``); a restore from the changelog brings them back
    with their running work and their open episode, cut at any record."""
    s = Scheduler(cfg())
    state, log = PartitionState(0, s), Changelog()
    s.on_site_capacity(capacity("dc1", T0))
    s.on_request(req("long", T0 + S, est_duration_s=7200))
    state.persist(log.data, log.send)
    s.on_site_power(power_state("dc1", T0 + MIN, "ISLANDED_BATTERY"))
    state.persist(log.data, log.send)
    restored = restore(0, log.data.items())
    rebuilt = Scheduler.from_parts(restored.nodes.values(), restored.tasks.values(), restored.clock, cfg())
    rebuilt.check_invariants()
    assert rebuilt.sites == s.sites and rebuilt.sites["dc1"].running == ["long"]
    assert rebuilt.sites["dc1"].episode is not None
    for cut in range(len(log.log) + 1):
        part = restore(0, log.replay(cut).items())
        Scheduler.from_parts(part.nodes.values(), part.tasks.values(), part.clock, cfg()).check_invariants()


def test_restore_ignores_other_partitions() -> None:
    log = Changelog()
    for p in (1, 2):
        s = Scheduler(cfg())
        s.on_telemetry(tel(f"v{p}", T0))
        PartitionState(p, s).persist(log.data, log.send)
    restored = restore(2, log.data.items())
    assert list(restored.nodes) == ["v2"]


def test_a_redelivered_request_does_not_revive_a_task_that_moved_on() -> None:
    a = Scheduler(cfg(pools=("a", "b"), local_pools=frozenset({"a"}), spill_after_s=1))
    a.on_request(req("t", T0, region=None), pool="a")
    hand = [o for o in a.on_tick(T0 + 2 * S) if o.topic == "scheduler.handoff"]
    assert hand and a.tasks["t"].state == "MOVED"
    assert a.on_request(req("t", T0, region=None), pool="a") == []
    assert a.queue("a") == []


def test_a_stale_handoff_copy_does_not_revive_a_task_that_left_again() -> None:
    a = Scheduler(cfg(pools=("a", "b", "c"), local_pools=frozenset({"a"}), spill_after_s=1))
    a.on_request(req("t", T0, region=None), pool="a")
    task = [o for o in a.on_tick(T0 + 2 * S) if o.topic == "scheduler.handoff"][0].value
    assert task["pool"] == "b" and task["hops"] == 1
    b = Scheduler(cfg(pools=("a", "b", "c"), local_pools=frozenset({"b"}), spill_after_s=1))
    b.on_handoff(task, now=T0 + 2 * S)
    assert b.queue("b") == ["t"]
    moved = [o for o in b.on_tick(T0 + 10 * S) if o.topic == "scheduler.handoff"]
    assert moved and b.tasks["t"].state == "MOVED" and b.tasks["t"].hops == 2
    assert b.on_handoff(task, now=T0 + 11 * S) == []  # the same hand-off delivered again
    assert b.queue("b") == []
    b.on_handoff({**task, "hops": 3}, now=T0 + 12 * S)  # coming round the ring again is fine
    assert b.queue("b") == ["t"]
    b.check_invariants()


def test_envelopes_and_ticks() -> None:
    env = unpack(pack(TELEMETRY, b"body", 4, 123))
    assert (env.kind, env.payload, env.source_partition, env.source_offset) == (TELEMETRY, b"body", 4, 123)
    assert unpack(pack(HANDOFF, b"{}")).source_offset == -1
    tick = unpack(pack_tick(T0))
    assert tick_ms(tick.payload) == T0
    with pytest.raises(ValueError):
        unpack(b"T")


def test_peek_region_matches_the_full_decode() -> None:
    serde = AvroSerde()
    for region in ("us-west", "", "é-region-" * 20):
        data = serde.encode("fleet.telemetry.v1", tel("VIN-ü", T0, region=region, hw="HW5"))
        assert peek_region(data[10:]) == region


def test_config_and_knobs_from_env() -> None:
    env = {
        "CARNIVAL_SCHEDULER_CONFIG": '{"lease_s": 60}',
        "CARNIVAL_SCHEDULER_CLAIM_TIMEOUT_S": "5",
        "CARNIVAL_SCHEDULER_POOLS": "us-west, us-east",
        "CARNIVAL_SCHEDULER_RANKING": "random",
        "CARNIVAL_SCHEDULER_TICK_S": "0.5",
    }
    c = config_from_env(env)
    assert (c.lease_s, c.claim_timeout_s, c.pools, c.ranking) == (60, 5, ("us-west", "us-east"), "random")
    assert knobs_from_env(env).tick_s == 0.5
    with pytest.raises(ValueError, match="unknown scheduler setting"):
        config_from_env({"CARNIVAL_SCHEDULER_LEASE": "5"})


def test_local_pools_partition_the_configured_pools() -> None:
    c = cfg(pools=tuple(f"r{i}" for i in range(20)))
    owned = [local_pools_of(c, p, 6) for p in range(6)]
    assert sorted(x for o in owned for x in (o or ())) == sorted(c.pools)
    assert all(partition_of(x, 6) == p for p, o in enumerate(owned) for x in (o or ()))
    assert local_pools_of(cfg(), 0, 6) is None
    assert partition_of("us-west", 6) == partition_of("us-west", 6)


# ------------------------------------------------------------------ tick clock (event time, SPEC)

DAY = 24 * 60 * MIN
WALL = T0 + 500 * DAY  # the wall clock during a simulated or replayed past: far later than event time


def test_ticks_during_a_simulated_past_do_not_jump_to_the_wall_clock() -> None:
    """The main job's defect: wall-clock ticks used to expire every lease of a simulated fleet."""
    state = PartitionState(0, Scheduler(cfg(lease_s=90)))
    assert state.tick_time(WALL) == 0  # no record yet: nothing to run, and no jump
    state.scheduler.on_telemetry(tel("V", T0), arrival_ms=WALL)
    state.observe_record(WALL)
    state.scheduler.on_tick(state.tick_time(WALL + 500))
    assert state.scheduler.clock == T0 + 500
    assert state.scheduler.nodes["V"].eligible, state.scheduler.nodes["V"].reason


def test_a_quiet_partition_runs_on_at_wall_rate_from_its_newest_record() -> None:
    state = PartitionState(0, Scheduler(cfg(lease_s=90)))
    state.scheduler.on_telemetry(tel("V", T0), arrival_ms=WALL)
    state.observe_record(WALL)
    for second in range(1, 121):  # two minutes of ticks, no records
        state.scheduler.on_tick(state.tick_time(WALL + second * S))
    # Exactly two minutes of event time, not a sum of tick offsets: ticks never feed the anchor.
    assert state.scheduler.clock == T0 + 2 * MIN
    assert state.scheduler.nodes["V"].reason == "LEASE_EXPIRED"


def test_accelerated_event_time_outruns_the_ticks() -> None:
    """At 240x, records move the clock; a tick between them never sets it back or ahead of them."""
    state = PartitionState(0, Scheduler(cfg(lease_s=90)))
    for i in range(10):
        ts, arrival = T0 + i * 60 * S, WALL + i * 250  # a simulated minute every 250 wall ms
        state.scheduler.on_telemetry(tel("V", ts), arrival_ms=arrival)
        state.observe_record(arrival)
        state.scheduler.on_tick(state.tick_time(arrival + 100))
        assert state.scheduler.clock == ts + 100
    assert state.scheduler.nodes["V"].eligible


def test_an_older_record_does_not_move_the_tick_anchor() -> None:
    state = PartitionState(0, Scheduler(cfg()))
    state.scheduler.on_telemetry(tel("A", T0), arrival_ms=WALL)
    state.observe_record(WALL)
    state.scheduler.on_telemetry(tel("B", T0 - 10 * MIN), arrival_ms=WALL + 5 * S)  # a late car
    state.observe_record(WALL + 5 * S)
    assert state.tick_time(WALL + 10 * S) == T0 + 10 * S


def test_the_tick_anchor_survives_a_restore() -> None:
    state = PartitionState(2, Scheduler(cfg()))
    log = Changelog()
    state.scheduler.on_telemetry(tel("V", T0), arrival_ms=WALL)
    state.observe_record(WALL)
    state.persist(log.data, log.send)
    again, restored = PartitionState.rebuild(2, log.replay(len(log.log)).items(), cfg())
    assert restored.anchor == (T0, WALL, WALL)  # newest event, its arrival, latest wall time seen
    assert again.tick_time(WALL + 30 * S) == T0 + 30 * S


def test_a_worker_outage_is_not_fleet_silence() -> None:
    """No pool record for an hour = no worker ran: the first tick after it must not jump the clock an
    hour (every lease and claim would expire before the backlog of telemetry is even routed)."""
    state = PartitionState(0, Scheduler(cfg(lease_s=90)))
    state.scheduler.on_telemetry(tel("V", T0), arrival_ms=T0)
    state.observe_record(T0)
    state.scheduler.on_tick(state.tick_time(T0 + 10 * S))
    assert state.scheduler.clock == T0 + 10 * S
    back = T0 + H  # the worker restarts an hour later
    state.scheduler.on_tick(state.tick_time(back))
    assert state.scheduler.clock == T0 + 10 * S  # the outage is left out
    assert state.scheduler.nodes["V"].eligible
    for second in range(1, 101):  # the restarted worker ticks every second; the fleet stays silent
        state.scheduler.on_tick(state.tick_time(back + second * S))
    assert state.scheduler.clock == T0 + 110 * S
    assert state.scheduler.nodes["V"].reason == "LEASE_EXPIRED"


def test_live_telemetry_is_accepted_while_the_clock_lags_behind_a_replayed_backlog() -> None:
    s = Scheduler(cfg(max_future_skew_s=300))
    s.on_telemetry(tel("OLD", T0), arrival_ms=T0 + 2 * H)  # an old record, arriving two hours later
    s.on_telemetry(tel("LIVE", T0 + 2 * H), arrival_ms=T0 + 2 * H)  # live: no later than its arrival
    assert s.clock == T0 + 2 * H
    with pytest.raises(InvalidRecord, match="ahead"):
        s.on_telemetry(tel("BROKEN", T0 + 5 * H), arrival_ms=T0 + 2 * H + S)  # a broken car clock
    with pytest.raises(InvalidRecord, match="ahead"):  # without an arrival time: the clock alone
        s.on_telemetry(tel("Y", T0 + 9 * H))


def test_telemetry_packs_keep_order_and_sources() -> None:
    items = [(b"body-a", 3, 10), (b"", 3, 11), (b"body-c" * 50, 5, 7)]
    env = unpack(pack_batch(items))
    assert env.kind == TELEMETRY_BATCH
    subs = unpack_batch(env.payload)
    assert [(e.kind, e.payload, e.source_partition, e.source_offset) for e in subs] == [
        (TELEMETRY, body, part, off) for body, part, off in items
    ]
    with pytest.raises(ValueError, match="truncated"):
        unpack_batch(env.payload[:-1])


def test_hot_writes_restore_the_node_exactly_and_replays_decide_the_same() -> None:
    """Ordinary telemetry (same eligibility, SoC creeping up) is written as hot records only; a worker
    cut anywhere in that changelog restores a batch boundary field for field (leases, readings, the
    session's notes), keeps the invariants, and decides the next inputs exactly as the original."""
    config = cfg(lease_s=90)
    s = Scheduler(config)
    state = PartitionState(0, s)
    log = Changelog()
    vins = [f"v{i}" for i in range(3)]
    for i, vin in enumerate(vins):
        s.on_telemetry(tel(vin, T0 + i, minutes_to_full=120.0))
    s.on_request(req("t1", T0 + 10))
    state.persist(log.data, log.send)
    boundaries, snapshots = [len(log.log)], [s.to_dict()]
    for k in range(1, 6):  # every car every 15 s, SoC +0.1 each time: nothing that matters moves
        for i, vin in enumerate(vins):
            creep = {"soc_pct": 80.0 + k / 10, "minutes_to_full": 120.0 - k / 4}
            s.on_telemetry(tel(vin, T0 + k * 15 * S + i, **creep))
        state.persist(log.data, log.send)
        boundaries.append(len(log.log))
        snapshots.append(s.to_dict())
    s.on_telemetry(tel("v1", T0 + 6 * 15 * S, gear="D"))  # a cold change: written in full
    state.persist(log.data, log.send)
    boundaries.append(len(log.log))
    snapshots.append(s.to_dict())

    later = log.log[boundaries[0] : boundaries[5]]
    assert {key.split(b"/")[1] for _, key, _ in later} == {b"h", b"j0", b"jh"}, "hot only"
    assert (0, b"0/n/v1", log.data[b"0/n/v1"]) in log.log[boundaries[5] :]
    assert max(len(v) for _, k, v in later if k.startswith(b"0/h/") and v) < 400

    for cut in range(boundaries[0], len(log.log) + 1):
        restored = restore(0, log.replay(cut).items())
        nodes, tasks = restored.nodes.values(), restored.tasks.values()
        rebuilt = Scheduler.from_parts(nodes, tasks, restored.clock, config)
        rebuilt.check_invariants()
        k = max(i for i, b in enumerate(boundaries) if b <= cut)
        if rebuilt.to_dict() != snapshots[k]:
            assert rebuilt.to_dict() == snapshots[k + 1], f"cut {cut} restored neither boundary"

    again, _ = PartitionState.rebuild(0, log.data.items(), config)
    assert again.scheduler.to_dict() == s.to_dict()
    assert again.scheduler.nodes["v0"].lease_ts == T0 + 5 * 15 * S
    assert again.scheduler.tasks["t1"].vin == s.tasks["t1"].vin is not None
    # The same inputs next: a request, then a tick past v2's lease (it expires; v0 keeps its claim).
    for sched in (s, again.scheduler):
        sched.on_telemetry(tel("v0", T0 + 7 * 15 * S, soc_pct=81.0))
    assert again.scheduler.on_request(req("t2", T0 + 7 * 15 * S + 1)) == s.on_request(
        req("t2", T0 + 7 * 15 * S + 1)
    )
    lapse = T0 + 5 * 15 * S + 91 * S
    assert again.scheduler.on_tick(lapse) == s.on_tick(lapse)
    assert again.scheduler.to_dict() == s.to_dict()
    assert not s.nodes["v2"].eligible and s.nodes["v2"].reason == "LEASE_EXPIRED"
