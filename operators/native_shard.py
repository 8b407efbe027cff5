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
from operators.native_decode import NativeBatch, Run, run_events
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


def expand(units: Sequence[object]) -> list:
    """`units` with each run replaced by its change events, in order."""
    if not any(type(unit) is Run for unit in units):
        return list(units)
    expanded: list = []
    for unit in units:
        if type(unit) is Run:
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
        staged=[StagedRows(targets[i], runs[i].schema, StagedKind(kind), rows)
                for i, kind, rows in staged],
        stale=[StaleEvent(runs[i].topic, partition, offset, runs[i].schema.table, row_id, version,
                          applied_version, _REASONS[reason])
               for i, partition, offset, row_id, version, applied_version, reason in stale],
        applied=applied, duplicates=duplicates, states=states, replaced=replaced)


def _native_target(run: Run, tables: TargetTables) -> TargetTable | None:
    """The run's table when its rows can be staged as the native step formats them."""
    schema = run.schema
    table = tables.known(schema)
    if table is None or json_columns(table, tuple(c.name for c in schema.columns)):
        return None
    return table
