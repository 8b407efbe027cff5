"""The replicator reads timestamptz values in UTC, whatever the server's or database's time zone,
so a key rebuilt from Postgres is the state key (and shard) the decoder made."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from operators.events import ChangeEvent, Column, Op, TableName, TableSchema
from operators.keys import state_key
from operators.lww import KeyState
from operators.settings import Settings
from operators.shard_sink import ShardPartition
from operators.versions import pg_version
from schemas.debezium_types import parse_timestamptz

pytestmark = pytest.mark.integration
TOPIC = "db.inventory.readings"


@pytest.fixture
def kolkata_dsn(pg_dsn: str) -> Iterator[str]:
    """A scratch database whose sessions start in Asia/Kolkata (UTC+05:30)."""
    name = f"tz{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("ALTER DATABASE {} SET TimeZone = 'Asia/Kolkata'").format(
            sql.Identifier(name)))
    yield make_conninfo(pg_dsn, dbname=name)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_a_timestamptz_key_rebuilds_to_the_decoders_state_key(kolkata_dsn, tmp_path):
    settings = Settings(topics=TOPIC, pg_dsn=kolkata_dsn, state_dir=tmp_path, flow_id="tz",
                        target_schema="tz", shards=1)
    table = TableName("tz", "readings")
    schema = TableSchema(table, (Column("at", "timestamp with time zone"),
                                 Column("value", "bigint")), ("at",))
    at = parse_timestamptz("2024-05-01T12:00:00Z")
    event = ChangeEvent(table, ("at",), (at,), Op.UPSERT, pg_version(0, 10),
                        {"at": at, "value": 1}, schema, TOPIC, 0, 0)
    shard = ShardPartition(settings, 0)
    shard.write_batch([[event]])
    shard.close()
    shutil.rmtree(tmp_path / "tz")
    rebuilt = ShardPartition(settings, 0)
    try:
        assert rebuilt.shard._store.get_many([state_key(table, (at,))]) == [
            KeyState(pg_version(0, 10), False)]
    finally:
        rebuilt.close()
