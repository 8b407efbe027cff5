"""One shard's batch as one Postgres transaction: rows, audit, DLQ, offsets and commit sequence.

Rows go through staged `COPY` into a temporary table and one version-guarded statement per
(table, column set): a lower `_cdc_version` never changes a row, whatever the caches say
(DESIGN invariant 2), and a hard-deleted key stays fenced by its row in `cdc.tombstones`.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from operator import itemgetter
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from operators.cell_rows import CellWrite, RangeDelete
from operators.cell_writer import CellWriter, StagedCells
from operators.events import DlqRecord, Op, TableSchema, TruncateEvent
from operators.keys import key_json_of
from operators.lww import RowWrite, StaleEvent
from operators.settings import DeleteMode
from operators.target_tables import (
    DELETED_COLUMN,
    UPDATED_AT_COLUMN,
    VERSION_COLUMN,
    TargetTable,
)
from operators.versions import describe_version

KEY_COLUMN = "_cdc_key"


class StagedKind(IntEnum):
    """What the native shard step's stage rows are (the codes of `native/src/run.rs`)."""

    UPSERT = 0  # every column of the image
    DELETE = 1  # the key columns
    DELETE_WITH_IMAGE = 2  # a soft delete keeping the batch's earlier image: every column


@dataclass(frozen=True, slots=True)
class StagedRows:
    """Stage rows formatted by the native shard step: one table schema's rows of one kind."""

    table: TargetTable
    schema: TableSchema
    kind: StagedKind
    rows: bytes


class ShardOwnershipError(RuntimeError):
    """Postgres holds another commit of a shard than the one this process follows: another
    process committed it too (two owners of one shard). Not retried: the flow stops."""


def new_commit_id() -> bytes:
    return os.urandom(16)


@dataclass(slots=True)
class ShardBatch:
    """Everything one shard commits at once (several shards' batches share a transaction):
    commit `seq`, which follows commit `seq - 1`, with a random id that tells it from another
    owner's commit `seq` of the same shard."""

    shard: int
    seq: int
    commit_id: bytes = field(default_factory=new_commit_id)
    writes: list[tuple[TargetTable, RowWrite]] = field(default_factory=list)
    staged: list[StagedRows] = field(default_factory=list)
    stale: list[StaleEvent] = field(default_factory=list)
    dlq: list[DlqRecord] = field(default_factory=list)
    truncates: list[tuple[TargetTable | None, TruncateEvent]] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    floors: dict[str, bytes] = field(default_factory=dict)
    cell_writes: list[tuple[TargetTable, CellWrite]] = field(default_factory=list)
    cell_staged: list[StagedCells] = field(default_factory=list)
    range_deletes: list[RangeDelete] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0
    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)  # events by (table,
    # op, outcome) for `operators.metrics` (DLQ rows are counted from `dlq`)


def _key_text(row_id: bytes) -> str:
    """The key's JSON (already encoded in the row id), as text for a jsonb column."""
    return key_json_of(row_id).decode()


class _Kind(Enum):
    UPSERT = "upsert"
    SOFT_DELETE = "soft delete"  # an upsert that flags the row and keeps its last values
    HARD_DELETE = "hard delete"  # delete the row, leave a tombstone


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything to write one group, composed once per (table, kind, columns) and connection:
    a session temp table (emptied at each commit), its COPY, and the guarded statements. No two
    groups of one transaction share a plan, so no two statements share a stage."""

    copy: sql.Composed
    statements: tuple[sql.Composed, ...]
    values_of: Callable[[dict[str, Any]], tuple[Any, ...]]
    json_at: tuple[int, ...]


def stage_columns(key_columns: tuple[str, ...], present: tuple[str, ...]) -> tuple[str, ...]:
    """The stage's columns for rows with `present` columns: the key's, then the rest sorted."""
    return (*key_columns, *sorted(c for c in present if c not in key_columns))


def json_columns(table: TargetTable, columns: tuple[str, ...]) -> tuple[int, ...]:
    """Positions of `columns` whose target column is JSON: their values are written as `Jsonb`,
    so their stage rows cannot be formatted natively."""
    return tuple(i for i, c in enumerate(columns) if table.columns.get(c) in ("jsonb", "json"))


def older_than(row_version: sql.Composable, version: sql.Composable) -> sql.Composable:
    """`row_version` ranks below `version`: a row the table held before the flow first wrote to
    it has no version (NULL) and ranks below every change."""
    return sql.SQL("({0} IS NULL OR {0} < {1})").format(row_version, version)


def _values_getter(columns: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    if len(columns) == 1:
        only = columns[0]
        return lambda values: (values[only],)
    return itemgetter(*columns)


class PgShardWriter:
    """Applies `ShardBatch`es for one flow on one connection (shared by the shards of a worker)."""

    def __init__(self, conn: psycopg.Connection, flow_id: str, delete_mode: DeleteMode) -> None:
        self._conn = conn
        self._flow_id = flow_id
        self._soft = delete_mode is DeleteMode.SOFT
        self._plans: dict[tuple[str, _Kind, tuple[str, ...]], _Plan] = {}
        self._audit_stages: set[str] = set()
        self._cells = CellWriter(conn)

    def write(self, batches: list[ShardBatch],
              before_commit: Callable[[], object] | None = None) -> None:
        """Commit `batches` in one transaction (the caller retries transient failures);
        `before_commit` is called last inside it: if it raises, the transaction rolls back.

        Every stage is filled first (`COPY` cannot share a round trip), then every guarded
        statement, the offsets and the commit sequences go in one round trip: each round trip
        is a wait after which this thread must get the interpreter lock back from the worker.
        Each shard's sequence moves from `seq - 1` only: if another process committed the shard
        meanwhile, `ShardOwnershipError` rolls the transaction back."""
        with self._conn.transaction():
            for batch in batches:
                for table, truncate in batch.truncates:
                    self._truncate(table, truncate)
            groups = self._groups([w for batch in batches for w in batch.writes])
            staged: dict[tuple[TargetTable, _Kind, tuple[str, ...]], list[bytes]] = (
                defaultdict(list))
            for batch in batches:
                for rows in batch.staged:
                    staged[self._staged_group(rows)].append(rows.rows)
            commits, offsets = self._progress_sql(batches)
            statements: list[sql.Composable] = [commits]  # its result is the cursor's first
            for group in dict.fromkeys([*groups, *staged]):
                plan = self._plan(*group)
                self._copy(plan, groups.get(group, []), staged.get(group, []))
                statements += plan.statements
            self._cells.write([w for batch in batches for w in batch.cell_writes],
                              [s for batch in batches for s in batch.cell_staged])
            self._cells.record_deletes([d for batch in batches for d in batch.range_deletes])
            self._stale([s for batch in batches for s in batch.stale])
            self._dlq([r for batch in batches for r in batch.dlq])
            statements.append(offsets)
            moved = self._conn.execute(sql.SQL("; ").join(statements)).fetchall()
            self._check_commits(batches, {shard for shard, in moved})
            if before_commit is not None:
                before_commit()

    def _progress_sql(self, batches: list[ShardBatch]) -> tuple[sql.Composed, sql.Composed]:
        """Every shard's commit, which returns the shards whose sequence it moved, and the
        upsert of every (shard, partition)'s next offset: one statement each (values as
        literals: the statements share a round trip with others, which leaves no room for bound
        parameters)."""
        shards: list[int] = []
        topics: list[str] = []
        partitions: list[int] = []
        next_offsets: list[int] = []
        for b in batches:
            for (topic, partition), offset in b.offsets.items():
                shards.append(b.shard)
                topics.append(topic)
                partitions.append(partition)
                next_offsets.append(offset)
        flow = sql.Literal(self._flow_id)
        offsets = sql.SQL(
            """INSERT INTO cdc.offsets (flow_id, shard, topic, partition, next_offset)
               SELECT {flow}, u.* FROM unnest({shards}::int[], {topics}::text[],
                                              {partitions}::int[], {offsets}::bigint[]) u
               ON CONFLICT (flow_id, shard, topic, partition)
               DO UPDATE SET next_offset = excluded.next_offset, updated_at = now()"""
        ).format(flow=flow, shards=sql.Literal(shards), topics=sql.Literal(topics),
                 partitions=sql.Literal(partitions), offsets=sql.Literal(next_offsets))
        commits = sql.SQL(
            """INSERT INTO cdc.shard_commits (flow_id, shard, seq, commit_id)
               SELECT {flow}, u.* FROM unnest({shards}::int[], {seqs}::bigint[],
                                              {ids}::bytea[]) u
               ON CONFLICT (flow_id, shard)
               DO UPDATE SET seq = excluded.seq, commit_id = excluded.commit_id,
                             committed_at = now()
               WHERE cdc.shard_commits.seq = excluded.seq - 1
               RETURNING shard"""
        ).format(flow=flow, shards=sql.Literal([b.shard for b in batches]),
                 seqs=sql.Literal([b.seq for b in batches]),
                 ids=sql.Literal([b.commit_id for b in batches]))
        return commits, offsets

    def _check_commits(self, batches: list[ShardBatch], moved: set[int]) -> None:
        """Raise unless every batch moved its shard's sequence."""
        lost = [b for b in batches if b.shard not in moved]
        if lost:
            raise ShardOwnershipError(
                f"flow {self._flow_id!r}: cdc.shard_commits is no longer at the commit before "
                + ", ".join(f"shard {b.shard}'s commit {b.seq}" for b in lost)
                + ": another process committed the shard (is it owned twice? only one "
                "replicator may run a flow's shard); rolled back")

    def _groups(self, writes: list[tuple[TargetTable, RowWrite]]):
        """Writes grouped by (table, kind, columns), columns as key columns + sorted others
        (a hard delete needs the key columns only)."""
        groups: dict[tuple[TargetTable, _Kind, tuple[str, ...]], list[RowWrite]] = (
            defaultdict(list))
        canonical: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[str, ...]] = {}
        delete_kind = _Kind.SOFT_DELETE if self._soft else _Kind.HARD_DELETE
        for table, write in writes:
            key = write.event.key_columns
            kind = _Kind.UPSERT if write.op is Op.UPSERT else delete_kind
            present = () if kind is _Kind.HARD_DELETE else tuple(write.values or ())
            columns = canonical.get((key, present))
            if columns is None:
                columns = canonical[(key, present)] = stage_columns(key, present)
            groups[(table, kind, columns)].append(write)
        return groups

    def _staged_group(self, rows: StagedRows) -> tuple[TargetTable, _Kind, tuple[str, ...]]:
        key = rows.schema.key
        if rows.kind is StagedKind.DELETE:
            return rows.table, _Kind.SOFT_DELETE if self._soft else _Kind.HARD_DELETE, key
        kind = _Kind.UPSERT if rows.kind is StagedKind.UPSERT else _Kind.SOFT_DELETE
        return rows.table, kind, stage_columns(key, tuple(c.name for c in rows.schema.columns))

    def _copy(self, plan: _Plan, writes: list[RowWrite], staged: list[bytes]) -> None:
        """COPY the group's rows into its stage (its statements run later). A row the native
        decoder formatted (`ChangeEvent.copy_row`: every column, in stage order) goes as is
        when the write's values are that event's own and no column needs `Jsonb`; `staged`
        rows, formatted by the native shard step, go as they are."""
        values_of, json_at = plan.values_of, plan.json_at
        formatted = staged[:]  # sent at once: each `copy.write` is a libpq call
        with self._conn.cursor().copy(plan.copy) as copy:
            for write in writes:
                event, values = write.event, write.values
                if values is event.values and event.copy_row is not None and not json_at:
                    formatted.append(event.copy_row)
                    continue
                if values is None:  # a delete without an image: its columns are the key's
                    row = event.key
                else:
                    try:
                        row = values_of(values)
                    except KeyError:  # a key column missing from the image: use the key
                        row = values_of({**dict(zip(event.key_columns, event.key, strict=True)),
                                         **values})
                if json_at:
                    row = tuple(Jsonb(v) if i in json_at and v is not None else v
                                for i, v in enumerate(row))
                copy.write_row((*row, _key_text(event.row_id), write.version))
            if formatted:
                copy.write(b"".join(formatted))

    def _plan(self, table: TargetTable, kind: _Kind, columns: tuple[str, ...]) -> _Plan:
        cache_key = (str(table.name), kind, columns)
        plan = self._plans.get(cache_key)
        if plan is None:
            stage = sql.Identifier(f"_cdc_stage_{len(self._plans)}")
            defs = [sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(table.columns[c]))
                    for c in columns]
            defs += [sql.SQL(f"{KEY_COLUMN} jsonb"), sql.SQL(f"{VERSION_COLUMN} bytea")]
            self._conn.execute(sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DELETE ROWS").format(
                stage, sql.SQL(", ").join(defs)))
            copy = sql.SQL("COPY {} ({}) FROM STDIN").format(
                stage, sql.SQL(", ").join(map(sql.Identifier,
                                              [*columns, KEY_COLUMN, VERSION_COLUMN])))
            statements = (self._hard_delete_sql(table, columns, stage)
                          if kind is _Kind.HARD_DELETE
                          else (self._upsert_sql(table, columns, stage,
                                                 deleted=kind is _Kind.SOFT_DELETE),))
            json_at = json_columns(table, columns)
            plan = self._plans[cache_key] = _Plan(copy, statements, _values_getter(columns),
                                                  json_at)
        return plan

    def _upsert_sql(self, table: TargetTable, columns: tuple[str, ...], stage: sql.Identifier,
                    deleted: bool) -> sql.Composed:
        extra_cols = [UPDATED_AT_COLUMN] + ([DELETED_COLUMN] if self._soft else [])
        extra_vals = [sql.SQL("now()")] + ([sql.Literal(deleted)] if self._soft else [])
        non_key = [c for c in columns if c not in table.key]
        updates = [sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c))
                   for c in [*non_key, VERSION_COLUMN, *extra_cols]]
        return sql.SQL(
            """INSERT INTO {target} ({cols}, {version}, {extra_cols})
               SELECT {s_cols}, s.{version}, {extra_vals} FROM {stage} s
               WHERE s.{version} > {floor} {fence}
               ON CONFLICT ({key}) DO UPDATE SET {updates}
               WHERE {older}"""
        ).format(
            target=table.ident,
            cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
            s_cols=sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c))
                                      for c in columns),
            version=sql.Identifier(VERSION_COLUMN),
            extra_cols=sql.SQL(", ").join(map(sql.Identifier, extra_cols)),
            extra_vals=sql.SQL(", ").join(extra_vals),
            stage=stage,
            floor=self._floor_sql(table),
            fence=sql.SQL("") if self._soft else self._tombstone_fence(table),
            key=sql.SQL(", ").join(map(sql.Identifier, table.key)),
            updates=sql.SQL(", ").join(updates),
            older=older_than(sql.SQL("{}.{}").format(table.ident, sql.Identifier(VERSION_COLUMN)),
                             sql.SQL("excluded.{}").format(sql.Identifier(VERSION_COLUMN))),
        )

    @staticmethod
    def _floor_sql(table: TargetTable) -> sql.Composable:
        return sql.SQL(
            "coalesce((SELECT tr.version FROM cdc.truncations tr WHERE tr.table_name = {}), "
            "''::bytea)"
        ).format(sql.Literal(str(table.name)))

    @staticmethod
    def _tombstone_fence(table: TargetTable) -> sql.Composable:
        return sql.SQL(
            "AND NOT EXISTS (SELECT 1 FROM cdc.tombstones tb WHERE tb.table_name = {} "
            "AND tb.key = s.{} AND tb.version >= s.{})"
        ).format(sql.Literal(str(table.name)), sql.Identifier(KEY_COLUMN),
                 sql.Identifier(VERSION_COLUMN))

    @staticmethod
    def _hard_delete_sql(table: TargetTable, key_columns: tuple[str, ...],
                         stage: sql.Identifier) -> tuple[sql.Composed, ...]:
        """Delete the rows and leave a tombstone that fences older upserts of the same key.

        The delete probes the target's primary key once per staged row. Left to itself the
        planner, which never sees statistics for the stage, estimates it at ~800 rows and hashes
        the whole target table instead: ~8 ms per commit for 30k rows, growing with the table,
        for a few hundred deletes (~0.4 ms by index)."""
        version = sql.Identifier(VERSION_COLUMN)
        delete = sql.SQL(
            "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off; "
            "DELETE FROM {target} t USING {stage} s WHERE {match} AND {older}; "
            "RESET enable_hashjoin; RESET enable_mergejoin"
        ).format(
            target=table.ident, stage=stage,
            older=older_than(sql.SQL("t.{}").format(version), sql.SQL("s.{}").format(version)),
            match=sql.SQL(" AND ").join(sql.SQL("t.{0} = s.{0}").format(sql.Identifier(c))
                                        for c in key_columns),
        )
        tombstone = sql.SQL(
            """INSERT INTO cdc.tombstones (table_name, key, version)
               SELECT {name}, s.{key}, s.{version} FROM {stage} s
               ON CONFLICT (table_name, key) DO UPDATE
               SET version = excluded.version, deleted_at = now()
               WHERE cdc.tombstones.version < excluded.version"""
        ).format(name=sql.Literal(str(table.name)), key=sql.Identifier(KEY_COLUMN),
                 version=version, stage=stage)
        return delete, tombstone

    def _truncate(self, table: TargetTable | None, event: TruncateEvent) -> None:
        self._conn.execute(
            """INSERT INTO cdc.truncations (table_name, version) VALUES (%s, %s)
               ON CONFLICT (table_name) DO UPDATE SET version = excluded.version,
               truncated_at = now() WHERE cdc.truncations.version < excluded.version""",
            (str(event.table), event.version),
        )
        if table is not None:
            self._conn.execute(sql.SQL("DELETE FROM {0} WHERE {1} IS NULL OR {1} <= %s").format(
                table.ident, sql.Identifier(VERSION_COLUMN)), (event.version,))
        self._conn.execute("DELETE FROM cdc.tombstones WHERE table_name = %s AND version <= %s",
                           (str(event.table), event.version))

    def _stale(self, stale: list[StaleEvent]) -> None:
        if not stale:
            return
        self._audit("stale_events", _STALE_COLUMNS, [
            (self._flow_id, s.topic, s.partition, s.offset, str(s.table), _key_text(s.row_id),
             describe_version(s.version), describe_version(s.applied_version), s.reason)
            for s in stale])

    def _dlq(self, records: list[DlqRecord]) -> None:
        if not records:
            return
        self._audit("dlq", _DLQ_COLUMNS, [
            (self._flow_id, r.topic, r.partition, r.offset, r.raw_key, r.raw_value, r.error_type,
             r.error) for r in records])

    def _audit(self, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        """Add audit rows to `cdc.<table>`, keeping the row already there for a Kafka position:
        a message read again (a replay from an earlier offset) is the same message, recorded once.
        Through a stage, since `COPY` cannot skip a conflicting row."""
        stage = sql.Identifier(f"_cdc_audit_{table}")
        if table not in self._audit_stages:
            self._conn.execute(sql.SQL(
                "CREATE TEMP TABLE IF NOT EXISTS {} AS SELECT {} FROM {} WITH NO DATA").format(
                    stage, sql.SQL(", ").join(map(sql.Identifier, columns)),
                    sql.Identifier("cdc", table)))
            self._audit_stages.add(table)
        names = sql.SQL(", ").join(map(sql.Identifier, columns))
        with self._conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(stage, names)) \
                as copy:
            for row in rows:
                copy.write_row(row)
        self._conn.execute(sql.SQL(
            "INSERT INTO {target} ({names}) SELECT {names} FROM {stage} "
            "ON CONFLICT (flow_id, topic, partition, \"offset\") DO NOTHING; TRUNCATE {stage}"
        ).format(target=sql.Identifier("cdc", table), names=names, stage=stage))


_STALE_COLUMNS = ("flow_id", "topic", "partition", "offset", "table_name", "key", "version",
                  "applied_version", "reason")
_DLQ_COLUMNS = ("flow_id", "topic", "partition", "offset", "raw_key", "raw_value", "error_type",
                "error")
