"""One shard's batch as one Postgres transaction: rows, audit, DLQ, offsets and commit sequence.

Rows go through staged `COPY` into a temporary table and one version-guarded statement per
(table, column set): a lower `_cdc_version` never changes a row, whatever the caches say
(DESIGN invariant 2), and a hard-deleted key stays fenced by its row in `cdc.tombstones`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from operators.events import DlqRecord, Op, TruncateEvent
from operators.keys import key_json
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


@dataclass(slots=True)
class ShardBatch:
    """Everything one shard commits at once (several shards' batches share a transaction)."""

    shard: int
    seq: int
    writes: list[tuple[TargetTable, RowWrite]] = field(default_factory=list)
    stale: list[StaleEvent] = field(default_factory=list)
    dlq: list[DlqRecord] = field(default_factory=list)
    truncates: list[tuple[TargetTable | None, TruncateEvent]] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    floors: dict[str, bytes] = field(default_factory=dict)
    applied: int = 0
    duplicates: int = 0


def _key_text(key: tuple[Any, ...]) -> str:
    """The key's JSON, as text for a jsonb column of a text COPY."""
    return key_json(key).decode()


def _jsonb_indexes(table: TargetTable, columns: tuple[str, ...]) -> list[int]:
    return [i for i, c in enumerate(columns) if table.columns.get(c) in ("jsonb", "json")]


class PgShardWriter:
    """Applies `ShardBatch`es for one flow on one connection (shared by the shards of a worker)."""

    def __init__(self, conn: psycopg.Connection, flow_id: str, delete_mode: DeleteMode) -> None:
        self._conn = conn
        self._flow_id = flow_id
        self._soft = delete_mode is DeleteMode.SOFT
        self._stages: dict[tuple[str, Op, tuple[str, ...]], sql.Identifier] = {}

    def write(self, batches: list[ShardBatch]) -> None:
        """Commit `batches` in one transaction (the caller retries transient failures)."""
        with self._conn.transaction():
            for batch in batches:
                for table, truncate in batch.truncates:
                    self._truncate(table, truncate)
            writes = [w for batch in batches for w in batch.writes]
            for (table, op, columns), group in self._groups(writes).items():
                if op is Op.UPSERT or self._soft:  # a soft delete is an upsert that flags
                    self._upsert(table, columns, group, deleted=op is Op.DELETE)
                else:
                    self._hard_delete(table, group)
            self._stale([s for batch in batches for s in batch.stale])
            self._dlq([r for batch in batches for r in batch.dlq])
            with self._conn.cursor() as cur:
                cur.executemany(
                    """INSERT INTO cdc.offsets (flow_id, shard, topic, partition, next_offset)
                       VALUES (%s, %s, %s, %s, %s)
                       ON CONFLICT (flow_id, shard, topic, partition)
                       DO UPDATE SET next_offset = excluded.next_offset, updated_at = now()""",
                    [(self._flow_id, b.shard, t, p, o)
                     for b in batches for (t, p), o in b.offsets.items()],
                )
                cur.executemany(
                    """INSERT INTO cdc.shard_commits (flow_id, shard, seq) VALUES (%s, %s, %s)
                       ON CONFLICT (flow_id, shard)
                       DO UPDATE SET seq = excluded.seq, committed_at = now()""",
                    [(self._flow_id, b.shard, b.seq) for b in batches],
                )

    @staticmethod
    def _groups(writes: list[tuple[TargetTable, RowWrite]]):
        """Writes grouped by (table, op, columns), columns as key columns + sorted others."""
        groups: dict[tuple[TargetTable, Op, tuple[str, ...]], list[RowWrite]] = defaultdict(list)
        canonical: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[str, ...]] = {}
        for table, write in writes:
            key = write.event.key_columns
            present = tuple(write.values or ())
            columns = canonical.get((key, present))
            if columns is None:
                rest = sorted(c for c in present if c not in key)
                columns = canonical[(key, present)] = (*key, *rest)
            groups[(table, write.op, columns)].append(write)
        return groups

    def _stage(self, table: TargetTable, op: Op, columns: tuple[str, ...]) -> sql.Identifier:
        """A session temp table (emptied at each commit) holding `columns` + key json + version.

        One per (table, op, columns), like the groups of a batch, so no two statements of one
        transaction share a stage."""
        cache_key = (str(table.name), op, columns)
        stage = self._stages.get(cache_key)
        if stage is None:
            stage = sql.Identifier(f"_cdc_stage_{len(self._stages)}")
            defs = [sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(table.columns[c]))
                    for c in columns]
            defs += [sql.SQL(f"{KEY_COLUMN} jsonb"), sql.SQL(f"{VERSION_COLUMN} bytea")]
            self._conn.execute(sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DELETE ROWS").format(
                stage, sql.SQL(", ").join(defs)))
            self._stages[cache_key] = stage
        return stage

    def _copy_rows(self, stage: sql.Identifier, columns: tuple[str, ...],
                   rows: list[tuple[Any, ...]]) -> None:
        names = [*columns, KEY_COLUMN, VERSION_COLUMN]
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            stage, sql.SQL(", ").join(map(sql.Identifier, names)))
        with self._conn.cursor().copy(statement) as copy:
            for row in rows:
                copy.write_row(row)

    def _upsert(self, table: TargetTable, columns: tuple[str, ...], writes: list[RowWrite],
                deleted: bool = False) -> None:
        stage = self._stage(table, Op.DELETE if deleted else Op.UPSERT, columns)
        json_at = _jsonb_indexes(table, columns)
        rows = []
        for write in writes:
            values = write.values or {}
            key = dict(zip(write.event.key_columns, write.event.key, strict=True))
            row = [values[c] if c in values else key[c] for c in columns]
            for i in json_at:
                if row[i] is not None:
                    row[i] = Jsonb(row[i])
            rows.append((*row, _key_text(write.event.key), write.version))
        self._copy_rows(stage, columns, rows)
        target = table.ident
        extra_cols = [UPDATED_AT_COLUMN] + ([DELETED_COLUMN] if self._soft else [])
        extra_vals = [sql.SQL("now()")] + ([sql.Literal(deleted)] if self._soft else [])
        non_key = [c for c in columns if c not in table.key]
        updates = [sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c))
                   for c in [*non_key, VERSION_COLUMN, *extra_cols]]
        self._conn.execute(
            sql.SQL(
                """INSERT INTO {target} ({cols}, {version}, {extra_cols})
                   SELECT {s_cols}, s.{version}, {extra_vals} FROM {stage} s
                   WHERE s.{version} > {floor} {fence}
                   ON CONFLICT ({key}) DO UPDATE SET {updates}
                   WHERE {target}.{version} < excluded.{version}"""
            ).format(
                target=target,
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
            )
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

    def _hard_delete(self, table: TargetTable, writes: list[RowWrite]) -> None:
        """Delete the rows and leave a tombstone that fences older upserts of the same key."""
        key_columns = writes[0].event.key_columns
        stage = self._stage(table, Op.DELETE, key_columns)
        self._copy_rows(stage, key_columns, [
            (*w.event.key, _key_text(w.event.key), w.version) for w in writes])
        version = sql.Identifier(VERSION_COLUMN)
        self._conn.execute(sql.SQL(
            "DELETE FROM {target} t USING {stage} s WHERE {match} AND t.{version} < s.{version}"
        ).format(
            target=table.ident, stage=stage, version=version,
            match=sql.SQL(" AND ").join(sql.SQL("t.{0} = s.{0}").format(sql.Identifier(c))
                                        for c in key_columns),
        ))
        self._conn.execute(sql.SQL(
            """INSERT INTO cdc.tombstones (table_name, key, version)
               SELECT {name}, s.{key}, s.{version} FROM {stage} s
               ON CONFLICT (table_name, key) DO UPDATE
               SET version = excluded.version, deleted_at = now()
               WHERE cdc.tombstones.version < excluded.version"""
        ).format(name=sql.Literal(str(table.name)), key=sql.Identifier(KEY_COLUMN),
                 version=version, stage=stage))

    def _truncate(self, table: TargetTable | None, event: TruncateEvent) -> None:
        self._conn.execute(
            """INSERT INTO cdc.truncations (table_name, version) VALUES (%s, %s)
               ON CONFLICT (table_name) DO UPDATE SET version = excluded.version,
               truncated_at = now() WHERE cdc.truncations.version < excluded.version""",
            (str(event.table), event.version),
        )
        if table is not None:
            self._conn.execute(sql.SQL("DELETE FROM {} WHERE {} <= %s").format(
                table.ident, sql.Identifier(VERSION_COLUMN)), (event.version,))
        self._conn.execute("DELETE FROM cdc.tombstones WHERE table_name = %s AND version <= %s",
                           (str(event.table), event.version))

    def _stale(self, stale: list[StaleEvent]) -> None:
        if not stale:
            return
        with self._conn.cursor().copy(
            """COPY cdc.stale_events (flow_id, topic, partition, "offset", table_name, key,
                                      version, applied_version, reason) FROM STDIN"""
        ) as copy:
            for s in stale:
                e = s.event
                copy.write_row((self._flow_id, e.topic, e.partition, e.offset, str(e.table),
                                _key_text(e.key), describe_version(e.version),
                                describe_version(s.applied_version), s.reason))

    def _dlq(self, records: list[DlqRecord]) -> None:
        if not records:
            return
        with self._conn.cursor().copy(
            """COPY cdc.dlq (flow_id, topic, partition, "offset", raw_key, raw_value,
                             error_type, error) FROM STDIN"""
        ) as copy:
            for r in records:
                copy.write_row((self._flow_id, r.topic, r.partition, r.offset, r.raw_key,
                                r.raw_value, r.error_type, r.error))
