"""The shard sink against real Postgres, in process: SQL guards, fencing, recovery, DLQ."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from unittest import mock

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from benchmarks.replicator_run import drop_flows
from operators import committer
from operators.events import (
    ChangeEvent,
    Column,
    DlqRecord,
    Op,
    ProgressMarker,
    TableName,
    TableSchema,
    TruncateEvent,
)
from operators.keys import state_key
from operators.lww import KeyState, RowWrite
from operators.pg_session import thread_session
from operators.pg_writer import ShardBatch, new_commit_id
from operators.settings import DeleteMode, Settings
from operators.shard_sink import ShardPartition
from operators.versions import pg_version
from tests.integration.shard_batches import write_in_batches
from tests.unit.test_lww import arrivals, oracle

pytestmark = pytest.mark.integration
TOPIC = "db.inventory.things"


@pytest.fixture
def settings(pg_dsn, tmp_path):
    name = f"sink{uuid.uuid4().hex[:10]}"
    yield Settings(topics=TOPIC, pg_dsn=pg_dsn, state_dir=tmp_path, flow_id=name,
                   target_schema=name, shards=1, batch_size=1000)
    drop_flows(pg_dsn, name)


class Things:
    """Events for table `<schema>.things (id bigint primary key, name text, qty smallint)`."""

    def __init__(self, schema: str) -> None:
        self.table = TableName(schema, "things")
        self.schema = TableSchema(self.table, (Column("id", "bigint"), Column("name", "text"),
                                               Column("qty", "smallint")), ("id",))
        self.offset = 0

    def event(self, key: int, lsn: int, op: Op = Op.UPSERT, **values) -> ChangeEvent:
        self.offset += 1
        row = None if op is Op.DELETE else {"id": key, "name": f"v{lsn}", "qty": 1, **values}
        return ChangeEvent(self.table, ("id",), (key,), op, pg_version(0, lsn), row, self.schema,
                           TOPIC, 0, self.offset)


    def truncate(self, lsn: int) -> TruncateEvent:
        self.offset += 1
        return TruncateEvent(self.table, pg_version(0, lsn), TOPIC, 0, self.offset)


def rows(dsn: str, table: TableName) -> dict[int, tuple]:
    with psycopg.connect(dsn) as conn:
        return {r[0]: r[1:] for r in conn.execute(
            f'SELECT id, name, qty FROM "{table.schema}"."{table.name}"')}


def test_lww_outcomes_stale_audit_and_offsets(settings):
    things = Things(settings.target_schema)
    shard = ShardPartition(settings, 0)
    shard.write_batch([[things.event(1, 10), things.event(1, 30), things.event(1, 20),
                       things.event(2, 10), things.event(2, 50, Op.DELETE), things.event(2, 40),
                       things.event(1, 30), ProgressMarker(TOPIC, 0, 100)]])
    shard.snapshot()
    assert rows(settings.pg_dsn, things.table) == {1: ("v30", 1)}
    with psycopg.connect(settings.pg_dsn) as conn:
        stale = conn.execute('SELECT "offset", key::text, version, applied_version, reason '
                             "FROM cdc.stale_events WHERE flow_id = %s ORDER BY 1",
                             (settings.flow_id,)).fetchall()
        offsets = conn.execute("SELECT shard, topic, partition, next_offset FROM cdc.offsets "
                               "WHERE flow_id = %s", (settings.flow_id,)).fetchall()
    assert stale == [(3, "[1]", "pg:after=0,lsn=20", "pg:after=0,lsn=30",
                      "older than the applied version"),
                     (6, "[2]", "pg:after=0,lsn=40", "pg:after=0,lsn=50",
                      "older than the delete that removed the row")]
    assert offsets == [(0, TOPIC, 0, 100)]


def test_sql_guard_holds_whatever_the_cache_says(settings):
    """Invariant 2 and 3 in SQL alone: writes that bypass RocksDB cannot move a row back."""
    things = Things(settings.target_schema)
    shard = ShardPartition(settings, 0)
    shard.write_batch([[things.event(1, 50), things.event(2, 50), things.event(3, 60, Op.DELETE)]])
    shard.snapshot()
    session = thread_session(settings)
    table = session.tables.for_event(things.event(1, 1))
    seqs = itertools.count(shard.shard._store.seq + 1)

    def write(event: ChangeEvent) -> None:
        batch = ShardBatch(shard=0, seq=next(seqs))  # bypasses the state store
        batch.writes = [(table, RowWrite(event, event.op, event.version, event.values))]
        session.writer.write([batch])

    write(things.event(1, 40, name="older"))  # lower version upsert
    write(things.event(2, 40, Op.DELETE))  # lower version delete
    write(things.event(3, 55, name="resurrected?"))  # older than the hard delete's tombstone
    assert rows(settings.pg_dsn, things.table) == {1: ("v50", 1), 2: ("v50", 1)}
    write(things.event(3, 70, name="newer"))
    assert rows(settings.pg_dsn, things.table)[3] == ("newer", 1)


def _scans(dsn: str, table: TableName) -> tuple[int, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_user_tables "
                            "WHERE schemaname = %s AND relname = %s",
                            (table.schema, table.name)).fetchone()


def _flush_statistics(conn: psycopg.Connection) -> None:
    """Publish the session's table statistics now (a backend does so before it answers)."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")


def test_hard_deletes_probe_the_key_instead_of_scanning_the_table(settings):
    """A few deletes in a large table go by its primary key: the planner, which has no
    statistics for the stage, would otherwise hash the whole table on every commit."""
    things = Things(settings.target_schema)
    shard = ShardPartition(settings, 0)
    shard.write_batch([[things.event(1, 10)]])
    shard.snapshot()
    session = thread_session(settings)
    ident = f'"{things.table.schema}"."{things.table.name}"'
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {ident} (id, name, qty, _cdc_version) "
                     "SELECT n, 'bulk', 1, %s FROM generate_series(2, 40000) n",
                     (pg_version(0, 5),))
        conn.execute(f"ANALYZE {ident}")
        _flush_statistics(conn)
    _flush_statistics(session.conn)
    before = _scans(settings.pg_dsn, things.table)
    shard.write_batch([[things.event(k, 20, Op.DELETE) for k in range(100, 105)]])
    shard.snapshot()
    _flush_statistics(session.conn)
    seq_scans, index_scans = _scans(settings.pg_dsn, things.table)
    assert seq_scans == before[0], "the delete scanned the whole table"
    assert index_scans > before[1]
    assert not {100, 101, 102, 103, 104} & set(rows(settings.pg_dsn, things.table))


def test_a_commits_statements_go_to_postgres_in_one_round_trip(settings):
    """Once the stages are filled, a commit's guarded statements (upserts, hard deletes with
    their tombstones), its offsets and its commit sequence go in one round trip: after every
    round trip the writer thread waits for the interpreter lock, which the worker holds."""
    things = Things(settings.target_schema)
    shard = ShardPartition(settings, 0)
    shard.write_batch([[things.event(1, 10), things.event(2, 10), things.event(3, 10, Op.DELETE),
                        ProgressMarker(TOPIC, 0, 4)]])
    shard.snapshot()  # the table and both stages exist from here on
    conn = thread_session(settings).conn
    sent: list[object] = []
    execute = psycopg.Connection.execute

    def counting(self, query, *args, **kwargs):
        if self is conn:
            sent.append(query)
        return execute(self, query, *args, **kwargs)

    with mock.patch.object(psycopg.Connection, "execute", counting):
        shard.write_batch([[things.event(1, 20), things.event(2, 20, Op.DELETE),
                            ProgressMarker(TOPIC, 0, 6)]])
        shard.snapshot()
    assert len(sent) == 1, f"{len(sent)} round trips besides COPY"
    assert rows(settings.pg_dsn, things.table) == {1: ("v20", 1)}
    assert _shard_offsets(settings) == {0: 6}


def test_truncate_clears_rows_and_fences_older_events(settings):
    things = Things(settings.target_schema)
    shard = ShardPartition(settings, 0)
    shard.write_batch([[things.event(1, 10), things.event(2, 30),
                       things.truncate(20),
                       things.event(3, 15), things.event(4, 25)]])
    shard.snapshot()
    assert rows(settings.pg_dsn, things.table) == {2: ("v30", 1), 4: ("v25", 1)}
    with psycopg.connect(settings.pg_dsn) as conn:
        reasons = conn.execute("SELECT reason FROM cdc.stale_events WHERE flow_id = %s",
                               (settings.flow_id,)).fetchall()
    assert reasons == [("at or below a table truncate",)]


def test_soft_delete_mode_keeps_a_flagged_row(settings):
    soft = settings.model_copy(update={"delete_mode": DeleteMode.SOFT})
    things = Things(soft.target_schema)
    shard = ShardPartition(soft, 0)
    # key 1's delete carries the same columns as key 3's upsert: two groups, one transaction
    shard.write_batch([[things.event(1, 10), things.event(1, 20, Op.DELETE), things.event(1, 15),
                       things.event(2, 5, Op.DELETE), things.event(3, 10)]])
    shard.snapshot()
    with psycopg.connect(soft.pg_dsn) as conn:
        got = conn.execute(f'SELECT id, name, _cdc_deleted FROM "{soft.target_schema}".things '
                           "ORDER BY id").fetchall()
    assert got == [(1, "v10", True), (2, None, True), (3, "v10", False)]
    shard.write_batch([[things.event(1, 30, name="back")]])
    shard.snapshot()
    assert rows(soft.pg_dsn, things.table)[1] == ("back", 1)


def test_refused_row_goes_to_dlq_and_the_rest_lands(settings):
    things = Things(settings.target_schema)
    shard = ShardPartition(settings, 0)
    # qty 100000 is out of smallint range: Postgres refuses that one row
    events = [things.event(k, 10, qty=100_000 if k == 6 else 1) for k in range(1, 9)]
    shard.write_batch([[*events, DlqRecord(TOPIC, 0, 99, b"k", b"{", "malformed_json", "bad")]])
    shard.snapshot()
    assert set(rows(settings.pg_dsn, things.table)) == {1, 2, 3, 4, 5, 7, 8}
    with psycopg.connect(settings.pg_dsn) as conn:
        dlq = conn.execute('SELECT "offset", error_type, error FROM cdc.dlq WHERE flow_id = %s '
                           'ORDER BY "offset"', (settings.flow_id,)).fetchall()
    assert [(o, t) for o, t, _ in dlq] == [(6, "write_refused"), (99, "malformed_json")]
    assert "smallint" in dlq[0][2]


def test_messages_read_again_after_a_replay_keep_their_first_audit_rows(settings):
    """A replay (offsets moved back) reads stale and DLQ messages a second time: their audit
    rows are kept as first written, and the commit goes through instead of being refused."""
    things = Things(settings.target_schema)
    batch = [things.event(1, 30), things.event(1, 20),
             DlqRecord(TOPIC, 0, 3, b"k", b"{", "malformed_json", "bad"),
             ProgressMarker(TOPIC, 0, 4)]
    shard = ShardPartition(settings, 0)
    shard.write_batch([batch])
    shard.snapshot()
    shard.close()
    with psycopg.connect(settings.pg_dsn) as conn:
        conn.execute("DELETE FROM cdc.offsets WHERE flow_id = %s", (settings.flow_id,))
    shard = ShardPartition(settings, 0)
    shard.write_batch([batch])
    shard.snapshot()
    with psycopg.connect(settings.pg_dsn) as conn:
        audit = conn.execute(
            """SELECT 'stale', "offset", reason FROM cdc.stale_events WHERE flow_id = %(f)s
               UNION ALL SELECT 'dlq', "offset", error_type FROM cdc.dlq WHERE flow_id = %(f)s
               ORDER BY 1, 2""", {"f": settings.flow_id}).fetchall()
        offset = conn.execute("SELECT next_offset FROM cdc.offsets WHERE flow_id = %s",
                              (settings.flow_id,)).fetchone()
    assert audit == [("dlq", 3, "malformed_json"),
                     ("stale", 2, "older than the applied version")]
    assert offset == (4,)
    assert rows(settings.pg_dsn, things.table) == {1: ("v30", 1)}


class FakeClock:
    """The committer's clock, moved by the test: its batching rules are judged at exact ages,
    however slowly the machine runs the test."""

    perf_counter = staticmethod(time.perf_counter)  # durations for the metrics: real time

    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(committer, "time", fake)
    return fake


def _wait_for_offset(settings: Settings, expected: int, why: str) -> None:
    """Until the shard's committed offset of partition 0 reaches `expected` (commits run on the
    committer's background thread); the limit only bounds a failing run."""
    deadline = time.monotonic() + 60
    while True:
        with psycopg.connect(settings.pg_dsn) as conn:
            row = conn.execute("SELECT next_offset FROM cdc.offsets WHERE flow_id = %s"
                               " AND partition = 0",
                               (settings.flow_id,)).fetchone()
        if row and row[0] >= expected:
            return
        assert time.monotonic() < deadline, f"{why}: committed {row}, expected {expected}"
        time.sleep(0.05)


def test_markers_after_a_burst_commit_promptly_then_idle_ones_wait(pg_dsn, tmp_path, clock):
    """The offsets that close a burst (markers past messages with nothing to apply) commit after
    batch_ms; markers alone long after the last units wait MARKER_ONLY_FLUSH_S."""
    name = f"sink{uuid.uuid4().hex[:10]}"
    settings = Settings(topics=TOPIC, pg_dsn=pg_dsn, state_dir=tmp_path, flow_id=name,
                        target_schema=name, shards=1, batch_ms=100)
    things = Things(name)
    shard = ShardPartition(settings, 0)
    # just past each limit: `now - since` of two floats may round below the limit itself
    batch_s, flush_s = settings.batch_ms / 1000 * 1.01, committer.MARKER_ONLY_FLUSH_S
    try:
        shard.write_batch([[things.event(1, 10), ProgressMarker(TOPIC, 0, 2)]])
        clock.now += batch_s
        shard.write_batch([])  # the unit is batch_ms old: its commit starts
        assert shard.shard.pending.since is None, "the unit waited past batch_ms"
        _wait_for_offset(settings, 2, "the unit's commit did not land")
        for end in (50, 60):  # e.g. tombstones after the burst, then another partition's end
            shard.write_batch([[ProgressMarker(TOPIC, 0, end)]])
            clock.now += batch_s
            shard.write_batch([])
            assert shard.shard.pending.since is None, "the burst's tail was held back"
            _wait_for_offset(settings, end, "the burst's tail did not land")
        clock.now += flush_s  # the burst is over
        shard.write_batch([[ProgressMarker(TOPIC, 0, 80)]])  # e.g. heartbeats
        clock.now += batch_s
        shard.write_batch([])
        assert shard.shard.pending.markers == {(TOPIC, 0): 80}, "markers alone went early"
        clock.now += flush_s - batch_s
        shard.write_batch([])  # the markers are MARKER_ONLY_FLUSH_S old
        assert shard.shard.pending.since is None, "markers alone waited past their limit"
        _wait_for_offset(settings, 80, "markers alone never landed")
    finally:
        shard.close()
        drop_flows(pg_dsn, name)


def test_units_commit_at_once_when_the_source_has_caught_up_with_every_partition(pg_dsn,
                                                                               tmp_path, clock):
    """With every partition's last marker `caught_up`, there is nothing to batch the units
    with: they commit without waiting out batch_ms (the clock does not move here); one
    partition still being read holds them to the usual rules."""
    name = f"sink{uuid.uuid4().hex[:10]}"
    settings = Settings(topics=TOPIC, pg_dsn=pg_dsn, state_dir=tmp_path, flow_id=name,
                        target_schema=name, shards=1, batch_ms=60_000)
    things = Things(name)
    shard = ShardPartition(settings, 0)
    try:
        shard.write_batch([[things.event(1, 10), ProgressMarker(TOPIC, 0, 2, caught_up=True),
                            ProgressMarker(TOPIC, 1, 7, caught_up=False)]])
        assert shard.shard.pending.units, "committed with partition 1 unread"
        shard.write_batch([[ProgressMarker(TOPIC, 1, 7, caught_up=True)]])
        _wait_for_offset(settings, 2, "caught up, yet the units waited")
        shard.write_batch([[things.event(2, 20), ProgressMarker(TOPIC, 0, 3, caught_up=False)]])
        assert shard.shard.pending.units, "committed while partition 0 is read"
    finally:
        shard.close()
        drop_flows(pg_dsn, name)


def test_the_end_of_a_backlog_commits_every_shards_offsets_at_once(pg_dsn, tmp_path, clock):
    """Every shard gets the markers that say the source has caught up, one after another in
    the same step: one commit, once the last shard has them, takes every shard's final offsets
    (none waits out batch_ms: the clock does not move here). A marker taken for that commit and
    sent again is nothing left to commit; offsets that move on right after data commit at once
    too."""
    name = f"sink{uuid.uuid4().hex[:10]}"
    settings = Settings(topics=TOPIC, pg_dsn=pg_dsn, state_dir=tmp_path, flow_id=name,
                        target_schema=name, shards=2, batch_ms=60_000)
    things = Things(name)
    first, second = ShardPartition(settings, 0), ShardPartition(settings, 1)

    def caught_up(offset: int) -> list[ProgressMarker]:
        return [ProgressMarker(TOPIC, 0, offset, caught_up=True)]

    def offsets_reach(offset: int) -> None:
        deadline = time.monotonic() + 60
        while _shard_offsets(settings) != {0: offset, 1: offset}:
            assert time.monotonic() < deadline, f"offsets held back: {_shard_offsets(settings)}"
            time.sleep(0.05)

    try:
        first.write_batch([[things.event(1, 10), *caught_up(9)]])
        second.write_batch([caught_up(9)])  # none of partition 0's last messages was for it
        offsets_reach(9)
        with psycopg.connect(pg_dsn) as conn:  # now() is the transaction's start
            assert conn.execute("SELECT count(DISTINCT committed_at) FROM cdc.shard_commits "
                                "WHERE flow_id = %s", (name,)).fetchone() == (1,)
        for part in (first, second):
            part.write_batch([caught_up(9)])
            assert part.shard.pending.since is None, "a marker already taken is pending again"
        for part in (first, second):  # e.g. tombstones after the last change
            part.write_batch([caught_up(12)])
        offsets_reach(12)
    finally:
        first.close()
        second.close()
        drop_flows(pg_dsn, name)


def _shard_offsets(settings: Settings) -> dict[int, int]:
    with psycopg.connect(settings.pg_dsn) as conn:
        return dict(conn.execute("SELECT shard, next_offset FROM cdc.offsets WHERE flow_id = %s "
                                 "AND partition = 0", (settings.flow_id,)).fetchall())


def test_state_one_commit_ahead_is_rolled_back(settings):
    """Invariant 5: a RocksDB commit whose Postgres transaction never happened is undone."""
    things = Things(settings.target_schema)
    shard = ShardPartition(settings, 0)
    shard.write_batch([[things.event(1, 10)]])
    shard.snapshot()
    key = state_key(things.table, (1,))
    store = shard.shard._store
    store.commit(store.seq + 1, new_commit_id(), {key: KeyState(pg_version(0, 99), True)}, {},
                 dict(zip([key], store.get_many([key]), strict=True)))
    shard.close()  # as if the process died before its Postgres commit
    reopened = ShardPartition(settings, 0)
    assert reopened.shard._store.get_many([key]) == [KeyState(pg_version(0, 10), False)]
    reopened.write_batch([[things.event(1, 20)]])  # would be stale against the undone state
    reopened.snapshot()
    assert rows(settings.pg_dsn, things.table) == {1: ("v20", 1)}


def test_lost_state_is_rebuilt_from_postgres(settings, tmp_path):
    things = Things(settings.target_schema)
    shard = ShardPartition(settings, 0)
    shard.write_batch([[things.event(1, 10), things.event(2, 30, Op.DELETE)]])
    shard.close()
    moved = settings.model_copy(update={"state_dir": tmp_path / "empty"})
    rebuilt = ShardPartition(moved, 0)
    keys = [state_key(things.table, (1,)), state_key(things.table, (2,))]
    assert rebuilt.shard._store.get_many(keys) == [KeyState(pg_version(0, 10), False),
                                                   KeyState(pg_version(0, 30), True)]


# No shrinking: each example costs Postgres round trips, and shrinking a failure could run for
# many minutes; the failing example is printed as found (the pure LWW property shrinks).
@hypothesis_settings(max_examples=120, deadline=None,
                     phases=[Phase.explicit, Phase.reuse, Phase.generate],
                     suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=arrivals(), restarts=st.lists(st.sampled_from(["keep", "reopen", "lose state"]),
                                          min_size=5, max_size=5))
def test_property_postgres_equals_the_max_version_oracle(pg_dsn, tmp_path, case, restarts):
    """Any interleaving of duplicates, reorderings and deletes, cut into batches, with the shard
    reopened (or its state lost) between batches: the table and the audit equal the oracle."""
    sequence, cuts = case
    name = f"prop{uuid.uuid4().hex[:10]}"
    config = Settings(topics=TOPIC, pg_dsn=pg_dsn, state_dir=tmp_path / name, flow_id=name,
                      target_schema=name, shards=1)
    things = Things(name)
    try:
        bounds = [0, *cuts, len(sequence)]
        write_in_batches(config, [[things.event(k, v, Op.DELETE if d else Op.UPSERT, qty=x)
                                   for k, v, d, x in sequence[start:end]]
                                  for start, end in zip(bounds, bounds[1:], strict=False)],
                         restarts)
        expected_rows, expected_stale, _ = oracle(sequence)
        got = {k: qty for k, (_, qty) in rows(pg_dsn, things.table).items()}
        with psycopg.connect(pg_dsn) as conn:
            stale = conn.execute("SELECT count(*) FROM cdc.stale_events WHERE flow_id = %s",
                                 (name,)).fetchone()[0]
        assert (got, stale) == (expected_rows, expected_stale)
    finally:
        drop_flows(pg_dsn, name)


def test_closing_a_flows_last_shard_partition_closes_its_writer_and_session(settings):
    """A thread that opens shards of many flows in turn (a test run, a restarted worker) keeps
    no writer thread or Postgres connection for the flows it closed."""
    def writers() -> int:
        return sum(t.name.startswith("pg-commit") for t in threading.enumerate())

    before = writers()
    sessions = []
    for i in range(3):
        flow = settings.model_copy(update={"flow_id": f"{settings.flow_id}_{i}",
                                           "state_dir": settings.state_dir / str(i)})
        part = ShardPartition(flow, 0)
        part.write_batch([[ProgressMarker(TOPIC, 0, 1)]])
        part.snapshot()
        sessions.append(part._committer.session)
        part.close()
        drop_flows(settings.pg_dsn, flow.flow_id)
    assert writers() == before
    assert all(session.conn.closed for session in sessions)
