"""A partition's in-flight window against the committed positions in real Postgres."""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest

from benchmarks.replicator_run import drop_flows
from operators.flow_control import CHECK_INTERVAL_S, MIN_WINDOW, CommitWindow
from operators.settings import Settings
from schemas.control import ensure_control_schema

pytestmark = pytest.mark.integration
TOPIC = "db.inventory.things"


@pytest.fixture
def settings(pg_dsn):
    name = f"window{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        ensure_control_schema(conn)
    yield Settings(topics=TOPIC, pg_dsn=pg_dsn, flow_id=name, target_schema=name,
                   max_in_flight=3000)
    drop_flows(pg_dsn, name)


def _commit(settings: Settings, shard: int, partition: int, next_offset: int) -> None:
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO cdc.offsets (flow_id, shard, topic, partition, next_offset) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (flow_id, shard, topic, partition) "
            "DO UPDATE SET next_offset = excluded.next_offset",
            (settings.flow_id, shard, TOPIC, partition, next_offset))
    time.sleep(CHECK_INTERVAL_S)  # the window re-reads Postgres at most this often


def test_each_partition_gets_an_equal_share_of_the_budget(settings):
    window = CommitWindow(settings, TOPIC, 0, committed=100, partitions=3)
    assert window.allows(100 + 999)
    assert not window.allows(100 + 1000)


def test_a_share_never_falls_below_the_minimum(settings):
    window = CommitWindow(settings, TOPIC, 0, committed=0, partitions=1000)
    assert window.allows(MIN_WINDOW - 1)
    assert not window.allows(MIN_WINDOW)


def test_reads_on_once_every_shard_committed_past(settings):
    window = CommitWindow(settings, TOPIC, 2, committed=100, partitions=3)
    assert not window.allows(1100)
    _commit(settings, shard=0, partition=2, next_offset=1000)
    _commit(settings, shard=1, partition=2, next_offset=150)  # the slowest shard counts
    assert not window.allows(1150)
    assert window.allows(1149)
    _commit(settings, shard=1, partition=7, next_offset=10_000)  # another partition's
    assert not window.allows(1150)
    _commit(settings, shard=1, partition=2, next_offset=1000)
    assert window.allows(1150)


def test_postgres_away_keeps_the_partition_waiting(settings):
    away = settings.model_copy(update={"pg_dsn": "postgresql://nobody@127.0.0.1:1/none"})
    window = CommitWindow(away, TOPIC, 0, committed=0, partitions=3)
    assert not window.allows(1000)
