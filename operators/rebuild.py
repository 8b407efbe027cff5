"""Rebuild one shard's state from what Postgres committed (DESIGN invariant 5).

Used when a shard's state directory is missing, empty, or out of step with Postgres by more than
the one commit its undo record covers. Every key's version comes from its row (`_cdc_version`,
`_cdc_deleted` in soft mode), its hard-delete tombstone, and its table's truncate floor. A row
without a version (there before the flow first wrote to its table) leaves its key without state.
A Cassandra-model table's rows carry their cell versions (`_cdc_cells`), its dead rows' versions
are in `cdc.cell_tombstones` (`operators/cell_rows.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson
import psycopg
from psycopg import sql

from operators.cell_rows import Place, encode_cell_state
from operators.events import TableName
from operators.keys import shard_of, state_key
from operators.lww import KeyState
from operators.target_tables import CELLS_COLUMN, DELETED_COLUMN, VERSION_COLUMN

log = logging.getLogger(__name__)
FETCH_ROWS = 20_000


def _flow_tables(conn: psycopg.Connection, flow_id: str) -> list[tuple[TableName, list[str]]]:
    rows = conn.execute(
        "SELECT table_schema, table_name, key_columns FROM cdc.tables WHERE flow_id = %s",
        (flow_id,),
    ).fetchall()
    return [(TableName(s, t), list(k)) for s, t, k in rows]


def _has_column(conn: psycopg.Connection, table: TableName, column: str) -> bool:
    return conn.execute(
        "SELECT 1 FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s AND column_name = %s",
        (table.schema, table.name, column),
    ).fetchone() is not None


def committed_states(
    conn: psycopg.Connection, flow_id: str, shard: int, shards: int
) -> Iterator[tuple[bytes, KeyState | bytes]]:
    """(state key, state) of every key of `shard`, the newest of row and tombstone per key; a
    cell row's state encoded."""
    tables = _flow_tables(conn, flow_id)
    cell_tables = [(t, k) for t, k in tables if _has_column(conn, t, CELLS_COLUMN)]
    yield from _cell_states(conn, cell_tables, shard, shards)
    seen: dict[bytes, KeyState] = {}
    for table, key_columns in tables:
        if (table, key_columns) in cell_tables or not _has_column(conn, table, VERSION_COLUMN):
            continue
        deleted = (sql.Identifier(DELETED_COLUMN) if _has_column(conn, table, DELETED_COLUMN)
                   else sql.SQL("false"))
        # a row the table held before the flow first wrote to it has no version: no state, so
        # that every change of its key applies (the SQL guards rank NULL below every version)
        query = sql.SQL("SELECT {}, {version}, {} FROM {} WHERE {version} IS NOT NULL").format(
            sql.SQL(", ").join(map(sql.Identifier, key_columns)), deleted,
            sql.Identifier(table.schema, table.name), version=sql.Identifier(VERSION_COLUMN))
        for skey, row in _rows_of_shard(conn, query, (), lambda r, t=table: state_key(
                t, tuple(r[:-2])), shard, shards):
            seen[skey] = KeyState(bytes(row[-2]), row[-1])
    names = {str(t): t for t, _ in tables}
    for skey, (_, _, version) in _rows_of_shard(
            conn, "SELECT table_name, key::text, version FROM cdc.tombstones "
                  "WHERE table_name = ANY(%s)", (list(names),),
            lambda r: state_key(names[r[0]], tuple(orjson.loads(r[1]))), shard, shards):
        tomb = KeyState(bytes(version), True)
        live = seen.get(skey)
        if live is None or live.version < tomb.version:
            seen[skey] = tomb
    log.info("shard %d: rebuilt state of %d keys from Postgres", shard, len(seen))
    yield from seen.items()


def _cell_states(conn: psycopg.Connection, tables: list[tuple[TableName, list[str]]],
                 shard: int, shards: int) -> Iterator[tuple[bytes, bytes]]:
    """The states of `shard`'s cell rows: live ones from their tables, dead ones from
    `cdc.cell_tombstones`."""
    for table, key_columns in tables:
        query = sql.SQL("SELECT {}, {} FROM {}").format(
            sql.SQL(", ").join(map(sql.Identifier, key_columns)), sql.Identifier(CELLS_COLUMN),
            sql.Identifier(table.schema, table.name))
        for skey, row in _rows_of_shard(conn, query, (), lambda r, t=table: state_key(
                t, tuple(r[:-1])), shard, shards):
            yield skey, encode_cell_state(Place.TABLE, row[-1])
    names = {str(t): t for t, _ in tables}
    for skey, (_, _, cells) in _rows_of_shard(
            conn, "SELECT table_name, key::text, cells FROM cdc.cell_tombstones "
                  "WHERE table_name = ANY(%s)", (list(names),),
            lambda r: state_key(names[r[0]], tuple(orjson.loads(r[1]))), shard, shards):
        yield skey, encode_cell_state(Place.TOMBSTONES, cells)


def _rows_of_shard(conn: psycopg.Connection, query: sql.Composable | str, params: Sequence[Any],
                   key_of: Callable[[tuple[Any, ...]], bytes], shard: int, shards: int,
                   ) -> Iterator[tuple[bytes, tuple[Any, ...]]]:
    """(state key, row) of the rows of `query` whose key (`key_of(row)`) hashes to `shard`,
    read through a server-side cursor in chunks."""
    with conn.cursor(name=f"rebuild_{shard}") as cur:
        cur.itersize = FETCH_ROWS
        for row in cur.execute(query, params or None):
            skey = key_of(row)
            if shard_of(skey, shards) == shard:
                yield skey, row


def committed_floors(conn: psycopg.Connection, flow_id: str) -> dict[str, bytes]:
    tables = [str(t) for t, _ in _flow_tables(conn, flow_id)]
    rows = conn.execute(
        "SELECT table_name, version FROM cdc.truncations WHERE table_name = ANY(%s)", (tables,)
    ).fetchall()
    return {name: bytes(version) for name, version in rows}
