"""Deciding the next commit while the previous transaction runs (`Shard.decide_ahead`): the
decision sees the running commit's states, and is dropped when that commit has to be redone."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg import sql

from benchmarks.replicator_run import drop_flows
from operators.decode_step import DecodeStep
from operators.events import ProgressMarker, RawMessage
from operators.native_decode import Run
from operators.settings import Settings
from operators.shard import Shard
from operators.shard_sink import ShardPartition
from operators.target_tables import TargetTables
from tests.integration.test_native_shard import TOPICS, message

pytestmark = pytest.mark.integration
TOPIC = TOPICS[0]


@pytest.fixture
def settings(pg_dsn, tmp_path):
    name = f"ahead{uuid.uuid4().hex[:10]}"
    # commits happen when the test says (commit_all), never on their own
    yield Settings(topics=TOPIC, pg_dsn=pg_dsn, state_dir=tmp_path, flow_id=name,
                   target_schema=name, shards=1, batch_size=100_000, batch_ms=600_000)
    drop_flows(pg_dsn, name)


@pytest.fixture
def written_ahead(monkeypatch) -> list[int]:
    """The seq of every commit that was written as it was decided ahead."""
    ahead: list = []  # the decisions themselves: a dropped one's id could be reused
    written: list[int] = []
    decide_ahead, write_decided = Shard.decide_ahead, Shard.write_decided

    def noting(shard: Shard, *args):
        decided = decide_ahead(shard, *args)
        if decided is not None:
            ahead.append(decided)
        return decided

    def counting(shard: Shard, decided):
        if any(decided is one for one in ahead):
            written.append(decided.batch.seq)
        return write_decided(shard, decided)

    monkeypatch.setattr(Shard, "decide_ahead", noting)
    monkeypatch.setattr(Shard, "write_decided", counting)
    return written


class Feed:
    """Messages of TOPIC decoded by the flow's decode step into one shard part."""

    def __init__(self, settings: Settings) -> None:
        self.step = DecodeStep(settings)
        self.part = ShardPartition(settings, 0)
        self.offset = 0

    def send(self, *changes: tuple[str, int, int]) -> list[type]:
        """(op, key, lsn) messages; returns the types of what reached the shard."""
        batch: list[RawMessage] = []
        for op, key, lsn in changes:
            batch.append(message(TOPIC, self.offset, op, key, lsn))
            self.offset += 1
        (_, items), = self.step([*batch, ProgressMarker(TOPIC, 0, self.offset)])
        self.part.write_batch([items])
        return [type(i) for i in items]


def table_rows(settings: Settings) -> dict[int, int]:
    with psycopg.connect(settings.pg_dsn) as conn:
        return dict(conn.execute(sql.SQL("SELECT id, qty FROM {}").format(
            sql.Identifier(settings.target_schema, "things"))).fetchall())


def audit(settings: Settings) -> tuple[list, list]:
    """(stale events' offsets, DLQ records' offsets and error types)."""
    with psycopg.connect(settings.pg_dsn) as conn:
        stale = conn.execute('SELECT "offset" FROM cdc.stale_events WHERE flow_id = %s '
                             'ORDER BY "offset"', (settings.flow_id,)).fetchall()
        dlq = conn.execute('SELECT "offset", error_type FROM cdc.dlq WHERE flow_id = %s '
                           'ORDER BY "offset"', (settings.flow_id,)).fetchall()
    return [o for (o,) in stale], dlq


def test_the_next_commit_is_decided_against_the_running_ones_states(settings, written_ahead):
    feed = Feed(settings)
    feed.send(("c", 0, 1))  # the topic's first message teaches the native plan
    feed.part.snapshot()
    assert feed.send(("u", 1, 50), ("u", 2, 50)) == [Run, ProgressMarker]
    committer = feed.part._committer
    committer.commit_all()  # in Postgres now, on the writer thread
    feed.send(("u", 1, 40), ("u", 2, 60))  # key 1: older than the running commit's
    committer.commit_all(wait=True)
    assert written_ahead == [3], "the third commit was decided while the second ran"
    assert table_rows(settings) == {0: 1, 1: 50, 2: 60}
    assert audit(settings) == ([3], [])
    feed.part.close()


def test_a_decision_made_ahead_is_dropped_when_the_running_commit_is_redone(settings,
                                                                           written_ahead):
    """The running commit has a row Postgres refuses: it is redone (that row to the DLQ), so
    the next commit must be decided again. Ahead, key 1's newer event looked stale against the
    refused one; it is not."""
    feed = Feed(settings)
    feed.send(("c", 0, 1))
    feed.part.snapshot()
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER TABLE {} ADD CHECK (qty < 1000)").format(
            sql.Identifier(settings.target_schema, "things")))
    assert feed.send(("u", 1, 5000), ("u", 2, 10)) == [Run, ProgressMarker]  # qty = lsn
    committer = feed.part._committer
    committer.commit_all()
    feed.send(("u", 1, 20), ("u", 2, 5))
    committer.commit_all(wait=True)
    assert table_rows(settings) == {0: 1, 1: 20, 2: 10}
    assert audit(settings) == ([4], [(1, "write_refused")])
    assert written_ahead == [], "decided again after the redo"
    feed.part.close()


def test_runs_of_a_table_new_to_the_process_are_decided_natively(settings, monkeypatch):
    """The first commit of a table this process has not resolved yet (a new table, or any
    table after a restart) creates or reads it first and then decides its runs in Rust: the
    Python path would make every event of the batch a Python object."""
    feed = Feed(settings)
    feed.send(("c", 0, 1))
    feed.part.snapshot()
    session = feed.part._committer.session
    session.tables = TargetTables(session.conn, settings.flow_id, settings.delete_mode)
    python_path: list[int] = []
    decide_events = Shard._decide_events

    def noting(shard: Shard, events, *args):
        python_path.append(len(events))
        return decide_events(shard, events, *args)

    monkeypatch.setattr(Shard, "_decide_events", noting)
    assert feed.send(("u", 1, 50), ("u", 2, 50)) == [Run, ProgressMarker]
    feed.part.snapshot()
    assert python_path == []
    assert table_rows(settings) == {0: 1, 1: 50, 2: 50}
    feed.part.close()
