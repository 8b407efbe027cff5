"""One shard's part in Cassandra-model tables: what it decides beyond each change's own row.

- Partition and range deletions reach every shard (they cover rows of all of them). Each shard
  revisits the rows of the deletion it owns that are in the target table, and keeps every
  deletion (`cdc.cell_range_deletes`, loaded when the shard comes in step) to fence the rows
  written later.
- Expiry: at most every `SWEEP_EVERY_S`, with a commit, the shard revisits its rows whose next
  expiry has passed (`_cdc_expires_at`), so that expired cells read as null and a row with
  nothing live left leaves the table, in the commit's transaction.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from formats.cells import CellChange
from operators.cell_rows import Deletions, RangeDelete, decide_cells
from operators.cell_writer import known_deletes
from operators.events import DlqRecord, TableName
from operators.keys import key_json, shard_of, state_key
from operators.pg_writer import ShardBatch
from operators.target_tables import EXPIRES_AT_COLUMN, TableProblem, TargetTable, TargetTables

SWEEP_EVERY_S = 5.0
SWEEP_ROWS = 10_000
Revisit = tuple[TableName, tuple[str, ...], tuple[Any, ...], bytes]


class CellSweep:
    def __init__(self, shard: int, shards: int) -> None:
        self._shard = shard
        self._shards = shards
        self._deletes = Deletions()
        self._tables: list[TableName] = []
        self._swept_at = 0.0

    def load(self, conn: psycopg.Connection, flow_id: str) -> None:
        """The deletions and cell tables Postgres holds (the shard comes in step)."""
        self._tables = [TableName(s, t) for s, t in conn.execute(
            """SELECT t.table_schema, t.table_name FROM cdc.tables t
               JOIN information_schema.columns c ON c.table_schema = t.table_schema
                AND c.table_name = t.table_name AND c.column_name = %s
               WHERE t.flow_id = %s""", (EXPIRES_AT_COLUMN, flow_id)).fetchall()]
        self._deletes = known_deletes(conn, self._tables)

    def confirm(self, deletes: list[RangeDelete]) -> None:
        for delete in deletes:
            self._deletes.add(delete)

    def decide(self, changes: list[CellChange], batch: ShardBatch, conn: psycopg.Connection,
               tables: TargetTables, stored: Callable[[list[bytes]], list[bytes | None]],
               ) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes | None]]]:
        """Decide `changes` into `batch`; returns the states to store and those they replace."""
        target: dict[TableName, TargetTable] = {}
        kept: list[CellChange] = []
        for change in changes:
            try:
                target[change.table] = tables.for_event(change)  # type: ignore[arg-type]
            except TableProblem as problem:
                batch.dlq.append(_dlq(change, problem))
                continue
            kept.append(change)
        for table in target:
            if table not in self._tables:
                self._tables.append(table)
        revisit = [row for c in kept if not c.row_id
                   for row in self._covered(conn, target[c.table], RangeDelete.of(c),
                                            c.key_columns)]
        revisit += self._expired(conn, tables, target)
        if not kept and not revisit:
            return [], []
        decision = decide_cells(kept, revisit, stored, self._deletes, time.time_ns() // 1000)
        for write in decision.writes:
            table = target.get(write.table) or tables.lookup(write.table)
            assert table is not None
            batch.cell_writes.append((table, write))
        batch.range_deletes = decision.deletes
        batch.stale += decision.stale
        batch.applied += decision.applied
        batch.duplicates += decision.duplicates
        for key, n in decision.counts.items():
            batch.counts[key] = batch.counts.get(key, 0) + n
        return decision.states, decision.replaced

    def _covered(self, conn: psycopg.Connection, table: TargetTable, delete: RangeDelete,
                 key_columns: tuple[str, ...]) -> list[Revisit]:
        """This shard's rows in the target table that `delete` covers."""
        size = len(delete.partition)
        conditions = [sql.SQL("{} = {}").format(sql.Identifier(c), sql.Literal(v))
                      for c, v in zip(key_columns[:size], delete.partition, strict=True)]
        for bound, op in ((delete.start, ">"), (delete.end, "<")):
            if bound is None or not bound.values:
                continue
            names = key_columns[size : size + len(bound.values)]
            conditions.append(sql.SQL("({}) {} ({})").format(
                sql.SQL(", ").join(map(sql.Identifier, names)),
                sql.SQL(op + ("=" if bound.inclusive else "")),
                sql.SQL(", ").join(map(sql.Literal, bound.values))))
        return self._rows(conn, table, key_columns, sql.SQL(" AND ").join(conditions))

    def _expired(self, conn: psycopg.Connection, tables: TargetTables,
                 target: dict[TableName, TargetTable]) -> list[Revisit]:
        now = time.monotonic()
        if now - self._swept_at < SWEEP_EVERY_S:
            return []
        self._swept_at = now
        found: list[Revisit] = []
        for name in self._tables:
            table = target.get(name) or tables.lookup(name)
            if table is None:
                continue
            found += self._rows(conn, table, table.key, sql.SQL("{} <= now()").format(
                sql.Identifier(EXPIRES_AT_COLUMN)))
        return found

    def _rows(self, conn: psycopg.Connection, table: TargetTable, key_columns: tuple[str, ...],
              where: sql.Composable) -> list[Revisit]:
        query = sql.SQL("SELECT {} FROM {} WHERE {} LIMIT {}").format(
            sql.SQL(", ").join(map(sql.Identifier, key_columns)), table.ident, where,
            sql.Literal(SWEEP_ROWS))
        found: list[Revisit] = []
        for row in conn.execute(query):
            row_id = state_key(table.name, tuple(row))
            if shard_of(row_id, self._shards) == self._shard:
                found.append((table.name, key_columns, tuple(row), row_id))
        return found


def _dlq(change: CellChange, problem: TableProblem) -> DlqRecord:
    """A DLQ record for a change that decoded but has no table to go to."""
    return DlqRecord(change.topic, change.partition, change.offset, key_json(change.key), None,
                     problem.error_type, str(problem))
