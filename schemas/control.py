"""The replicator's control tables in schema `cdc` (see docs/architecture.md for each one's job)."""

from __future__ import annotations

import psycopg
from psycopg import sql

CONTROL_DDL = """
CREATE SCHEMA IF NOT EXISTS cdc;

CREATE TABLE IF NOT EXISTS cdc.flows (
    flow_id     text PRIMARY KEY,
    shards      integer NOT NULL,
    start       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- when the partitions of the flow's first start were recorded in cdc.flow_partitions
    partitions_recorded_at timestamptz
);

-- the partitions that existed at the flow's first start: REPLICATE_START=latest applies to them
CREATE TABLE IF NOT EXISTS cdc.flow_partitions (
    flow_id   text NOT NULL,
    topic     text NOT NULL,
    partition integer NOT NULL,
    PRIMARY KEY (flow_id, topic, partition)
);

-- offsets [expected_offset, earliest_offset) skipped because Kafka no longer held them
CREATE TABLE IF NOT EXISTS cdc.gaps (
    flow_id         text NOT NULL,
    topic           text NOT NULL,
    partition       integer NOT NULL,
    expected_offset bigint NOT NULL,
    earliest_offset bigint NOT NULL,
    detected_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (flow_id, topic, partition, expected_offset)
);

-- where each snapshot's rows start in a partition, and the source position they were read at
CREATE TABLE IF NOT EXISTS cdc.snapshot_points (
    flow_id      text NOT NULL,
    topic        text NOT NULL,
    partition    integer NOT NULL,
    point        numeric(20) NOT NULL,
    first_offset bigint NOT NULL,
    PRIMARY KEY (flow_id, topic, partition, point)
);

CREATE TABLE IF NOT EXISTS cdc.offsets (
    flow_id     text NOT NULL,
    shard       integer NOT NULL,
    topic       text NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (flow_id, shard, topic, partition)
);

CREATE TABLE IF NOT EXISTS cdc.shard_commits (
    flow_id      text NOT NULL,
    shard        integer NOT NULL,
    seq          bigint NOT NULL,
    commit_id    bytea,
    committed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (flow_id, shard)
);

CREATE TABLE IF NOT EXISTS cdc.stale_events (
    flow_id         text NOT NULL,
    topic           text NOT NULL,
    partition       integer NOT NULL,
    "offset"        bigint NOT NULL,
    table_name      text NOT NULL,
    key             jsonb NOT NULL,
    version         text NOT NULL,
    applied_version text NOT NULL,
    reason          text NOT NULL,
    detected_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (flow_id, topic, partition, "offset")
);

CREATE TABLE IF NOT EXISTS cdc.dlq (
    id            bigserial PRIMARY KEY,
    flow_id       text NOT NULL,
    topic         text NOT NULL,
    partition     integer NOT NULL,
    "offset"      bigint NOT NULL,
    raw_key       bytea,
    raw_value     bytea,
    error_type    text NOT NULL,
    error         text NOT NULL,
    first_seen    timestamptz NOT NULL DEFAULT now(),
    replay_status text NOT NULL DEFAULT 'pending',
    UNIQUE (flow_id, topic, partition, "offset")
);

CREATE TABLE IF NOT EXISTS cdc.schema_history (
    id          bigserial PRIMARY KEY,
    flow_id     text NOT NULL,
    table_name  text NOT NULL,
    change      text NOT NULL,
    column_name text,
    old_type    text,
    new_type    text,
    topic       text,
    partition   integer,
    "offset"    bigint,
    changed_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS cdc.tables (
    flow_id      text NOT NULL,
    table_schema text NOT NULL,
    table_name   text NOT NULL,
    key_columns  text[] NOT NULL,
    PRIMARY KEY (flow_id, table_schema, table_name)
);

CREATE TABLE IF NOT EXISTS cdc.tombstones (
    table_name text NOT NULL,
    key        jsonb NOT NULL,
    version    bytea NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, key)
);

CREATE TABLE IF NOT EXISTS cdc.cell_tombstones (
    table_name text NOT NULL,
    key        jsonb NOT NULL,
    cells      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, key)
);

CREATE TABLE IF NOT EXISTS cdc.cell_range_deletes (
    table_name text NOT NULL,
    bounds     bytea NOT NULL,
    ts_us      bigint NOT NULL,
    PRIMARY KEY (table_name, bounds)
);

CREATE TABLE IF NOT EXISTS cdc.truncations (
    table_name   text PRIMARY KEY,
    version      bytea NOT NULL,
    truncated_at timestamptz NOT NULL DEFAULT now()
);
"""

# Columns added after their table was first released: (table, column, type). Databases made
# before get them from `ensure_control_schema`.
ADDED_COLUMNS = (
    ("flows", "partitions_recorded_at", "timestamptz"),
    ("shard_commits", "commit_id", "bytea"),
)

DDL_LOCK = "SELECT pg_advisory_xact_lock(hashtext('cdc-replicator:ddl'))"


def ensure_control_schema(conn: psycopg.Connection) -> None:
    """Create the control tables and add missing columns; safe to run from many processes at
    once. Runs at every session open, so it alters nothing that exists: `ALTER TABLE` takes an
    ACCESS EXCLUSIVE lock even when the column is there, which would queue the reconnecting
    worker, and every commit after it, behind other workers' open commits."""
    with conn.transaction():
        conn.execute(DDL_LOCK)
        conn.execute(CONTROL_DDL)
        for table, column, type_ in missing_columns(conn):
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                sql.Identifier("cdc", table), sql.Identifier(column), sql.SQL(type_)))


def missing_columns(conn: psycopg.Connection) -> list[tuple[str, str, str]]:
    """The `ADDED_COLUMNS` the control tables lack, in one catalog query."""
    return conn.execute(
        "SELECT added.tbl, added.col, added.typ "
        "FROM unnest(%s::text[], %s::text[], %s::text[]) AS added(tbl, col, typ) "
        "WHERE NOT EXISTS (SELECT FROM pg_attribute "
        "                  WHERE attrelid = format('cdc.%%I', added.tbl)::regclass "
        "                    AND attname = added.col AND NOT attisdropped)",
        [list(c) for c in zip(*ADDED_COLUMNS, strict=True)]).fetchall()
