"""The control tables' setup, run at every session open: it must not wait on other workers'
commits, and must still bring a database made by an older version up to date."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from schemas.control import ADDED_COLUMNS, ensure_control_schema

pytestmark = pytest.mark.integration


def test_setting_up_the_control_tables_does_not_wait_for_an_open_commit(pg_dsn):
    """A worker reconnecting while another worker's commit holds a `cdc.shard_commits` row."""
    flow_id = f"ctl-{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_dsn, autocommit=True) as setup:
        ensure_control_schema(setup)
    with psycopg.connect(pg_dsn) as committing, psycopg.connect(pg_dsn, autocommit=True) as conn:
        committing.execute("INSERT INTO cdc.shard_commits (flow_id, shard, seq) "
                           "VALUES (%s, 0, 1)", (flow_id,))  # its transaction stays open
        conn.execute("SET lock_timeout = '2s'")  # a wait fails the test quickly
        ensure_control_schema(conn)
        committing.rollback()


@pytest.fixture
def old_database(pg_dsn) -> Iterator[str]:
    """A database of its own whose control tables lack the `ADDED_COLUMNS`."""
    name = f"ctl_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(pg_dsn, dbname=name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            ensure_control_schema(conn)
            for table, column, _ in ADDED_COLUMNS:
                conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(
                    sql.Identifier("cdc", table), sql.Identifier(column)))
        yield dsn
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_columns_added_since_a_database_was_made_are_added_once(old_database):
    with psycopg.connect(old_database, autocommit=True) as conn:
        ensure_control_schema(conn)
        ensure_control_schema(conn)  # a second open finds them there
        found = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'cdc' AND (table_name, column_name) IN "
            "(('flows', 'partitions_recorded_at'), ('shard_commits', 'commit_id')) "
            "ORDER BY table_name").fetchall()
    assert found == [("flows", "partitions_recorded_at", "timestamp with time zone"),
                     ("shard_commits", "commit_id", "bytea")]
