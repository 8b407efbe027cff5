"""Target tables: create them from an event's schema, add new columns, check existing ones.

All DDL runs in its own short transaction under a cluster-wide advisory lock, before the data
transaction of a batch, so concurrent shards and processes never race on CREATE/ALTER.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from operators import metrics
from operators.events import ChangeEvent, Column, TableName, TableSchema
from operators.settings import DeleteMode
from schemas.catalog import read_columns, read_primary_key
from schemas.control import DDL_LOCK

VERSION_COLUMN = "_cdc_version"
UPDATED_AT_COLUMN = "_cdc_updated_at"
DELETED_COLUMN = "_cdc_deleted"
CELLS_COLUMN = "_cdc_cells"
EXPIRES_AT_COLUMN = "_cdc_expires_at"
_MAX_SCHEMA_OBJECTS = 1024


class TableProblem(Exception):
    """An event's table cannot take it (missing table, no primary key): a DLQ reason."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


@dataclass(frozen=True, slots=True, eq=False)
class TargetTable:
    """A target table as it exists; compared and hashed by identity (one object per table)."""

    name: TableName
    columns: dict[str, str]
    key: tuple[str, ...]

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.name.schema, self.name.name)


def metadata_columns(delete_mode: DeleteMode, cells: bool = False) -> list[tuple[str, str]]:
    """The replicator's columns of a target table. A Cassandra-model table (`cells`) keeps its
    cell versions and next expiry (`operators/cell_rows.py`); its dead rows leave the table
    whatever the delete mode."""
    columns = [(VERSION_COLUMN, "bytea NOT NULL"),
               (UPDATED_AT_COLUMN, "timestamptz NOT NULL DEFAULT now()")]
    if cells:
        columns += [(CELLS_COLUMN, "jsonb NOT NULL"), (EXPIRES_AT_COLUMN, "timestamptz")]
    elif delete_mode is DeleteMode.SOFT:
        columns.append((DELETED_COLUMN, "boolean NOT NULL DEFAULT false"))
    return columns


def _check_kind(table: TargetTable, event: ChangeEvent) -> None:
    """A table takes either row changes (one version per row) or Cassandra-model cell changes
    (cell versions), never both: each kind's guard would misread the other's versions."""
    cells = event.schema is not None and event.schema.cells
    if cells and VERSION_COLUMN in table.columns and CELLS_COLUMN not in table.columns:
        raise TableProblem("table_kind_mismatch", f"table {event.table} holds row changes (it "
                           "has no cell versions): a ScyllaDB/Cassandra source cannot share it")
    if not cells and CELLS_COLUMN in table.columns:
        raise TableProblem("table_kind_mismatch", f"table {event.table} holds ScyllaDB/"
                           "Cassandra cells: a row source cannot share it")


def _check_key(table: TargetTable, event: ChangeEvent) -> None:
    if set(table.key) != set(event.key_columns):
        raise TableProblem(
            "key_mismatch",
            f"table {event.table} has primary key {list(table.key)} but the message key has "
            f"{list(event.key_columns)}",
        )


def _read_table(conn: psycopg.Connection, name: TableName) -> TargetTable | None:
    columns = read_columns(conn, name)
    return None if columns is None else TargetTable(name, columns, read_primary_key(conn, name))


class TargetTables:
    """Resolves the target table of each event, creating or widening it when the schema says so."""

    def __init__(self, conn: psycopg.Connection, flow_id: str, delete_mode: DeleteMode) -> None:
        self._conn = conn
        self._flow_id = flow_id
        self._delete_mode = delete_mode
        # by the schema object, which events of one process share; and by value, for events
        # from other processes (each arrives with a schema object of its own, so the first map
        # is emptied when it fills)
        self._by_schema: dict[int, tuple[TableSchema, TargetTable]] = {}
        self._by_value: dict[TableSchema, TargetTable] = {}
        self._by_name: dict[TableName, TargetTable] = {}
        self._registered: set[TableName] = set()

    @property
    def delete_mode(self) -> DeleteMode:
        return self._delete_mode

    def known(self, schema: TableSchema) -> TargetTable | None:
        """The table an event of `schema` already resolved to, if any (no DDL, no query)."""
        hit = self._by_schema.get(id(schema))
        return hit[1] if hit is not None and hit[0] is schema else None

    def for_event(self, event: ChangeEvent) -> TargetTable:
        if event.schema is None:
            return self._existing(event)
        schema = event.schema
        table = self.known(schema)
        if table is not None:
            return table
        table = self._by_value.get(schema)
        if table is None:
            table = self._by_value[schema] = self._ensure(event)
        if len(self._by_schema) >= _MAX_SCHEMA_OBJECTS:
            self._by_schema.clear()
        self._by_schema[id(schema)] = (schema, table)
        return table

    def lookup(self, name: TableName) -> TargetTable | None:
        """The table as it is now (for a truncate), or None if it does not exist."""
        table = self._by_name.get(name)
        if table is None:
            table = _read_table(self._conn, name)
            if table is not None:
                self._by_name[name] = table
        return table

    def _existing(self, event: ChangeEvent) -> TargetTable:
        table = self.lookup(event.table)
        if table is None:
            raise TableProblem(
                "unknown_table",
                f"table {event.table} does not exist and the message carries no schema to create "
                "it from (enable the JSON converter's schemas, or create the table)",
            )
        _check_kind(table, event)
        _check_key(table, event)
        missing_meta = [c for c, _ in metadata_columns(self._delete_mode) if c not in table.columns]
        if missing_meta:
            return self._ddl(event, add_columns=[], add_meta=missing_meta)
        self._register(event)
        return table

    def _ensure(self, event: ChangeEvent) -> TargetTable:
        schema = event.schema
        assert schema is not None
        table = self.lookup(event.table)
        if table is None:
            return self._ddl(event, create=True)
        _check_kind(table, event)
        _check_key(table, event)
        new_columns = [c for c in schema.columns if c.name not in table.columns]
        missing_meta = [c for c, _ in metadata_columns(self._delete_mode, schema.cells)
                        if c not in table.columns]
        if new_columns or missing_meta:
            return self._ddl(event, add_columns=new_columns, add_meta=missing_meta)
        self._register(event)
        return table

    def _ddl(self, event: ChangeEvent, create: bool = False,
             add_columns: Sequence[Column] = (), add_meta: Sequence[str] = ()) -> TargetTable:
        name = event.table
        ident = sql.Identifier(name.schema, name.name)
        with self._conn.transaction():
            self._conn.execute(DDL_LOCK)
            if create:
                assert event.schema is not None
                self._create(event.schema)
            for column in add_columns:
                self._conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                    ident, sql.Identifier(column.name), sql.SQL(column.pg_type)))
                self._history(event, "column added", column.name, column.pg_type)
            cells = event.schema is not None and event.schema.cells
            for column in add_meta:
                spec = dict(metadata_columns(self._delete_mode, cells))[column].replace(
                    " NOT NULL", "")
                self._conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                    ident, sql.Identifier(column), sql.SQL(spec)))
            if EXPIRES_AT_COLUMN in add_meta:
                self._expiry_index(name)
            table = _read_table(self._conn, name)
            assert table is not None
            if not table.key:
                raise TableProblem("no_primary_key", f"table {name} has no primary key")
            self._register(event)
        if create or add_columns:
            metrics.SCHEMA_CHANGES.labels(str(name)).inc()
        self._by_name[name] = table
        # schemas resolved before now map to the table as it was: a narrower schema (a column
        # the source dropped again) must resolve to the table with the column, which a write
        # merging an earlier image still names
        self._by_schema.clear()
        self._by_value.clear()
        return table

    def _register(self, event: ChangeEvent) -> None:
        """Record that the flow writes `event.table`, whoever created it: a state rebuild reads
        the rows and tombstones of the flow's tables only."""
        if event.table in self._registered:
            return
        self._conn.execute(
            """INSERT INTO cdc.tables (flow_id, table_schema, table_name, key_columns)
               VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING""",
            (self._flow_id, event.table.schema, event.table.name, list(event.key_columns)),
        )
        self._registered.add(event.table)

    def _create(self, schema: TableSchema) -> None:
        name = schema.table
        columns = [sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.pg_type))
                   for c in schema.columns]
        columns += [sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(spec))
                    for c, spec in metadata_columns(self._delete_mode, schema.cells)]
        columns.append(sql.SQL("PRIMARY KEY ({})").format(
            sql.SQL(", ").join(map(sql.Identifier, schema.key))))
        self._conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
            sql.Identifier(name.schema)))
        self._conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
            sql.Identifier(name.schema, name.name), sql.SQL(", ").join(columns)))
        if schema.cells:
            self._expiry_index(name)

    def _expiry_index(self, name: TableName) -> None:
        """The expiry sweep's probe (`operators/cell_shard.py`)."""
        self._conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({}) "
                                   "WHERE {} IS NOT NULL").format(
            sql.Identifier(f"{name.name}_cdc_expires_at"), sql.Identifier(name.schema, name.name),
            sql.Identifier(EXPIRES_AT_COLUMN), sql.Identifier(EXPIRES_AT_COLUMN)))

    def _history(self, event: ChangeEvent, change: str, column: str, new_type: str) -> None:
        self._conn.execute(
            """INSERT INTO cdc.schema_history
                 (flow_id, table_name, change, column_name, new_type, topic, partition, "offset")
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
            (self._flow_id, str(event.table), change, column, new_type,
             event.topic, event.partition, event.offset),
        )
