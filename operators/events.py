"""The items that travel through the dataflow, from Kafka message to shard sink.

source ──RawMessage | cdc_native.Fetched──► decode ──ChangeEvent | TruncateEvent | DlqRecord
                                                    | ProgressMarker──► shards
(a `Fetched` is one partition's messages as the native consumer read them)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, NamedTuple

from operators.keys import state_key

MAX_ERROR_CHARS = 500


class RawMessage(NamedTuple):
    """One Kafka message as the source read it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    @property
    def next_offset(self) -> int:
        return self.offset + 1


def raw_message(batch: Any, index: int) -> RawMessage:
    """Message `index` of a `cdc_native.Fetched` batch."""
    return RawMessage(*batch.message(index))


def raw_messages(items: Iterable[Any]) -> Iterator[RawMessage]:
    """The messages of a batch of `RawMessage`s and `cdc_native.Fetched` batches, in order."""
    for item in items:
        if type(item) is RawMessage:
            yield item
        else:
            for index in range(len(item)):
                yield raw_message(item, index)


class TableName(NamedTuple):
    """A target table, always quoted with `psycopg.sql.Identifier` when it reaches SQL."""

    schema: str
    name: str

    def __str__(self) -> str:
        """`schema.name`, each part double-quoted when it holds a dot or a quote, so that two
        tables never share a string (`"a.b".c` and `a."b.c"`): it keys control rows and state.

        >>> [str(TableName(*parts)) for parts in (("public", "t"), ("a.b", "c"), ("a", "b.c"))]
        ['public.t', '"a.b".c', 'a."b.c"']
        """
        return f"{_quoted(self.schema)}.{_quoted(self.name)}"


def _quoted(part: str) -> str:
    if "." in part or '"' in part:
        return '"' + part.replace('"', '""') + '"'
    return part


@dataclass(frozen=True, slots=True)
class Column:
    """A target column: the source name kept exactly, and its Postgres type (`numeric(10,2)`)."""

    name: str
    pg_type: str


@dataclass(frozen=True, slots=True)
class TableSchema:
    """Columns and primary key of a target table, as a change event's schema describes them.

    Instances are shared by every event with the same schema, so per-event cost is a reference.
    """

    table: TableName
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    cells: bool = False
    """A Cassandra-model table (formats/cells.py): its rows carry cell versions
    (`operators/cell_meta.py`) instead of one row version."""


class Op(IntEnum):
    UPSERT = 0
    DELETE = 1


@dataclass(slots=True)
class ChangeEvent:
    """One row change, normalized: what the shard sink needs and nothing else.

    `values` holds converted Python values of the new row image (None for deletes). A column that
    is absent from `values` is unchanged (e.g. Debezium's TOAST placeholder): keep the stored value.
    `version` is a byte string that compares (as bytes, and as Postgres `bytea`) in the source's
    per-key order; see `operators.versions`. `row_id` identifies the row across tables (the
    shard's state key, `operators.keys.state_key`; computed here unless the native decoder gave
    it). `copy_row`, from the native decoder for an upsert with every column of its schema, is
    the writer's stage row for exactly `values` (`operators/pg_writer.py`).
    """

    table: TableName
    key_columns: tuple[str, ...]
    key: tuple[Any, ...]
    op: Op
    version: bytes
    values: dict[str, Any] | None
    schema: TableSchema | None
    topic: str
    partition: int
    offset: int
    row_id: bytes = field(default=b"", repr=False, compare=False)
    copy_row: bytes | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Computed once here: the decode step routes by it and the shard keys its state by it.
        if not self.row_id:
            self.row_id = state_key(self.table, self.key)


@dataclass(slots=True)
class TruncateEvent:
    """A table truncate, broadcast to every shard: rows at or below `version` are gone."""

    table: TableName
    version: bytes
    topic: str
    partition: int
    offset: int


@dataclass(slots=True)
class DlqRecord:
    """A message that cannot be applied, with its raw bytes and a specific reason."""

    topic: str
    partition: int
    offset: int
    raw_key: bytes | None
    raw_value: bytes | None
    error_type: str
    error: str

    @classmethod
    def of(cls, msg: RawMessage, error_type: str, error: str) -> DlqRecord:
        """The record of a message the decoder rejects, its error cut short (the error may
        quote a value of megabytes)."""
        if len(error) > MAX_ERROR_CHARS:
            error = error[:MAX_ERROR_CHARS] + "..."
        return cls(msg.topic, msg.partition, msg.offset, msg.key, msg.value, error_type, error)


class ProgressMarker(NamedTuple):
    """Every message of (topic, partition) below `next_offset` that belongs to a shard was sent.
    `caught_up`: the source had nothing more of the partition to read."""

    topic: str
    partition: int
    next_offset: int
    caught_up: bool = False


ShardItem = ChangeEvent | TruncateEvent | DlqRecord | ProgressMarker
