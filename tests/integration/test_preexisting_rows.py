"""Rows a target table held before the flow first wrote to it (no `_cdc_version` yet) rank below
every change: updates, deletes, truncates and a state rebuild treat them as never versioned."""

from __future__ import annotations

import shutil
import uuid

import psycopg
import pytest

from benchmarks.replicator_run import drop_flows
from operators.events import Op
from operators.keys import state_key
from operators.settings import DeleteMode, Settings
from operators.shard_sink import ShardPartition
from tests.integration.test_shard_sink import TOPIC, Things, rows

pytestmark = pytest.mark.integration


@pytest.fixture(params=[DeleteMode.HARD, DeleteMode.SOFT], ids=["hard", "soft"])
def settings(request, pg_dsn, tmp_path):
    name = f"pre{uuid.uuid4().hex[:10]}"
    yield Settings(topics=TOPIC, pg_dsn=pg_dsn, state_dir=tmp_path, flow_id=name,
                   target_schema=name, shards=1, delete_mode=request.param)
    drop_flows(pg_dsn, name)


@pytest.fixture
def things(settings) -> Things:
    """`things` created by hand with rows 1-3, before the flow exists."""
    things = Things(settings.target_schema)
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{things.table.schema}"')
        conn.execute(f'CREATE TABLE "{things.table.schema}".things '
                     "(id bigint PRIMARY KEY, name text, qty smallint)")
        conn.execute(f'INSERT INTO "{things.table.schema}".things '
                     "VALUES (1, 'old', 7), (2, 'old', 7), (3, 'old', 7)")
    return things


def live_rows(settings: Settings, things: Things) -> dict[int, tuple]:
    """The table's rows, without those a soft delete flagged."""
    if settings.delete_mode is DeleteMode.HARD:
        return rows(settings.pg_dsn, things.table)
    with psycopg.connect(settings.pg_dsn) as conn:
        return {r[0]: r[1:] for r in conn.execute(
            f'SELECT id, name, qty FROM "{things.table.schema}".things WHERE NOT _cdc_deleted')}


def test_updates_and_deletes_of_preexisting_rows_are_applied(settings, things):
    shard = ShardPartition(settings, 0)
    shard.write_batch([[things.event(1, 10), things.event(2, 10, Op.DELETE)]])
    shard.close()
    assert live_rows(settings, things) == {1: ("v10", 1), 3: ("old", 7)}


def test_a_truncate_removes_preexisting_rows(settings, things):
    shard = ShardPartition(settings, 0)
    shard.write_batch([[things.event(4, 10), things.truncate(20), things.event(5, 30)]])
    shard.close()
    assert rows(settings.pg_dsn, things.table) == {5: ("v30", 1)}


def test_a_state_rebuilt_beside_preexisting_rows_lets_their_changes_apply(settings, things):
    shard = ShardPartition(settings, 0)
    shard.write_batch([[things.event(4, 10)]])  # the flow adds `_cdc_version`: NULL in rows 1-3
    shard.close()
    shutil.rmtree(settings.state_dir)
    rebuilt = ShardPartition(settings, 0)
    assert rebuilt.shard._store.get_many([state_key(things.table, (1,))]) == [None]
    rebuilt.write_batch([[things.event(1, 5), things.event(2, 5, Op.DELETE)]])
    rebuilt.close()
    assert live_rows(settings, things) == {1: ("v5", 1), 3: ("old", 7), 4: ("v10", 1)}
