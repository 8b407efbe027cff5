"""What one Cassandra or ScyllaDB change event says, in Cassandra's own terms: a `CellChange`
(formats/scylla.py and formats/cassandra.py make them), or a `CellReject` for a message that
cannot be used.

Cassandra keeps a row as cells. Every cell carries the write time of the statement that wrote it
(`USING TIMESTAMP` or the coordinator's clock, µs); an INSERT also writes the row marker (a cell
with no value that keeps the row alive); a delete writes a tombstone, over one row, a range of
rows of a partition (clustering bounds) or a whole partition, which shadows every cell and marker
it covers written at or before its time. A row exists while its marker or a non-null cell is newer
than the newest tombstone covering it. A `CellChange` carries exactly those facts of one message;
applying them is the job of whoever keeps the cells' versions.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from typing import Any, Generic, NamedTuple, TypeVar

import orjson

from formats.dialect import SourceDialect
from operators.events import Column, DlqRecord, RawMessage, TableName, TableSchema
from operators.keys import UnsupportedKey, state_key
from operators.versions import writetime_version
from schemas.cql_types import CqlType
from schemas.cql_types import column_type as cql_column_type

_CONVERSION_ERRORS = (ValueError, TypeError, OverflowError, ArithmeticError)
_MAX_CACHED_SCHEMAS = 1024
Shape = TypeVar("Shape")


class WriteTimeDialect(SourceDialect):
    """A Cassandra-model source: changes ordered by their write time, `source.ts_us`, and
    decoded by the dialect itself into `CellChange`s; the native path does not decode them."""

    native = False

    def version(self, source: Mapping[str, Any],
                snapshot_point: Callable[[], int] = lambda: 0) -> bytes:
        return writetime_version(source.get("ts_us"))  # type: ignore[arg-type]

    @abstractmethod
    def decode(self, msg: RawMessage, table: TableName,
               cql_types: Mapping[str, str] | None = None,
               parts: CellMessage | None = None) -> CellChange | DlqRecord | None:
        """One message of `table` → its `CellChange`, a `DlqRecord`, or None for a Kafka
        tombstone. `cql_types`: column → declared CQL type, where known; `parts`: the message
        already read from its framing (Avro or Connect JSON), else it is read as Connect JSON."""

    def native_columns(self, parts: CellMessage, cql_types: Mapping[str, str] | None,
                       ) -> Mapping[str, CqlType] | None:
        """Column → handler of a message `decode` decoded, in the schema's order, where the
        native decoder (`cdc_native.CellPlan`) reads messages of its schema; None where it
        does not (the default)."""
        return None

class CellMessage(NamedTuple):
    """A message read from its framing: the value's Connect schema and payload, the Kafka key's
    payload (None for a null key), and the bytes that identify the value's schema (its JSON
    envelope's prefix or its Avro frame header; empty where not known)."""

    schema: Mapping[str, Any] | None
    payload: Any
    key: Any
    schema_id: bytes = b""


class Shapes(Generic[Shape]):
    """What a dialect derives from one value schema and the declared CQL types, built once:
    found by the bytes the decoder identified the schema by, so that a message costs a lookup
    rather than a serialization of its schema."""

    def __init__(self, build: Callable[[Mapping[str, Any], Mapping[str, str]], Shape]) -> None:
        self._build = build
        self._built: dict[tuple[bytes, tuple[tuple[str, str], ...]], Shape] = {}

    def __call__(self, parts: CellMessage, schema: Mapping[str, Any],
                 cql_types: Mapping[str, str]) -> Shape:
        key = (parts.schema_id or orjson.dumps(schema), tuple(sorted(cql_types.items())))
        shape = self._built.get(key)
        if shape is None:
            if len(self._built) >= _MAX_CACHED_SCHEMAS:
                self._built.clear()
            shape = self._built[key] = self._build(schema, cql_types)
        return shape


class CellKind(Enum):
    WRITE = "write"
    """Cells (and, for an INSERT, the row marker) written at `ts_us`."""
    ROW_DELETE = "row_delete"
    """A row tombstone at `ts_us`: the row of `key` (its marker and every cell)."""
    PARTITION_DELETE = "partition_delete"
    """A partition tombstone at `ts_us`: every row whose partition key is `partition_key`."""
    RANGE_DELETE = "range_delete"
    """A range tombstone at `ts_us`: the rows of partition `partition_key` whose clustering
    values lie between `range_start` and `range_end`."""


@dataclass(frozen=True, slots=True)
class RangeBound:
    """One end of a range tombstone: values of the leading clustering columns (converted, in
    clustering order; empty = the partition's first or last row) and whether rows equal to that
    prefix are inside the range."""

    values: tuple[Any, ...]
    inclusive: bool


@dataclass(slots=True)
class CellChange:
    """One change event of a Cassandra-model source, normalized.

    - `key_columns`, `key`: the primary key, partition key columns first, then the clustering
      columns; values converted as `schemas/cql_types.py` does. Partition and range deletes have
      None for the clustering columns they do not name.
    - `partition_key_columns`: how many of `key_columns` are the partition key, or None where the
      message does not show it (writes and row deletes: the table's layout does).
    - `ts_us`: the write time (`source.ts_us`): of every cell written, of the marker, of the
      tombstone. Snapshot rows carry the time of the snapshot's read instead.
    - `row_marker`: the change writes the row marker (an INSERT), so the row exists even when every
      non-key cell is null.
    - `cells`: the non-key columns written: column → value, None for a cell set to null (a cell
      tombstone). A column absent from `cells` was not touched and keeps its own cell.
    - `expires_us`: for cells written with a TTL, the time they expire (µs since the epoch); past
      it the cell reads as null, as if deleted at its write time.
    - `marker_expires_us`: for an INSERT with a TTL, when its row marker expires.
    - `range_start`, `range_end`: the bounds of a RANGE_DELETE (None otherwise).
    - `snapshot`: the change comes from the connector's initial snapshot, not from the log.
    - `schema`: the table's columns as the message's schema describes them (for creating and
      widening the target table).
    - `row_id`: the row's state key (`operators.keys.state_key`) for writes and row deletes;
      empty for partition and range deletes, which cover many rows.
    """

    table: TableName
    key_columns: tuple[str, ...]
    key: tuple[Any, ...]
    partition_key_columns: int | None
    kind: CellKind
    ts_us: int
    row_marker: bool
    cells: dict[str, Any]
    topic: str
    partition: int
    offset: int
    expires_us: dict[str, int] = field(default_factory=dict)
    marker_expires_us: int | None = None
    range_start: RangeBound | None = None
    range_end: RangeBound | None = None
    snapshot: bool = False
    schema: TableSchema | None = field(default=None, repr=False, compare=False)
    row_id: bytes = field(default=b"", repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind in (CellKind.WRITE, CellKind.ROW_DELETE) and not self.row_id:
            self.row_id = state_key(self.table, self.key)

    @property
    def partition_key(self) -> tuple[Any, ...]:
        """The partition key's values (the whole key where the message does not say)."""
        return self.key[: self.partition_key_columns]

    @property
    def version(self) -> bytes:
        """The change's version bytes (`operators/versions.py`): its write time."""
        return writetime_version(self.ts_us)


@lru_cache(maxsize=_MAX_CACHED_SCHEMAS)
def table_schema(table: TableName, columns: tuple[tuple[str, str], ...],
                 key_columns: tuple[str, ...]) -> TableSchema:
    """The schema of a cell table, one object per distinct schema (the target tables cache by
    object)."""
    return TableSchema(table, tuple(Column(n, t) for n, t in columns), key_columns, cells=True)


def schema_of(table: TableName, types: Mapping[str, CqlType],
              key_columns: tuple[str, ...]) -> TableSchema:
    return table_schema(table, tuple((n, t.pg_type) for n, t in types.items()), key_columns)


class CellReject(Exception):
    """A message that cannot be used: it goes to the DLQ with `error_type`, in the vocabulary of
    `operators/decode.py` (malformed_json, malformed_envelope, missing_op, unknown_op,
    missing_source, bad_version, missing_after, malformed_key, missing_key, bad_schema, bad_value,
    no_schema)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


Decode = Callable[[RawMessage, CellMessage, TableName, Mapping[str, str]], CellChange]


def decoded_or_dlq(decode: Decode, msg: RawMessage, table: TableName,
                   cql_types: Mapping[str, str] | None,
                   parts: CellMessage | None) -> CellChange | DlqRecord | None:
    """What a cell source's `decode` makes of `msg` (read from `parts`, or as Connect JSON):
    None for a Kafka tombstone, the DLQ record of a rejected message."""
    if msg.value is None:
        return None
    try:
        return decode(msg, parts or read_json(msg), table, cql_types or {})
    except CellReject as reject:
        return dlq(msg, reject)
    except UnsupportedKey as exc:
        return DlqRecord.of(msg, "unsupported_key", f"key: {exc}")


def dlq(msg: RawMessage, reject: CellReject) -> DlqRecord:
    """The DLQ record of a rejected message."""
    return DlqRecord.of(msg, reject.error_type, str(reject))


# --- reading a Connect JSON message, shared by the cell sources --------------------------------


def read_json(msg: RawMessage) -> CellMessage:
    """The parts of a message whose key and value are Connect JSON."""
    schema, payload = connect_json(msg.value, "value", "malformed_json")  # type: ignore[arg-type]
    key = None if msg.key is None else connect_json(msg.key, "key", "malformed_key")[1]
    return CellMessage(schema, payload, key)


def connect_json(raw: bytes, what: str, error_type: str) -> tuple[Mapping[str, Any], Any]:
    """(schema, payload) of a JsonConverter document written with `schemas.enable=true`."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CellReject(error_type, f"{what} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or "payload" not in doc:
        raise CellReject("malformed_envelope", f"{what} is not a Connect JSON envelope")
    if not isinstance(doc.get("schema"), dict):
        raise CellReject("no_schema", f"{what} has no schema (JsonConverter schemas.enable=true "
                                      "is needed: the schema tells the columns' types)")
    return doc["schema"], doc["payload"]


def envelope(payload: Any, ops: tuple[str, ...]) -> tuple[str, Mapping[str, Any], int]:
    """(op, source, write time in µs) of a change event's payload."""
    if not isinstance(payload, dict):
        raise CellReject("malformed_envelope", "payload is not an object")
    op = payload.get("op")
    if op is None:
        raise CellReject("missing_op", "value has no 'op' field")
    if op not in ops:
        raise CellReject("unknown_op", f"op {op!r} is not one of {', '.join(ops)}")
    source = payload.get("source")
    if not isinstance(source, dict):
        raise CellReject("missing_source", "value has no 'source' object")
    ts_us = source.get("ts_us")
    try:
        writetime_version(ts_us)
    except ValueError as exc:
        raise CellReject("bad_version", str(exc)) from None
    return op, source, ts_us


def is_snapshot(source: Mapping[str, Any]) -> bool:
    """Debezium's `source.snapshot` (`true`, `first`, `last`, ... or `false`)."""
    flag = source.get("snapshot")
    return flag not in (None, False, "false")


def key_values(parts: CellMessage) -> dict[str, Any]:
    """Key column → value from the Kafka key, in primary-key order."""
    if parts.key is None:
        raise CellReject("missing_key", "Kafka key is null")
    if not isinstance(parts.key, dict) or not parts.key:
        raise CellReject("missing_key", "Kafka key payload is not a non-empty struct")
    return parts.key


def value_parts(parts: CellMessage) -> tuple[Mapping[str, Any], Any]:
    """(schema, payload) of the value; a value without a schema cannot be typed."""
    if not isinstance(parts.schema, dict):
        raise CellReject("no_schema", "value has no schema (JsonConverter schemas.enable=true "
                                      "or Avro is needed: the schema tells the columns' types)")
    return parts.schema, parts.payload


def row_fields(value_schema: Mapping[str, Any], image: str) -> dict[str, Mapping[str, Any]]:
    """Column → its Connect field schema, from the envelope's `image` struct."""
    for f in value_schema.get("fields") or ():
        if isinstance(f, dict) and f.get("field") == image and isinstance(f.get("fields"), list):
            fields = f["fields"]
            if all(isinstance(c, dict) and isinstance(c.get("field"), str) for c in fields):
                return {c["field"]: c for c in fields}
    raise CellReject("bad_schema", f"value schema has no '{image}' struct of named fields")


def column_type(name: str, schema: Mapping[str, Any], cql: str | None) -> CqlType:
    """The handler of column `name` (`schemas/cql_types.py`), its declared CQL type first."""
    try:
        return cql_column_type(schema, cql)
    except (ValueError, TypeError) as exc:
        raise CellReject("bad_schema", f"column {name!r}: {exc}") from None


def convert(name: str, ctype: CqlType, v: Any) -> Any:
    """A wire value of column `name` as Postgres will hold it; None stays None."""
    if v is None:
        return None
    try:
        return ctype.convert(v)
    except _CONVERSION_ERRORS as exc:
        raise CellReject("bad_value", f"column {name!r} ({ctype.cql}, {ctype.pg_type}): cannot "
                                      f"convert {v!r}: {exc}") from None
