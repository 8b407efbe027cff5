"""The shard step for native runs (`operators/native_decode.py`): LWW and stage rows in Rust.

A batch whose change events all came as runs is decided by `cdc_native.NativeBatch` against the
states read from RocksDB — the same outcome as `operators.lww.decide_batch` on the runs' events
(`tests/integration/test_native_shard.py`) — and its rows reach the writer as `COPY` text.
Python objects are made only for stale events' audit rows. Anything else goes back to the
Python path with the runs' events (`expand`): a batch that also holds Python change events, a
table that must be created or changed first (or cannot take the events: its DLQ records), a
table with JSON columns (`Jsonb` values), or a key whose applied events came from two schema
versions in one batch (their images would have to be merged).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from operators.lww import STALE_DELETED, STALE_OLDER, STALE_TRUNCATED, StaleEvent
from operators.metrics import NO_OP, NO_TABLE
from operators.native_decode import NativeBatch, Run, is_run, run_events
from operators.pg_writer import StagedKind, StagedRows, json_columns
from operators.settings import DeleteMode
from operators.state_store import ShardStateStore
from operators.target_tables import TargetTable, TargetTables

_REASONS = (STALE_OLDER, STALE_DELETED, STALE_TRUNCATED)  # by the codes of native/src/run.rs


@dataclass(slots=True)
class NativeDecision:
    staged: list[StagedRows]
    stale: list[StaleEvent]
    applied: int
    duplicates: int
    states: list[tuple[bytes, bytes]]
    replaced: list[tuple[bytes, bytes | None]]
    counts: dict[tuple[str, str, str], int]  # for metrics, `native_counts`


def expand(units: Sequence[object]) -> list:
    """`units` with each run (of row events, or of cell changes) replaced by its events, in
    order."""
    if not any(is_run(unit) for unit in units):
        return list(units)
    expanded: list = []
    for unit in units:
        if is_run(unit):
            expanded += [event for _, event in run_events(unit)]
        else:
            expanded.append(unit)
    return expanded


def decide_runs(runs: list[Run], store: ShardStateStore, tables: TargetTables,
                floors: dict[str, bytes]) -> NativeDecision | None:
    """The decision for `runs` (a shard's change events of one commit, in arrival order), or
    None: decide their events in Python."""
    targets = [_native_target(run, tables) for run in runs]
    if None in targets:
        return None
    batch = NativeBatch(runs)
    decided = batch.decide(store.get_encoded(batch.keys()),
                           [floors.get(str(run.schema.table)) for run in runs],
                           tables.delete_mode is DeleteMode.SOFT)
    if decided is None:
        return None
    applied, duplicates, states, replaced, staged, stale = decided
    return NativeDecision(
        counts=native_counts(runs, duplicates, [entry[0] for entry in stale]),
        staged=[StagedRows(targets[i], runs[i].schema, StagedKind(kind), rows)
                for i, kind, rows in staged],
        stale=[StaleEvent(runs[i].topic, partition, offset, runs[i].schema.table, row_id, version,
                          applied_version, _REASONS[reason])
               for i, partition, offset, row_id, version, applied_version, reason in stale],
        applied=applied, duplicates=duplicates, states=states, replaced=replaced)


def native_counts(runs: list[Run], duplicates: int, stale_runs: list[int],
                  ) -> dict[tuple[str, str, str], int]:
    """Events by (table, op, outcome) from what `NativeBatch.decide` tells: its applied and
    duplicate counts are for the whole batch and it does not count by op, so op is `NO_OP`, and
    when the batch holds duplicates of several tables its applied and duplicate events go under
    `NO_TABLE` (stale events always have their table: each names its run)."""
    events: dict[str, int] = {}
    for run in runs:
        table = str(run.schema.table)
        events[table] = events.get(table, 0) + len(run)
    stale: dict[str, int] = {}
    for index in stale_runs:
        table = str(runs[index].schema.table)
        stale[table] = stale.get(table, 0) + 1
    counts = {(table, NO_OP, "stale"): n for table, n in stale.items()}
    if duplicates and len(events) > 1:
        decided = sum(events.values()) - len(stale_runs)
        counts[(NO_TABLE, NO_OP, "applied")] = decided - duplicates
        counts[(NO_TABLE, NO_OP, "duplicate")] = duplicates
        return counts
    for table, n in events.items():
        counts[(table, NO_OP, "applied")] = n - stale.get(table, 0) - duplicates
        counts[(table, NO_OP, "duplicate")] = duplicates
    return counts


def _native_target(run: Run, tables: TargetTables) -> TargetTable | None:
    """The run's table when its rows can be staged as the native step formats them."""
    schema = run.schema
    table = tables.known(schema)
    if table is None or json_columns(table, tuple(c.name for c in schema.columns)):
        return None
    return table
