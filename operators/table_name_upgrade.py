"""Carry control rows and shard state written before table names were quoted over to the
quoted form (`str(TableName)`: a schema or table name holding a dot or a quote is quoted).

Only such names changed form, so a flow without them has nothing to carry over. For a flow with
them, tombstones, truncate floors and audit rows are renamed, and every shard that has not
committed since (its commit id is still NULL) is made to rebuild its state from Postgres: its
RocksDB keys of those tables are in the old form. Runs at flow start, before any shard commits.
"""

from __future__ import annotations

import logging

import psycopg

from operators.events import TableName

log = logging.getLogger(__name__)


def quoted_renames(conn: psycopg.Connection, flow_id: str) -> list[tuple[str, str]]:
    """(old form, quoted form) of each table of the flow whose name form changed."""
    rows = conn.execute(
        """SELECT table_schema, table_name FROM cdc.tables
           WHERE flow_id = %s AND (strpos(table_schema || table_name, '.') > 0
                                   OR strpos(table_schema || table_name, '"') > 0)""",
        (flow_id,),
    ).fetchall()
    return [(f"{schema}.{name}", str(TableName(schema, name))) for schema, name in rows]


def upgrade_quoted_table_names(conn: psycopg.Connection, flow_id: str) -> int:
    """Rename the old-form rows of the flow's tables; returns how many shards must rebuild."""
    renames = quoted_renames(conn, flow_id)
    if not renames:
        return 0
    with conn.transaction():
        for old, new in renames:
            conn.execute(
                """INSERT INTO cdc.tombstones AS t (table_name, key, version, deleted_at)
                   SELECT %s, key, version, deleted_at FROM cdc.tombstones WHERE table_name = %s
                   ON CONFLICT (table_name, key) DO UPDATE SET version = excluded.version
                   WHERE t.version < excluded.version""", (new, old))
            conn.execute(
                """INSERT INTO cdc.truncations AS t (table_name, version, truncated_at)
                   SELECT %s, version, truncated_at FROM cdc.truncations WHERE table_name = %s
                   ON CONFLICT (table_name) DO UPDATE SET version = excluded.version
                   WHERE t.version < excluded.version""", (new, old))
            for table in ("tombstones", "truncations"):
                conn.execute(f"DELETE FROM cdc.{table} WHERE table_name = %s", (old,))
            for table in ("stale_events", "schema_history"):
                conn.execute(f"UPDATE cdc.{table} SET table_name = %s "
                             "WHERE flow_id = %s AND table_name = %s", (new, flow_id, old))
        rebuilt = conn.execute(
            """UPDATE cdc.shard_commits SET commit_id = decode(md5(random()::text), 'hex')
               WHERE flow_id = %s AND commit_id IS NULL""", (flow_id,)).rowcount
    if rebuilt:
        log.warning("flow %s: tables %s are now named in quoted form; %d shards rebuild their "
                    "state from Postgres", flow_id, ", ".join(new for _, new in renames), rebuilt)
    return rebuilt
