"""The shard sink: per-key LWW against RocksDB, then one Postgres transaction per batch.

One bytewax sink partition per shard. A shard buffers what it receives and commits when the
buffer is full, old enough (progress markers wake it every `REPLICATE_MARKER_MS`), or at epoch
close. A commit is: LWW decisions → RocksDB write (with undo) → Postgres transaction holding
rows, audit, DLQ and offsets. Before each commit the shard checks that RocksDB is in step with
Postgres and repairs it if not (rollback of one commit, or a rebuild from Postgres).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import orjson
import psycopg
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from operators import metrics
from operators.events import ChangeEvent, DlqRecord, ProgressMarker, ShardItem, TruncateEvent
from operators.keys import key_json, state_key
from operators.lww import decide_batch
from operators.offsets import shard_offsets, shard_seq
from operators.pg_session import PgSession, thread_session
from operators.pg_writer import ShardBatch
from operators.rebuild import committed_floors, committed_states
from operators.retry import first_line, retrying
from operators.settings import Settings
from operators.state_store import ShardStateStore
from operators.target_tables import TableProblem, TargetTable

log = logging.getLogger(__name__)
MARKER_ONLY_FLUSH_S = 5.0
Position = tuple[str, int]
Unit = ChangeEvent | DlqRecord | TruncateEvent


def shard_part_name(shard: int) -> str:
    """Zero-padded so bytewax's ordered partition list is in shard order."""
    return f"shard-{shard:05d}"


@dataclass(slots=True)
class Pending:
    units: list[Unit] = field(default_factory=list)
    markers: dict[Position, int] = field(default_factory=dict)
    since: float | None = None

    def take(self) -> tuple[list[Unit], dict[Position, int]]:
        units, markers = self.units, self.markers
        self.units, self.markers, self.since = [], {}, None
        return units, markers


def _offsets_of(units: list[Unit], markers: dict[Position, int]) -> dict[Position, int]:
    offsets = dict(markers)
    for unit in units:
        pos = (unit.topic, unit.partition)
        if unit.offset + 1 > offsets.get(pos, -1):
            offsets[pos] = unit.offset + 1
    return offsets


class ShardPartition(StatefulSinkPartition[ShardItem, None]):
    def __init__(self, settings: Settings, shard: int) -> None:
        self._settings = settings
        self._shard = shard
        self._session: PgSession = thread_session(settings)
        path = settings.state_dir / settings.flow_id / shard_part_name(shard)
        self._store = ShardStateStore(path)
        self._pending = Pending()
        self._in_step = False
        self._committed: dict[Position, int] = {}
        self._floors: dict[str, bytes] = {}
        retrying(f"shard {shard}: open", self._bring_in_step, on_retry=self._session.reset,
                 cap_s=settings.retry_max_s)

    # -- bytewax interface ------------------------------------------------------------------

    def write_batch(self, values: list[ShardItem]) -> None:
        pending = self._pending
        for item in values:
            if type(item) is ProgressMarker:
                pos = (item.topic, item.partition)
                if item.next_offset > max(self._committed.get(pos, 0), pending.markers.get(pos, 0)):
                    pending.markers[pos] = item.next_offset
            elif item.offset >= self._committed.get((item.topic, item.partition), 0):
                pending.units.append(item)
            else:
                continue
            if pending.since is None:
                pending.since = time.monotonic()
        if self._due():
            self.flush()

    def snapshot(self) -> None:
        if self._pending.since is not None:
            self.flush()
        return None

    def close(self) -> None:
        self.snapshot()
        self._store.close()

    # -- committing ---------------------------------------------------------------------------

    def _due(self) -> bool:
        pending = self._pending
        if pending.since is None:
            return False
        if len(pending.units) >= self._settings.batch_size:
            return True
        age = time.monotonic() - pending.since
        limit = self._settings.batch_ms / 1000 if pending.units else MARKER_ONLY_FLUSH_S
        return age >= limit

    def flush(self) -> None:
        units, markers = self._pending.take()
        segment: list[Unit] = []
        for unit in units:
            if type(unit) is TruncateEvent:
                self._commit(segment, {})
                self._commit([unit], {})
                segment = []
            else:
                segment.append(unit)
        self._commit(segment, markers)

    def _commit(self, units: list[Unit], markers: dict[Position, int]) -> None:
        """Commit `units`; a unit Postgres refuses (bad value) is isolated by bisection and
        goes to the DLQ alone, so the rest of the batch still lands."""
        if not units and not markers:
            return
        try:
            retrying(f"shard {self._shard}: commit", lambda: self._commit_once(units, markers),
                     on_retry=self._after_failure, cap_s=self._settings.retry_max_s)
        except (psycopg.DataError, psycopg.IntegrityError) as exc:  # a value Postgres refuses
            self._after_failure()
            if len(units) > 1:
                half = len(units) // 2
                self._commit(units[:half], {})
                self._commit(units[half:], markers)
                return
            refused = _refused(units[0], exc) if units else None
            if refused is None:
                raise
            self._commit([refused], markers)

    def _after_failure(self) -> None:
        metrics.RETRIES.labels("commit").inc()
        self._in_step = False
        self._session.reset()

    def _commit_once(self, units: list[Unit], markers: dict[Position, int]) -> None:
        if not self._in_step:
            self._bring_in_step()
        units = [u for u in units if u.offset >= self._committed.get((u.topic, u.partition), 0)]
        started = time.perf_counter()
        batch = ShardBatch(seq=self._store.seq + 1, offsets=_offsets_of(units, markers))
        events: list[tuple[bytes, ChangeEvent]] = []
        table_of: dict[int, TargetTable] = {}
        floors: dict[str, bytes] = {}
        tables = self._session.tables
        for unit in units:
            kind = type(unit)
            if kind is ChangeEvent:
                try:
                    table_of[id(unit)] = tables.for_event(unit)
                except TableProblem as problem:
                    batch.dlq.append(_to_dlq(unit, problem.error_type, str(problem)))
                    continue
                events.append((state_key(unit.table, unit.key), unit))
            elif kind is DlqRecord:
                batch.dlq.append(unit)
            else:
                batch.truncates.append((tables.lookup(unit.table), unit))
                name = str(unit.table)
                if unit.version > self._floors.get(name, b""):
                    floors[name] = unit.version
        keys = list(dict.fromkeys(k for k, _ in events))
        states = dict(zip(keys, self._store.get_many(keys), strict=True))
        decision = decide_batch(events, states, {**self._floors, **floors})
        batch.writes = [(table_of[id(w.event)], w) for w in decision.writes.values()]
        batch.stale = decision.stale
        self._store.commit(batch.seq, decision.new_states, floors)
        self._in_step = False  # until Postgres confirms the same seq
        self._session.writer.write(self._shard, batch)
        self._in_step = True
        self._floors.update(floors)
        self._committed.update(batch.offsets)
        metrics.COMMITS.inc()
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
        metrics.EVENTS.labels("applied").inc(decision.applied)
        metrics.EVENTS.labels("duplicate").inc(decision.duplicates)
        metrics.EVENTS.labels("stale").inc(len(decision.stale))
        metrics.EVENTS.labels("dlq").inc(len(batch.dlq))

    # -- recovery -----------------------------------------------------------------------------

    def _bring_in_step(self) -> None:
        """Make RocksDB equal to what Postgres committed for this shard (invariant 5)."""
        conn = self._session.conn
        flow_id, shard = self._settings.flow_id, self._shard
        pg_seq = shard_seq(conn, flow_id, shard)
        local_seq = self._store.seq
        if local_seq == pg_seq + 1:
            log.info("shard %d: undoing commit %d that Postgres did not keep", shard, local_seq)
            self._store.rollback()
        elif local_seq != pg_seq:
            log.warning("shard %d: state at commit %d, Postgres at %d: rebuilding from Postgres",
                        shard, local_seq, pg_seq)
            self._store.clear()
            with conn.transaction():
                self._store.load(pg_seq, committed_states(conn, flow_id, shard,
                                                          self._settings.shards),
                                 committed_floors(conn, flow_id))
        self._committed = shard_offsets(conn, flow_id, shard)
        self._floors = self._store.floors()
        self._in_step = True


def _to_dlq(event: ChangeEvent, error_type: str, error: str) -> DlqRecord:
    """A DLQ record for an event that decoded but cannot be written. Raw bytes are not kept past
    decoding, so the record carries the decoded key and values as JSON instead."""
    detail = orjson.dumps({"table": str(event.table), "values": event.values}, default=str)
    return DlqRecord(event.topic, event.partition, event.offset, key_json(event.key), detail,
                     error_type, error)


def _refused(unit: Unit, exc: psycopg.Error) -> DlqRecord | None:
    """The DLQ record replacing a change event Postgres refused; None if there is none."""
    if type(unit) is not ChangeEvent:
        return None
    return _to_dlq(unit, "write_refused", f"Postgres refused the row: {first_line(exc)}")


class ShardSink(FixedPartitionedSink[ShardItem, None]):
    """`(shard key, item)` pairs in; the key is `shard_part_name(shard)`."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def list_parts(self) -> list[str]:
        return [shard_part_name(k) for k in range(self._settings.shards)]

    def part_fn(self, item_key: str) -> int:
        return int(item_key[6:])

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> ShardPartition:
        return ShardPartition(self._settings, int(for_part[6:]))


