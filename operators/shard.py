"""One shard: its RocksDB state, its committed offsets, its buffer, and the LWW step of a commit.

A shard does not talk to Postgres on its own; the worker's committer (`operators/committer.py`)
writes the batches of all its shards in one transaction. What a shard guarantees: before it
writes a batch to RocksDB its state there equals what Postgres committed (invariant 5), and the
batch is written, with its undo record, before the transaction that commits it. It may decide a
batch earlier, while the previous one is still in Postgres (`decide_ahead`): that decision is
written only once the previous transaction is confirmed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import psycopg

from formats.cells import CellChange
from operators.cell_shard import CellShard
from operators.events import ChangeEvent, DlqRecord, ProgressMarker, ShardItem, TruncateEvent
from operators.keys import shard_of_position
from operators.lww import decide_batch
from operators.native_decode import CellRun, Run, RunEvents, is_run, run_events
from operators.native_shard import decide_runs, expand
from operators.offsets import shard_commit, shard_offsets
from operators.pg_writer import ShardBatch
from operators.rebuild import committed_floors, committed_states
from operators.shard_dlq import dlq_for
from operators.state_store import ShardStateStore, encode_state
from operators.target_tables import TableProblem, TargetTable, TargetTables

log = logging.getLogger(__name__)
Position = tuple[str, int]
Unit = ChangeEvent | DlqRecord | TruncateEvent | CellChange | Run | CellRun


@dataclass(slots=True)
class Pending:
    """What a shard received and has not committed: units in arrival order, marker offsets."""

    units: list[Unit] = field(default_factory=list)
    markers: dict[Position, int] = field(default_factory=dict)
    since: float | None = None

    def take(self) -> tuple[list[Unit], dict[Position, int]]:
        units, markers = self.units, self.markers
        self.units, self.markers, self.since = [], {}, None
        return units, markers


@dataclass(slots=True)
class Decided:
    """A shard's next commit, decided natively and not yet written to RocksDB."""

    batch: ShardBatch
    states: list[tuple[bytes, bytes]]
    replaced: list[tuple[bytes, bytes | None]]


def offsets_of(units: list[Unit], markers: dict[Position, int]) -> dict[Position, int]:
    """The next offset per partition once `units` and `markers` are committed."""
    offsets = dict(markers)
    for unit in units:
        if is_run(unit):
            for pos, offset in unit.next_offsets().items():
                if offset > offsets.get(pos, -1):
                    offsets[pos] = offset
            continue
        pos = (unit.topic, unit.partition)
        if unit.offset + 1 > offsets.get(pos, -1):
            offsets[pos] = unit.offset + 1
    return offsets


def uncommitted(units: list[Unit], committed: dict[Position, int]) -> list[Unit]:
    """`units` but what is below the committed offset of its partition."""
    kept: list[Unit] = []
    for unit in units:
        if is_run(unit):
            run = unit.since(committed)
            if run is not None:
                kept.append(run)
        elif unit.offset >= committed.get((unit.topic, unit.partition), 0):
            kept.append(unit)
    return kept


class Shard:
    def __init__(self, number: int, store: ShardStateStore, flow_id: str, shards: int,
                 native: bool = True) -> None:
        self.number = number
        self.pending = Pending()
        self.in_step = False
        self._written_seq: int | None = None  # the commit written to RocksDB, awaiting Postgres
        self._store = store
        self._flow_id = flow_id
        self._shards = shards
        self._committed: dict[Position, int] = {}
        self._taken: dict[Position, int] = {}  # marker offsets taken for a commit in flight
        self._floors: dict[str, bytes] = {}
        self._cells = CellShard(number, shards, native)

    def take(self) -> tuple[list[Unit], dict[Position, int]]:
        """What this shard holds, for a commit: its markers then count as handled."""
        units, markers = self.pending.take()
        taken = self._taken
        for pos, offset in markers.items():
            if offset > taken.get(pos, 0):
                taken[pos] = offset
        return units, markers

    def accept(self, items: list[ShardItem | Run]) -> int:
        """Buffer `items`, dropping what this shard already committed or took for a commit;
        returns events added."""
        pending, committed, taken = self.pending, self._committed, self._taken
        units: list[Unit] = []
        for item in items:
            if type(item) is RunEvents:  # a run from another process
                units += item
                continue
            if type(item) is not ProgressMarker:
                units.append(item)
                continue
            pos = (item.topic, item.partition)
            if item.next_offset > max(committed.get(pos, 0), taken.get(pos, 0),
                                      pending.markers.get(pos, 0)):
                pending.markers[pos] = item.next_offset
                if pending.since is None:
                    pending.since = time.monotonic()
        units = uncommitted(units, committed)
        if units:
            pending.units += units
            if pending.since is None:
                pending.since = time.monotonic()
        return sum(len(u) if is_run(u) else 1 for u in units)

    def prepare(self, units: list[Unit], markers: dict[Position, int], conn: psycopg.Connection,
                tables: TargetTables) -> ShardBatch:
        """LWW-decide `units` and write the outcome to RocksDB as the next commit."""
        if not self.in_step:
            self.bring_in_step(conn)
        units = uncommitted(units, self._committed)
        _resolve_run_tables(units, tables)
        decided = self._decide_native(units, markers, tables)
        if decided is not None:
            return self.write_decided(decided)
        batch = ShardBatch(shard=self.number, seq=self._store.seq + 1,
                           offsets=offsets_of(units, markers))
        floors: dict[str, bytes] = {}
        cell_units: list[CellChange | CellRun] = []
        row_units: list[ChangeEvent | Run] = []
        for unit in units:
            kind = type(unit)
            if kind is ChangeEvent or kind is Run:
                row_units.append(unit)
            elif kind is CellChange or kind is CellRun:
                cell_units.append(unit)
            elif kind is DlqRecord:
                batch.dlq.append(unit)
            elif kind is TruncateEvent:
                batch.truncates.append((tables.lookup(unit.table), unit))
                if shard_of_position(unit.topic, unit.partition, unit.offset,
                                     self._shards) == self.number:  # counted once, not per shard
                    key = (str(unit.table), "truncate", "applied")
                    batch.counts[key] = batch.counts.get(key, 0) + 1
                name = str(unit.table)
                if unit.version > max(self._floors.get(name, b""), floors.get(name, b"")):
                    floors[name] = unit.version
        self._awaiting(batch.seq)
        states, replaced = self._decide_events(
            expand(row_units), batch, tables, floors)
        cell_states, cell_replaced = self._cells.decide(cell_units, batch, conn, tables,
                                                        self._store.get_encoded)
        self._store.commit_encoded(batch.seq, batch.commit_id, states + cell_states,
                                   replaced + cell_replaced, floors)
        batch.floors = floors
        return batch

    def decide_ahead(self, units: list[Unit], markers: dict[Position, int],
                     tables: TargetTables) -> Decided | None:
        """The decision `prepare` will make for `units`, made while this worker's previous
        commit is still in Postgres, or None. RocksDB already holds that commit's states, so
        the decision is the same once Postgres confirms it; `write_decided` then writes it.
        Only the native paths qualify: they need no connection (no table to create or change)."""
        if not (self.in_step or self._written_seq == self._store.seq):
            return None  # after a failure: `prepare` first brings the store in step
        return self._decide_native(uncommitted(units, self._committed), markers, tables)

    def write_decided(self, decided: Decided) -> ShardBatch:
        """Write a native decision to RocksDB as the next commit, with its undo record."""
        batch = decided.batch
        if batch.seq != self._store.seq + 1:
            raise RuntimeError(f"shard {self.number}: a decision for commit {batch.seq} cannot "
                               f"follow commit {self._store.seq}")
        self._awaiting(batch.seq)
        self._store.commit_encoded(batch.seq, batch.commit_id, decided.states, decided.replaced,
                                   {})
        return batch

    def _decide_native(self, units: list[Unit], markers: dict[Position, int],
                       tables: TargetTables) -> Decided | None:
        """`units` decided in Rust: row runs by `decide_runs`, cell changes and runs by the
        native cell step (`CellShard.decide_ahead`), DLQ records as they are. Anything else (a
        Python row event, a truncate, a cell change the native step does not take, a table
        to create or change first) sends the whole commit the Python way, as does an expiry
        sweep that is due (`operators/cell_shard.py`)."""
        runs: list[Run] = []
        cells: list[CellChange | CellRun] = []
        for unit in units:
            kind = type(unit)
            if kind is Run:
                runs.append(unit)
            elif kind is CellChange or kind is CellRun:
                cells.append(unit)
            elif kind is not DlqRecord:
                return None
        if not (runs or cells) or self._cells.sweep_due():
            return None
        batch = ShardBatch(shard=self.number, seq=self._store.seq + 1,
                           offsets=offsets_of(units, markers))
        batch.dlq = [u for u in units if type(u) is DlqRecord]
        states: list[tuple[bytes, bytes]] = []
        replaced: list[tuple[bytes, bytes | None]] = []
        if runs:
            native = decide_runs(runs, self._store, tables, self._floors)
            if native is None:
                return None
            batch.staged, batch.stale = native.staged, native.stale
            batch.applied, batch.duplicates = native.applied, native.duplicates
            batch.counts = native.counts
            states, replaced = native.states, native.replaced
        if cells:
            decided = self._cells.decide_ahead(cells, batch, tables, self._store.get_encoded)
            if decided is None:
                return None
            states, replaced = states + decided[0], replaced + decided[1]
        return Decided(batch, states, replaced)

    def _awaiting(self, seq: int) -> None:
        """Commit `seq` goes to RocksDB now: out of step until Postgres confirms it."""
        self.in_step = False
        self._written_seq = seq

    def forget_state(self) -> None:
        """Drop the store's contents: the next commit rebuilds them from Postgres."""
        self._store.clear()
        self.distrust()

    def distrust(self) -> None:
        """A commit failed: check the store against Postgres before the next one."""
        self.in_step = False
        self._written_seq = None

    def _decide_events(self, events: list[ChangeEvent], batch: ShardBatch, tables: TargetTables,
                       floors: dict[str, bytes],
                       ) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes | None]]]:
        """The Python path of `prepare`: `events` decided by `decide_batch`; returns the new
        states and the states they replace, encoded, for the store's commit."""
        table_of: dict[int, TargetTable] = {}
        decided: list[ChangeEvent] = []
        for event in events:
            try:
                table_of[id(event)] = tables.for_event(event)
            except TableProblem as problem:
                batch.dlq.append(dlq_for(event, problem.error_type, str(problem)))
                continue
            decided.append(event)
        keys = list(dict.fromkeys(e.row_id for e in decided))
        states = dict(zip(keys, self._store.get_many(keys), strict=True))
        decision = decide_batch(decided, states, {**self._floors, **floors})
        batch.writes = [(table_of[id(w.event)], w) for w in decision.writes.values()]
        batch.stale = decision.stale
        batch.duplicates = decision.duplicates
        batch.applied = decision.applied
        batch.counts.update(decision.counts)
        return ([(key, encode_state(state)) for key, state in decision.new_states.items()],
                [(key, None if (old := states[key]) is None else encode_state(old))
                 for key in decision.new_states])

    def confirm(self, batch: ShardBatch) -> None:
        """Postgres committed `batch`."""
        self.in_step = True
        self._cells.confirm(batch.range_deletes)
        self._floors.update(batch.floors)
        self._committed.update(batch.offsets)

    def bring_in_step(self, conn: psycopg.Connection) -> None:
        """Make RocksDB equal to what Postgres committed for this shard (invariant 5). A commit
        is known by its sequence number and id: the store's commit N is trusted only if it is
        the commit N Postgres holds, not another owner's commit N of the same shard."""
        pg_seq, pg_id = committed = shard_commit(conn, self._flow_id, self.number)
        local_seq = self._store.seq
        if (local_seq, self._store.commit_id) == committed:
            pass  # in step
        elif self._store.undo_target() == committed:
            log.info("shard %d: undoing commit %d that Postgres did not keep", self.number,
                     local_seq)
            self._store.rollback()
        else:
            log.warning("shard %d: state at commit %d, Postgres at commit %d%s: rebuilding from "
                        "Postgres", self.number, local_seq, pg_seq,
                        " of another owner" if local_seq == pg_seq else "")
            self._store.clear()
            with conn.transaction():
                self._store.load(
                    pg_seq, pg_id,
                    committed_states(conn, self._flow_id, self.number, self._shards),
                    committed_floors(conn, self._flow_id))
        self._committed = shard_offsets(conn, self._flow_id, self.number)
        self._floors = self._store.floors()
        self._cells.load(conn, self._flow_id)
        self.in_step = True

    def close(self) -> None:
        self._store.close()


def _resolve_run_tables(units: list[Unit], tables: TargetTables) -> None:
    """Create or change the tables of runs whose schema is new to this process, from each such
    run's first event, so that the runs can be decided natively (which needs no connection).
    A table problem is left to the Python path, which sends the events to the DLQ."""
    for unit in units:
        if type(unit) is Run and tables.known(unit.schema) is None:
            try:
                tables.for_event(run_events(unit)[0][1])
            except TableProblem:
                continue

