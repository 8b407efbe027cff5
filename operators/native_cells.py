"""The cell step in Rust (`cdc_native.CellBatch`): a shard's changes of Cassandra-model tables
decided as `operators.cell_rows.decide_cells` decides them, and their rows staged as
`CellWriter` stages them, without a Python object per change or row.

The input is `CellRun`s: changes of one table and schema for one shard, made by the native
ScyllaDB decoder or from the Python decoder's `CellChange`s (`CellRun.from_changes`, which takes
the values it has a native form for). Python makes objects only for stale changes' audit rows.
Python decides instead (`None`) what the native step does not cover: partition and range
deletions (the batch's, or one kept for a table of the batch), rows revisited by an expiry
sweep, a value without a native form, a table whose key is not the changes' key or that has
`json`/`jsonb` columns (their values go as `Jsonb`), a stored state that is not a cell row's, a
written column the table lacks
(`tests/unit/test_native_cells.py` compares the two paths).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from formats.cells import CellChange
from operators.cell_rows import STALE_CELLS, Place
from operators.cell_writer import StagedCells, data_columns
from operators.lww import StaleEvent
from operators.native_decode import CellRun
from operators.pg_writer import json_columns
from operators.target_tables import TargetTable

try:
    from cdc_native import CellBatch
except ImportError:  # not built: the Python path decides every change
    CellBatch = None

Stored = Callable[[list[bytes]], list[bytes | None]]


@dataclass(slots=True)
class NativeCellDecision:
    staged: list[StagedCells]
    stale: list[StaleEvent]
    applied: int
    duplicates: int
    counts: dict[tuple[str, str, str], int]
    states: list[tuple[bytes, bytes]]
    replaced: list[tuple[bytes, bytes | None]]


def cell_changes(units: Sequence[CellChange | CellRun]) -> list[CellChange]:
    """`units` (changes and runs) as changes, in order."""
    changes: list[CellChange] = []
    for unit in units:
        if type(unit) is CellRun:
            changes += [change for _, change in unit.changes()]
        else:
            changes.append(unit)
    return changes


def cell_runs(units: Sequence[CellChange | CellRun]) -> list[CellRun] | None:
    """`units` as runs, in order: consecutive changes of one schema become one run. None when a
    change has no native form (a partition or range deletion, a value without a native form)."""
    runs: list[CellRun] = []
    group: list[CellChange] = []

    def flush() -> bool:
        if group:
            run = CellRun.from_changes(group)
            if run is None:
                return False
            runs.append(run)
            group.clear()
        return True

    for unit in units:
        if type(unit) is CellRun:
            if not flush():
                return None
            runs.append(unit)
        elif not unit.row_id:
            return None
        else:
            if group and group[0].schema is not unit.schema and not flush():
                return None
            group.append(unit)
    return runs if flush() else None


def decide_cell_runs(runs: list[CellRun], targets: list[TargetTable], stored: Stored,
                     now_us: int) -> NativeCellDecision | None:
    """The decision for `runs` (a shard's cell changes of one commit, in arrival order; run i
    goes to `targets[i]`), or None: decide their changes in Python."""
    tables: list[TargetTable] = []
    specs: list[tuple[int, list[int], list[str]]] = []
    for run, table in zip(runs, targets, strict=True):
        columns = data_columns(table)
        if set(table.key) != set(run.schema.key) or json_columns(table, columns):
            return None  # another key, or values to write as Jsonb
        if table not in tables:
            tables.append(table)
        specs.append((tables.index(table), [run.schema.key.index(c) for c in table.key],
                      list(columns)))
    batch = CellBatch(runs)
    decided = batch.decide(stored(batch.keys()), specs, now_us)
    if decided is None:
        return None
    applied, duplicates, counts, states, replaced, staged, stale = decided
    return NativeCellDecision(
        staged=[StagedCells(tables[t], text, Counter({(Place(place), alive): n
                                                      for (place, alive), n in moves.items()}))
                for t, text, moves in staged],
        stale=[StaleEvent(runs[i].topic, partition, offset, runs[i].schema.table, row_id,
                          version, newest, STALE_CELLS)
               for i, partition, offset, row_id, version, newest in stale],
        applied=applied, duplicates=duplicates,
        counts=_counts(runs, counts), states=states, replaced=replaced)


def _counts(runs: list[CellRun], counts: list[tuple[int, str, str, int]],
            ) -> dict[tuple[str, str, str], int]:
    out: dict[tuple[str, str, str], int] = {}
    for i, op, outcome, n in counts:
        key = (str(runs[i].schema.table), op, outcome)
        out[key] = out.get(key, 0) + n
    return out
