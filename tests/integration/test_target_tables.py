"""Target tables that exist before the flow: registered for a state rebuild, and their primary
key checked against the message key on every path."""

from __future__ import annotations

import pickle
import uuid

import psycopg
import pytest

from benchmarks.replicator_run import drop_flows
from operators import target_tables
from operators.events import Column, ProgressMarker, TableSchema
from operators.keys import state_key
from operators.pg_session import thread_session
from operators.rebuild import committed_states
from operators.settings import Settings
from operators.shard_sink import ShardPartition
from operators.versions import pg_version
from tests.integration.test_shard_sink import TOPIC, Things

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(pg_dsn, tmp_path):
    name = f"tt{uuid.uuid4().hex[:10]}"
    yield Settings(topics=TOPIC, pg_dsn=pg_dsn, state_dir=tmp_path, flow_id=name,
                   target_schema=name, shards=1, batch_size=1000)
    drop_flows(pg_dsn, name)


def make_things(dsn: str, schema: str, key: str, with_metadata: bool) -> None:
    metadata = (", _cdc_version bytea NOT NULL, _cdc_updated_at timestamptz NOT NULL DEFAULT now()"
                if with_metadata else "")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'CREATE TABLE "{schema}".things (id bigint, name text, qty smallint'
                     f'{metadata}, PRIMARY KEY ({key}))')


def test_a_table_another_flow_made_is_registered_so_a_rebuild_reads_its_rows(settings) -> None:
    make_things(settings.pg_dsn, settings.target_schema, "id", with_metadata=True)
    things = Things(settings.target_schema)
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        conn.execute(f'INSERT INTO "{settings.target_schema}".things VALUES '
                     "(7, 'made elsewhere', 1, %s)", (pg_version(0, 5),))
    shard = ShardPartition(settings, 0)
    shard.write_batch([[things.event(1, 10), ProgressMarker(TOPIC, 0, 2)]])
    shard.close()
    with psycopg.connect(settings.pg_dsn) as conn:
        states = dict(committed_states(conn, settings.flow_id, 0, 1))
    assert {key: (state.version, state.deleted) for key, state in states.items()} == {
        state_key(things.table, (1,)): (pg_version(0, 10), False),
        state_key(things.table, (7,)): (pg_version(0, 5), False)}


def test_an_existing_table_with_another_primary_key_sends_events_to_the_dlq(settings) -> None:
    make_things(settings.pg_dsn, settings.target_schema, "name", with_metadata=False)
    things = Things(settings.target_schema)
    shard = ShardPartition(settings, 0)
    shard.write_batch([[things.event(1, 10), ProgressMarker(TOPIC, 0, 2)]])
    shard.close()
    with psycopg.connect(settings.pg_dsn) as conn:
        dlq = conn.execute("SELECT \"offset\", error_type, error FROM cdc.dlq WHERE flow_id = %s",
                           (settings.flow_id,)).fetchall()
        count = conn.execute(f'SELECT count(*) FROM "{settings.target_schema}".things').fetchone()
    assert dlq == [(1, "key_mismatch", f"table {things.table} has primary key ['name'] but the "
                                       "message key has ['id']")]
    assert count == (0,)


def test_schemas_that_arrive_as_copies_resolve_once_and_are_not_kept_each(settings) -> None:
    """In a cluster every event from another process carries a schema object of its own."""
    things = Things(settings.target_schema)
    tables = thread_session(settings).tables
    first = tables.for_event(things.event(1, 10))
    copies = target_tables._MAX_SCHEMA_OBJECTS + 10
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP TABLE "{settings.target_schema}".things')  # a new _ensure would fail
        for _ in range(copies):
            event = things.event(1, 11)
            event.schema = pickle.loads(pickle.dumps(things.schema))
            assert tables.for_event(event) is first
    assert len(tables._by_schema) <= target_tables._MAX_SCHEMA_OBJECTS


def test_a_wider_schema_is_still_resolved_and_widens_the_table(settings) -> None:
    things = Things(settings.target_schema)
    tables = thread_session(settings).tables
    tables.for_event(things.event(1, 10))
    wider = TableSchema(things.table, (*things.schema.columns, Column("note", "text")), ("id",))
    event = things.event(1, 11, note="n")
    event.schema = wider
    assert "note" in tables.for_event(event).columns


def test_a_column_added_then_dropped_at_the_source_keeps_its_last_value(settings) -> None:
    """The source adds a column, updates a row, drops the column, updates it again (one batch):
    the narrower schema resolves to the table as it is now, with the added column, so the write
    that merges the earlier image's value of it lands."""
    things = Things(settings.target_schema)
    wider = TableSchema(things.table, (*things.schema.columns, Column("extra", "integer")),
                        ("id",))
    shard = ShardPartition(settings, 0)
    shard.write_batch([[things.event(1, 10), ProgressMarker(TOPIC, 0, 2)]])
    added = things.event(1, 11, extra=5)
    added.schema = wider
    dropped = things.event(1, 12)
    dropped.values = {"id": 1, "qty": 3}  # a partial image: `name` unchanged (TOAST)
    shard.write_batch([[added, dropped, ProgressMarker(TOPIC, 0, 4)]])
    shard.close()
    with psycopg.connect(settings.pg_dsn) as conn:
        row = conn.execute(f'SELECT name, qty, extra FROM "{settings.target_schema}".things'
                           ).fetchone()
    assert row == ("v11", 3, 5)
