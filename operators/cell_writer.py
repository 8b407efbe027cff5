"""Cassandra-model rows into Postgres (`operators/cell_rows.py` decides them).

A row's write lands only on the versions it was decided against: each statement matches the
stored `_cdc_cells` (or `cdc.cell_tombstones.cells`) to the write's `expected` versions (a row
the table held before the flow wrote it has none: NULL matches NULL), a new row or tombstone
only where none is, and the writer checks that every staged row was written. A shard whose state
is not what Postgres holds (copied from elsewhere, edited by hand, or a second owner) therefore
cannot overwrite newer cells: the commit rolls back with `CellVersionConflict`, and the
committer has the shards rebuild their state from Postgres and decide again
(`Committer._heal`). A table's rows of a commit go through one `COPY` into one stage, whatever
columns each sets, and one statement per kind of move.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from operators.cell_meta import newest_write
from operators.cell_rows import CellWrite, Place, RangeDelete
from operators.keys import key_json
from operators.target_tables import (
    CELLS_COLUMN,
    EXPIRES_AT_COLUMN,
    UPDATED_AT_COLUMN,
    VERSION_COLUMN,
    TargetTable,
)
from operators.versions import writetime_version

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CONTROL = ("_cdc_set", "_cdc_key", "_cdc_expected", "_cdc_place", "_cdc_alive", CELLS_COLUMN,
            VERSION_COLUMN, EXPIRES_AT_COLUMN)
_REPLICATOR_COLUMNS = {CELLS_COLUMN, VERSION_COLUMN, EXPIRES_AT_COLUMN, UPDATED_AT_COLUMN}


def data_columns(table: TargetTable) -> tuple[str, ...]:
    """The table's columns a cell write may set: all but the key and the replicator's."""
    return tuple(sorted(c for c in table.columns
                        if c not in table.key and c not in _REPLICATOR_COLUMNS))


class CellVersionConflict(RuntimeError):
    """Postgres holds other cell versions for a row than the shard decided against."""


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _jsonb(value: Any) -> Jsonb:
    return Jsonb(value, dumps=_dumps)


def expiry_time(expires_us: int | None) -> datetime | None:
    return None if expires_us is None else _EPOCH + timedelta(microseconds=expires_us)


Moves = Counter[tuple[Place, bool]]
"""Rows per kind of move: (where the row's versions were, whether it is alive now)."""


@dataclass(frozen=True, slots=True)
class StagedCells:
    """A table's cell rows of one shard's commit as `COPY` text for its stage, made by the
    native cell step (`operators/native_cells.py`), and how many rows make each move."""

    table: TargetTable
    text: bytes
    moves: Moves


@dataclass(slots=True)
class _TableRows:
    writes: list[CellWrite]
    texts: list[bytes]
    moves: Moves


class CellWriter:
    """Writes the cell rows of a transaction on one connection: one stage (a temp table) per
    target table, holding every data column and, per row, the columns it sets (`_cdc_set`)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self._conn = conn
        self._stages: dict[tuple[str, tuple[str, ...]], sql.Identifier] = {}

    def write(self, writes: list[tuple[TargetTable, CellWrite]],
              staged: Sequence[StagedCells] = ()) -> None:
        """Stage and apply `writes` and the natively `staged` rows; `CellVersionConflict` when
        a row's versions were not the expected ones."""
        by_table: dict[TargetTable, _TableRows] = defaultdict(
            lambda: _TableRows([], [], Counter()))
        for table, write in writes:
            rows = by_table[table]
            rows.writes.append(write)
            rows.moves[(write.place, write.alive)] += 1
        for cells in staged:
            rows = by_table[cells.table]
            rows.texts.append(cells.text)
            rows.moves.update(cells.moves)
        checks: list[tuple[list[sql.Composable], int | None, TargetTable]] = []
        for table, rows in by_table.items():
            columns = data_columns(table)
            stage = self._stage(table, columns)
            self._copy(stage, table, columns, rows.writes, rows.texts)
            checks += [(group, expected, table)
                       for group, expected in _statements(table, columns, stage, rows.moves)
                       if expected != 0]
        if not checks:
            return
        cur = self._conn.execute(sql.SQL("; ").join(s for group, _, _ in checks for s in group))
        for group, expected, table in checks:
            written = 0
            for _ in group:
                written += max(cur.rowcount, 0)
                cur.nextset()
            if expected is not None and written != expected:
                raise CellVersionConflict(
                    f"{table.name}: {expected} rows were decided against cell versions that "
                    f"{written} of them still have in Postgres: the shard's state is not "
                    "Postgres'")

    def _stage(self, table: TargetTable, columns: tuple[str, ...]) -> sql.Identifier:
        cache_key = (str(table.name), columns)
        stage = self._stages.get(cache_key)
        if stage is None:
            stage = sql.Identifier(f"_cdc_cell_stage_{len(self._stages)}")
            # the move's columns first: each statement filters the whole stage on them, and
            # Postgres reads a row's columns up to the last one a filter needs
            defs = [sql.SQL("_cdc_alive boolean, _cdc_place \"char\"")]
            defs += [sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(table.columns[c]))
                     for c in (*table.key, *columns)]
            defs += [sql.SQL("_cdc_set varbit, _cdc_key text, _cdc_expected jsonb, "
                             "{} jsonb, {} bytea, {} timestamptz").format(
                sql.Identifier(CELLS_COLUMN), sql.Identifier(VERSION_COLUMN),
                sql.Identifier(EXPIRES_AT_COLUMN))]
            self._conn.execute(sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DELETE ROWS").format(
                stage, sql.SQL(", ").join(defs)))
            self._stages[cache_key] = stage
        return stage

    def _copy(self, stage: sql.Identifier, table: TargetTable, columns: tuple[str, ...],
              writes: list[CellWrite], texts: Sequence[bytes]) -> None:
        """One `COPY` of the rows of `writes` and the stage rows already in `texts`."""
        json_at = {c for c in columns if table.columns.get(c) in ("json", "jsonb")}
        names = [*table.key, *columns, *_CONTROL]
        copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(
            stage, sql.SQL(", ").join(map(sql.Identifier, names)))
        with self._conn.cursor().copy(copy_sql) as copy:
            for text in texts:
                copy.write(text)
            for w in writes:
                key = dict(zip(w.key_columns, w.key, strict=True))
                given = w.values
                values = [None if (v := given.get(c)) is None
                          else _jsonb(v) if c in json_at else v for c in columns]
                expected = None if w.expected is None else _jsonb(w.expected)
                copy.write_row((
                    *(key[c] for c in table.key), *values,
                    "".join("1" if c in given else "0" for c in columns),
                    key_json(w.key).decode(), expected, w.place.value, w.alive, _jsonb(w.meta),
                    writetime_version(newest_write(w.meta)), expiry_time(w.expires_us)))

    def record_deletes(self, deletes: list[RangeDelete]) -> None:
        """Keep the partition and range deletions (they fence rows written later)."""
        if not deletes:
            return
        self._conn.cursor().executemany(
            """INSERT INTO cdc.cell_range_deletes (table_name, bounds, ts_us)
               VALUES (%s, %s, %s) ON CONFLICT (table_name, bounds)
               DO UPDATE SET ts_us = greatest(cdc.cell_range_deletes.ts_us, excluded.ts_us)""",
            [(str(d.table), d.to_json(), d.ts_us) for d in deletes])



def _statements(table: TargetTable, columns: tuple[str, ...], stage: sql.Identifier,
                n: Moves) -> list[tuple[list[sql.Composable], int | None]]:
    """The statements of one table's stage, in groups that must touch so many rows together
    (None: any number), `n` rows making each move."""
    target, name = table.ident, sql.Literal(str(table.name))
    match = sql.SQL(" AND ").join(sql.SQL("t.{0} = s.{0}").format(sql.Identifier(c))
                                  for c in table.key)
    meta = [CELLS_COLUMN, VERSION_COLUMN, EXPIRES_AT_COLUMN]
    # a column the row sets (its bit in `_cdc_set`) takes the stage's value, any other keeps
    # the table's
    sets = sql.SQL(", ").join(
        [sql.SQL("{0} = CASE WHEN get_bit(s._cdc_set, {1}) = 1 THEN s.{0} ELSE t.{0} END").format(
            sql.Identifier(c), sql.Literal(i)) for i, c in enumerate(columns)]
        + [sql.SQL("{0} = s.{0}").format(sql.Identifier(c)) for c in meta]
        + [sql.SQL("{} = now()").format(sql.Identifier(UPDATED_AT_COLUMN))])
    cols = sql.SQL(", ").join(map(sql.Identifier, (*table.key, *columns, *meta)))
    s_cols = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c))
                                for c in (*table.key, *columns, *meta))
    cells = sql.Identifier(CELLS_COLUMN)
    # (the stage keeps the key's JSON as text: only the tombstone statements read it)
    # the staged rows whose versions are in cdc.cell_tombstones, each with its tombstone found
    # through the primary key: the subquery cannot be flattened (OFFSET 0), so the plan cannot
    # compare every tombstone of the table with every staged row, as one made on the lagging
    # statistics of a table that just took a burst of tombstones would
    found = sql.SQL(
        "{stage} s CROSS JOIN LATERAL (SELECT t.ctid AS tid FROM cdc.cell_tombstones t "
        "WHERE t.table_name = {name} AND t.key = s._cdc_key::jsonb "
        "AND t.cells IS NOT DISTINCT FROM s._cdc_expected OFFSET 0) m "
        "WHERE s._cdc_place = 'T'").format(stage=stage, name=name)
    fmt = {"target": target, "stage": stage, "match": match, "cells": cells, "name": name,
           "sets": sets, "cols": cols, "s_cols": s_cols, "found": found}

    def q(text: str) -> sql.Composed:
        return sql.SQL(text).format(**fmt)

    return [
        # alive, was in the table: update on the expected versions
        ([q("UPDATE {target} t SET {sets} FROM {stage} s WHERE {match} AND s._cdc_alive "
            "AND s._cdc_place = 'L' AND t.{cells} IS NOT DISTINCT FROM s._cdc_expected")],
         n[(Place.TABLE, True)]),
        # dead, was in the table: leave it
        ([q("DELETE FROM {target} t USING {stage} s WHERE {match} AND NOT s._cdc_alive "
            "AND s._cdc_place = 'L' AND t.{cells} IS NOT DISTINCT FROM s._cdc_expected")],
         n[(Place.TABLE, False)]),
        # alive, was a tombstone: the tombstone goes
        ([q("DELETE FROM cdc.cell_tombstones WHERE ctid = ANY(ARRAY(SELECT m.tid FROM {found} "
            "AND s._cdc_alive))")],
         n[(Place.TOMBSTONES, True)]),
        # dead, was a tombstone: its versions change
        ([q("UPDATE cdc.cell_tombstones t SET cells = m.cells, updated_at = now() "
            "FROM (SELECT m.tid, s.{cells} AS cells FROM {found} AND NOT s._cdc_alive) m "
            "WHERE t.ctid = m.tid")],
         n[(Place.TOMBSTONES, False)]),
        # alive, not in the table: the row the table held before the flow wrote it (no
        # versions) is updated, else a new row; a row with versions is a conflict: not counted
        ([q("UPDATE {target} t SET {sets} FROM {stage} s WHERE {match} AND s._cdc_alive "
            "AND s._cdc_place = 'N' AND t.{cells} IS NULL"),
          q("INSERT INTO {target} ({cols}) SELECT {s_cols} FROM {stage} s "
            "WHERE s._cdc_alive AND s._cdc_place <> 'L' ON CONFLICT DO NOTHING")],
         n[(Place.NONE, True)] + n[(Place.TOMBSTONES, True)]),
        # dead, never written by the flow: the row the table may have held before goes
        ([q("DELETE FROM {target} t USING {stage} s WHERE {match} AND NOT s._cdc_alive "
            "AND s._cdc_place = 'N' AND t.{cells} IS NULL")],
         None if n[(Place.NONE, False)] else 0),
        # dead, not a tombstone yet: a new tombstone
        ([q("INSERT INTO cdc.cell_tombstones (table_name, key, cells) "
            "SELECT {name}, s._cdc_key::jsonb, s.{cells} FROM {stage} s "
            "WHERE NOT s._cdc_alive AND s._cdc_place <> 'T' ON CONFLICT DO NOTHING")],
         n[(Place.NONE, False)] + n[(Place.TABLE, False)]),
    ]
