"""One shard's Cassandra-model tables: its cell changes decided into its commit
(`operators/cell_rows.py`), and the rows it decides without a change of their own.

- Partition and range deletions reach every shard (they cover rows of all of them). Each shard
  revisits its rows of the deleted partition that are in the target table, and keeps every
  deletion (`cdc.cell_range_deletes`, loaded when the shard comes in step) to fence the rows
  written later.
- Expiry: at most every `SWEEP_EVERY_S`, with a commit, the shard revisits its rows whose next
  expiry has passed (`_cdc_expires_at`), so that expired cells read as null and a row with
  nothing live left leaves the table, in the commit's transaction. A commit that would go native
  goes the Python way when a sweep is due (`sweep_due`).
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg import sql

from formats.cells import CellChange
from operators.cell_rows import CellDecision, Deletions, RangeDelete, decide_cells
from operators.events import TableName
from operators.keys import shard_of, shard_of_position, state_key
from operators.native_cells import (
    CellBatch,
    NativeCellDecision,
    Stored,
    cell_changes,
    cell_runs,
    decide_cell_runs,
)
from operators.native_decode import CellRun
from operators.pg_writer import ShardBatch
from operators.shard_dlq import dlq_for
from operators.target_tables import EXPIRES_AT_COLUMN, TableProblem, TargetTable, TargetTables

SWEEP_EVERY_S = 5.0
Revisit = tuple[TableName, tuple[str, ...], tuple[Any, ...], bytes]
CellUnit = CellChange | CellRun
"""A change of a Cassandra-model table, or a native run of them."""
StateChanges = tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes | None]]]
"""The states a decision stores, and the states they replace (for the undo record)."""


class CellShard:
    def __init__(self, shard: int, shards: int, native: bool = True) -> None:
        self._shard = shard
        self._shards = shards
        self._native = native and CellBatch is not None
        self._deletes = Deletions()
        # tables with a deletion in the commit not confirmed yet: a decision made ahead of that
        # commit's confirmation would not see it (the native step does not take deletions)
        self._deleting: set[TableName] = set()
        self._tables: list[TableName] = []
        self._key_columns: dict[TableName, tuple[str, ...]] = {}
        self._swept_at = 0.0

    def load(self, conn: psycopg.Connection, flow_id: str) -> None:
        """The deletions and cell tables Postgres holds (the shard comes in step)."""
        rows = conn.execute(
            """SELECT t.table_schema, t.table_name, t.key_columns FROM cdc.tables t
               JOIN information_schema.columns c ON c.table_schema = t.table_schema
                AND c.table_name = t.table_name AND c.column_name = %s
               WHERE t.flow_id = %s""", (EXPIRES_AT_COLUMN, flow_id)).fetchall()
        self._tables = [TableName(s, t) for s, t, _ in rows]
        self._key_columns = {TableName(s, t): tuple(k) for s, t, k in rows}
        self._deletes = known_deletes(conn, self._tables)
        self._deleting.clear()

    def sweep_due(self) -> bool:
        """Whether the next commit sweeps expired rows (only with cell tables)."""
        return bool(self._tables) and time.monotonic() - self._swept_at >= SWEEP_EVERY_S

    def confirm(self, deletes: list[RangeDelete]) -> None:
        for delete in deletes:
            self._deletes.add(delete)
        self._deleting.clear()

    def decide(self, units: list[CellUnit], batch: ShardBatch, conn: psycopg.Connection,
               tables: TargetTables, stored: Stored,
               ) -> StateChanges:
        """Decide `units` (`CellChange`s and native `CellRun`s, in arrival order) into `batch`;
        returns the states to store and those they replace."""
        target: dict[TableName, TargetTable] = {}
        kept: list[CellUnit] = []
        for unit in units:
            try:
                table = _target(unit, tables)
            except TableProblem as problem:
                batch.dlq += [dlq_for(change, problem.error_type, str(problem))
                              for change in cell_changes([unit])]
                continue
            name = table_of(unit)
            target[name] = table
            kept.append(unit)
            self._register(unit)
        revisit = [row for c in kept if type(c) is not CellRun and not c.row_id
                   for row in self._covered(conn, target[c.table], RangeDelete.of(c),
                                            c.key_columns)]
        revisit += self._expired(conn, tables, target)
        if not kept and not revisit:
            return [], []
        if not revisit:
            decided = self._decide_native(kept, target, batch, stored)
            if decided is not None:
                return decided
        decision = decide_cells(cell_changes(kept), revisit, stored, self._deletes,
                                time.time_ns() // 1000,
                                lambda c: shard_of_position(c.topic, c.partition, c.offset,
                                                            self._shards) == self._shard)
        for write in decision.writes:
            table = target.get(write.table) or tables.lookup(write.table)
            assert table is not None
            batch.cell_writes.append((table, write))
        batch.range_deletes = decision.deletes
        self._deleting = {d.table for d in decision.deletes}
        _add_outcomes(batch, decision)
        return decision.states, decision.replaced

    def decide_ahead(self, units: list[CellUnit], batch: ShardBatch, tables: TargetTables,
                     stored: Stored,
                     ) -> StateChanges | None:
        """`decide` without a connection, natively, or None: when every change is a write or a
        row delete of a table already resolved, and no expiry sweep is due (the caller checks)."""
        target: dict[TableName, TargetTable] = {}
        for unit in units:
            table = tables.known(unit.schema)
            if table is None:
                return None
            target[table_of(unit)] = table
        return self._decide_native(units, target, batch, stored)

    def _decide_native(self, units: list[CellUnit], target: dict[TableName, TargetTable],
                       batch: ShardBatch, stored: Stored,
                       ) -> StateChanges | None:
        """`units` decided by the native cell step into `batch`, or None (Python decides)."""
        if not self._native or any(self._deletes.holds(t) or t in self._deleting
                                   for t in target):
            return None
        runs = cell_runs(units)
        if runs is None:
            return None
        native = decide_cell_runs(runs, [target[r.schema.table] for r in runs], stored,
                                  time.time_ns() // 1000)
        if native is None:
            return None
        for unit in units:
            self._register(unit)
        batch.cell_staged = native.staged
        _add_outcomes(batch, native)
        return native.states, native.replaced

    def _register(self, unit: CellUnit) -> None:
        """Keep the table of a change or run among this shard's cell tables (it sweeps them)."""
        name = table_of(unit)
        if name not in self._key_columns:
            self._tables.append(name)
            self._key_columns[name] = key_columns_of(unit)

    def _covered(self, conn: psycopg.Connection, table: TargetTable, delete: RangeDelete,
                 key_columns: tuple[str, ...]) -> list[Revisit]:
        """This shard's rows in the target table of the partition `delete` deletes in. Which of
        them a range covers is `RangeDelete.covers`' to say (one rule, in Python's order, not the
        database collation's)."""
        size = len(delete.partition)
        conditions = [sql.SQL("{} = {}::{}").format(sql.Identifier(c), sql.Literal(v),
                                                    sql.SQL(table.columns[c]))
                      for c, v in zip(key_columns[:size], delete.partition, strict=True)]
        return self._rows(conn, table, key_columns, sql.SQL(" AND ").join(conditions))

    def _expired(self, conn: psycopg.Connection, tables: TargetTables,
                 target: dict[TableName, TargetTable]) -> list[Revisit]:
        if not self.sweep_due():
            return []
        self._swept_at = time.monotonic()
        found: list[Revisit] = []
        for name in self._tables:
            table = target.get(name) or tables.lookup(name)
            if table is None:
                continue
            key_columns = self._key_columns.get(name, table.key)
            found += self._rows(conn, table, key_columns, sql.SQL("{} <= now()").format(
                sql.Identifier(EXPIRES_AT_COLUMN)))
        return found

    def _rows(self, conn: psycopg.Connection, table: TargetTable, key_columns: tuple[str, ...],
              where: sql.Composable) -> list[Revisit]:
        """The keys (in the order state keys are made of) of the rows matching `where` that
        are this shard's: every such row, since another shard's rows may be most of them."""
        query = sql.SQL("SELECT {} FROM {} WHERE {}").format(
            sql.SQL(", ").join(map(sql.Identifier, key_columns)), table.ident, where)
        found: list[Revisit] = []
        # planned each time (not prepared): a generic plan made while the table was small scans
        # it whole ever after, where a plan for now() probes the expiry index
        for row in conn.execute(query, prepare=False):
            row_id = state_key(table.name, tuple(row))
            if shard_of(row_id, self._shards) == self._shard:
                found.append((table.name, key_columns, tuple(row), row_id))
        return found


def _target(unit: CellUnit, tables: TargetTables) -> TargetTable:
    """The target table of a change or a run (a run's table is resolved once, by its schema)."""
    if type(unit) is CellRun:
        return tables.known(unit.schema) or tables.for_event(unit.changes()[0][1])
    return tables.for_event(unit)


def table_of(unit: CellUnit) -> TableName:
    """The table of a change or a run."""
    return unit.schema.table if type(unit) is CellRun else unit.table


def key_columns_of(unit: CellUnit) -> tuple[str, ...]:
    """The key columns of a change or a run, in the order of its key's values."""
    return unit.schema.key if type(unit) is CellRun else unit.key_columns


def _add_outcomes(batch: ShardBatch, decision: CellDecision | NativeCellDecision) -> None:
    """A decision's stale changes, its applied and duplicate counts and its metrics counts."""
    batch.stale += decision.stale
    batch.applied += decision.applied
    batch.duplicates += decision.duplicates
    for key, n in decision.counts.items():
        batch.counts[key] = batch.counts.get(key, 0) + n


def known_deletes(conn: psycopg.Connection, tables: list[TableName]) -> Deletions:
    """The partition and range deletions kept of `tables`."""
    found = Deletions()
    for bounds, ts_us in conn.execute(
            "SELECT bounds, ts_us FROM cdc.cell_range_deletes WHERE table_name = ANY(%s)",
            ([str(t) for t in tables],)):
        found.add(RangeDelete.from_json(bounds, ts_us))
    return found
