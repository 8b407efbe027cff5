"""Debezium change events (Postgres, SQL Server connectors) → ChangeEvent | TruncateEvent |
DlqRecord. Keys and values are Connect JSON (with or without schemas) or Avro in the Confluent
wire format (`operators/avro.py`); each message is told apart by its first byte. The changes of a
Cassandra-model connector (ScyllaDB, Cassandra: `formats/cells.py`) are their dialect's to decode,
into `CellChange`s.

`Decoder.decode` never raises for bad input: every message it cannot use becomes a `DlqRecord`
with the raw bytes, a short `error_type` and a message naming the field. It returns None for
messages that carry nothing to apply: tombstones, heartbeats, transaction metadata, schema changes
and logical-decoding messages (op `m`). Catalog lookups (schemaless messages) wait out a Postgres
outage inside `TableCatalog`.

DLQ error types: malformed_json, malformed_envelope, missing_op, unknown_op, missing_source,
bad_version, missing_after, malformed_key, missing_key, unsupported_key, bad_schema, bad_value,
no_schema, unknown_table, unknown_column; for ScyllaDB and Cassandra also unsupported_range; for
Avro also malformed_avro, unknown_schema_id,
no_schema_registry; decode_failed for an unexpected error (a defect) met by one message.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import orjson

from formats.cells import CellChange, CellMessage, WriteTimeDialect
from formats.dialect import SourceDialect
from formats.registry import dialect_for
from operators.avro import AvroFrames, AvroProblem, SchemaFetcher, is_framed
from operators.events import (
    ChangeEvent,
    Column,
    DlqRecord,
    Op,
    RawMessage,
    TableName,
    TableSchema,
    TruncateEvent,
    raw_messages,
)
from operators.keys import UnsupportedKey
from operators.native_decode import CellRun, FastPath, NativeShape, Run, native_kind
from operators.snapshot_points import SnapshotPoints
from schemas.catalog import TableCatalog, coerce_for_column
from schemas.debezium_types import Converter, FieldType, field_type

log = logging.getLogger(__name__)
Decoded = ChangeEvent | TruncateEvent | DlqRecord | CellChange

_ABSENT = object()
_CONVERSION_ERRORS = (ValueError, TypeError, OverflowError, ArithmeticError)
# What a defect in this code raises when one message surprises it; a failing schema registry or
# database raises its own errors, which are no message's fault.
_DEFECTS = (TypeError, ValueError, KeyError, AttributeError, IndexError, ArithmeticError,
            RecursionError)
_MAX_CACHED_SHAPES = 4096
_SCHEMA_HEAD = b'{"schema":'
_PAYLOAD_SEPARATOR = b',"payload":'
_MAX_PREFIXES_PER_TOPIC = 4


class _Shape(NamedTuple):
    """Everything derived from one value schema: built once, shared by its events."""

    schema: TableSchema
    columns: tuple[tuple[str, Converter, tuple[Any, ...]], ...]  # name, converter, TOAST forms
    key_converters: tuple[Converter, ...]
    native: NativeShape


class _Reject(Exception):
    """Raised inside the decoder for a message that goes to the DLQ."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


class _Envelopes:
    """Splits the keys or the values of messages into (schema, schema id, payload): Avro frames
    through `AvroFrames`, Connect JSON envelopes (`{"schema": ..., "payload": ...}`) here.

    With `schemas.enable` the schema is most of the message and the same in every message of a
    topic, so once a schema's exact bytes are known, later messages that start with them only
    parse their payload.
    """

    def __init__(self, what: str, error_type: str, objects_only: bool,
                 fetch_schema: SchemaFetcher | None) -> None:
        self._what = what
        self._error_type = error_type
        self._objects_only = objects_only  # else a non-object document is its own payload
        self._prefixes: dict[str, list[tuple[bytes, Any]]] = {}
        self._avro = AvroFrames(fetch_schema, what)

    def split(self, topic: str, raw: bytes) -> tuple[Any, bytes, Any]:
        """(schema or None, bytes identifying that schema, payload); a JSON document without an
        envelope is its own payload."""
        if is_framed(raw):
            return self._avro.split(raw)
        for prefix, schema in self._prefixes.get(topic, ()):
            if raw.startswith(prefix) and raw.endswith(b"}"):
                try:
                    return schema, prefix, orjson.loads(memoryview(raw)[len(prefix) : -1])
                except orjson.JSONDecodeError:
                    break  # not this envelope after all: parse it whole for a precise error
        doc = _loads(raw, self._what, self._error_type)
        if not isinstance(doc, dict):
            if not self._objects_only:
                return None, b"", doc
            raise _Reject("malformed_envelope",
                          f"{self._what} is a JSON {_kind(doc)}, not an object")
        if "payload" not in doc or "schema" not in doc:
            return None, b"", doc
        prefix = _schema_prefix(raw, doc)
        if prefix is None:
            return doc["schema"], orjson.dumps(doc["schema"]), doc["payload"]
        known = self._prefixes.setdefault(topic, [])
        known.insert(0, (prefix, doc["schema"]))
        del known[_MAX_PREFIXES_PER_TOPIC:]
        return doc["schema"], prefix, doc["payload"]


class Decoder:
    """Decodes the messages of any number of topics; caches schemas and table mappings."""

    def __init__(
        self, target_schema: str, table_map: dict[str, str], catalog: TableCatalog | None,
        fetch_schema: SchemaFetcher | None = None, native: bool = True,
        snapshot_points: SnapshotPoints | None = None,
        cql_types: dict[str, dict[str, str]] | None = None,
    ) -> None:
        """`native`: try the native fast path (`operators/native_decode.py`) first;
        `snapshot_points`: the snapshots known before (none by default); `cql_types`: topic →
        column → declared CQL type, for the messages of Cassandra-model sources."""
        self._target_schema = target_schema
        self._overrides = {topic: self._parse_target(t) for topic, t in table_map.items()}
        self._catalog = catalog
        self._topic_tables: dict[str, TableName] = {}
        self._shapes: dict[tuple[Any, ...], _Shape] = {}
        self._values = _Envelopes("value", "malformed_json", True, fetch_schema)
        self._keys = _Envelopes("key", "malformed_key", False, fetch_schema)
        self._plain: dict[TableName, tuple[dict[str, str], dict[str, Converter]]] = {}
        self._fast = FastPath() if native else None
        self._defects_logged: set[tuple[str, type]] = set()
        self.snapshot_points = SnapshotPoints() if snapshot_points is None else snapshot_points
        self._cql_types = cql_types or {}

    def decode(self, msg: RawMessage) -> Decoded | None:
        if self._fast is not None:
            event = self._fast.decode(msg)
            if event is not None:
                return event
        return self._decode_reference(msg)

    def decode_runs(self, messages: list[Any], shards: int,
                    ) -> tuple[list[tuple[int, Decoded | None]], list[list[Run | CellRun]]]:
        """`(position, decode's answer)` of each message, in order, but for the plain change
        events the native fast path keeps as runs, per shard (`FastPath.decode_runs`).
        `messages`: `RawMessage`s and `cdc_native.Fetched` batches (each message of a batch
        has a position of its own)."""
        if self._fast is None:
            return ([(i, self._decode_reference(msg))
                     for i, msg in enumerate(raw_messages(messages))],
                    [[] for _ in range(shards)])
        return self._fast.decode_runs(messages, shards, self._decode_reference)

    def newest_plans(self) -> dict[str, Any]:
        """Each topic's newest native plan (none without the fast path)."""
        return {} if self._fast is None else self._fast.newest()

    def _decode_reference(self, msg: RawMessage) -> Decoded | None:
        """The Python decoder, which never raises for bad input."""
        topic = msg.topic
        if msg.value is None or topic.startswith("__debezium-heartbeat"):
            return None
        if topic.endswith(".transaction"):
            return None
        try:
            return self._decode(msg)
        except (_Reject, AvroProblem) as exc:
            return DlqRecord.of(msg, exc.error_type, str(exc))
        except _DEFECTS as exc:  # a defect met by one message must not stop the flow forever;
            # a failing registry or database (their own errors) stops or retries instead
            seen = (msg.topic, type(exc))
            if seen not in self._defects_logged:
                self._defects_logged.add(seen)
                log.exception("decoding %s[%d]@%d failed (logged once per topic and error; "
                              "each message's error is in cdc.dlq)", msg.topic, msg.partition,
                              msg.offset)
            return DlqRecord.of(msg, "decode_failed", f"{type(exc).__name__}: {exc}")

    def _decode(self, msg: RawMessage) -> Decoded | None:
        value_schema, schema_id, payload = self._values.split(msg.topic, msg.value)
        if payload is None:  # an envelope with a null payload
            return None
        if not isinstance(payload, dict):
            raise _Reject("malformed_envelope", f"payload is a {_kind(payload)}")
        if "ddl" in payload or "tableChanges" in payload:
            return None
        source = payload.get("source")
        dialect = _cell_dialect(source)
        if dialect is not None:  # its own ops and cells: the whole message is the dialect's
            return self._decode_cells(msg, dialect, value_schema, schema_id, payload)
        op = payload.get("op")
        if op is None:
            raise _Reject("missing_op", "value has no 'op' field")
        if op == "m":
            return None
        if op not in ("c", "u", "r", "d", "t"):
            raise _Reject("unknown_op", f"op {op!r} is not one of c, u, r, d, t, m")
        if not isinstance(source, dict):
            raise _Reject("missing_source", "value has no 'source' object")
        try:
            dialect = dialect_for(source)
            point = dialect.snapshot_point(source)
            if point is not None:
                self.snapshot_points.saw(msg.topic, msg.partition, msg.offset, point)
            version = dialect.version(source, lambda: self.snapshot_points.before(
                msg.topic, msg.partition, msg.offset))
        except ValueError as exc:
            raise _Reject("bad_version", str(exc)) from None
        if op == "t":
            return TruncateEvent(
                self._truncate_table(msg.topic, source),
                version,
                msg.topic,
                msg.partition,
                msg.offset,
            )
        table = self._topic_table(msg.topic)
        image_field = "before" if op == "d" else "after"
        image = payload.get(image_field)
        if image is not None and not isinstance(image, dict):
            raise _Reject("malformed_envelope", f"'{image_field}' is a {_kind(image)}")
        if op != "d" and image is None:
            raise _Reject("missing_after", f"op {op!r} has no 'after' row image")
        key_payload, key_id = self._key_payload(msg.topic, msg.key, image, table)
        key_names = tuple(key_payload)
        row = image if op != "d" else None
        shape = None
        if value_schema is None:
            key, values = self._convert_plain(table, key_payload, row, dialect)
            schema = None
        else:
            shape = self._shape(table, value_schema, schema_id, key_names, dialect)
            key, values = _convert(shape, key_payload, row)
            schema = shape.schema
        if None in key:
            missing = [n for n, v in zip(key_names, key, strict=True) if v is None]
            raise _Reject("missing_key", f"key column(s) {missing} are null")
        op_kind = Op.DELETE if op == "d" else Op.UPSERT
        try:
            event = ChangeEvent(table, key_names, key, op_kind, version, values, schema,
                                msg.topic, msg.partition, msg.offset)
        except UnsupportedKey as exc:
            raise _Reject("unsupported_key", f"key {list(key_names)}: {exc}") from None
        if shape is not None and self._fast is not None:  # only a shape that makes events
            self._learn(msg, schema_id, key_id, shape.native)
        return event

    def _decode_cells(self, msg: RawMessage, dialect: WriteTimeDialect, value_schema: Any,
                      schema_id: bytes, payload: Any) -> Decoded | None:
        """A Cassandra-model message, by its dialect; a change from a JSON envelope whose
        schemas were recognised by their bytes teaches the fast path a cell plan."""
        key_id, key = b"", None
        if msg.key is not None:
            _, key_id, key = self._keys.split(msg.topic, msg.key)
        table, cql_types = self._topic_table(msg.topic), self._cql_types.get(msg.topic)
        parts = CellMessage(value_schema, payload, key, schema_id)
        change = dialect.decode(msg, table, cql_types, parts)
        if self._fast is not None and type(change) is CellChange:
            try:
                columns = dialect.native_columns(parts, cql_types)
                if columns is not None:
                    self._fast.learn_cells(msg, schema_id, key_id, change, columns,
                                           lambda m: dialect.decode(m, table, cql_types))
            except _DEFECTS:
                log.exception("%s: no native cell plan for this schema; Python decodes it",
                              msg.topic)
        return change

    def _learn(self, msg: RawMessage, schema_id: bytes, key_id: bytes, native: NativeShape,
               ) -> None:
        """Teach the fast path a plan; a plan that cannot be made leaves the topic to Python."""
        assert self._fast is not None
        try:
            self._fast.learn(msg, schema_id, key_id, native)
        except _DEFECTS:
            log.exception("%s: no native plan for this schema; Python decodes it", msg.topic)

    # --- tables ---------------------------------------------------------------------------

    def _parse_target(self, target: str) -> TableName:
        schema, _, name = target.rpartition(".")
        return TableName(schema or self._target_schema, name)

    def _topic_table(self, topic: str) -> TableName:
        """`<prefix>.<schema>.<table>` (SQL Server: `<prefix>.<db>.<schema>.<table>`) → table."""
        table = self._topic_tables.get(topic)
        if table is None:
            table = self._overrides.get(topic) or TableName(
                self._target_schema, topic.rpartition(".")[2]
            )
            self._topic_tables[topic] = table
        return table

    def _truncate_table(self, topic: str, source: dict[str, Any]) -> TableName:
        if topic in self._overrides:
            return self._overrides[topic]
        name = source.get("table")
        if not isinstance(name, str) or not name:
            raise _Reject("missing_source", "truncate has no source.table")
        return TableName(self._target_schema, name)

    # --- keys -----------------------------------------------------------------------------

    def _key_payload(
        self, topic: str, raw_key: bytes | None, image: dict[str, Any] | None, table: TableName
    ) -> tuple[dict[str, Any], bytes]:
        """Key column → JSON value, from the Kafka key, else the primary key of the row image;
        and the bytes identifying the key's schema (empty without a Kafka key)."""
        if raw_key is None:
            return self._key_from_image(image, table), b""
        _, key_id, doc = self._keys.split(topic, raw_key)
        if not isinstance(doc, dict) or not doc:
            raise _Reject(
                "missing_key", f"Kafka key payload is {_kind(doc)}, not a non-empty struct"
            )
        return doc, key_id

    def _key_from_image(self, image: dict[str, Any] | None, table: TableName) -> dict[str, Any]:
        pk = self._catalog.primary_key(table) if self._catalog is not None else ()
        if not pk:
            raise _Reject(
                "missing_key", f"Kafka key is null and no primary key is known for {table}"
            )
        if image is None or any(name not in image for name in pk):
            raise _Reject(
                "missing_key", f"Kafka key is null and the row image lacks key columns {pk}"
            )
        return {name: image[name] for name in pk}

    # --- with schema ----------------------------------------------------------------------

    def _shape(self, table: TableName, value_schema: Any, schema_id: bytes,
               key_names: tuple[str, ...], dialect: SourceDialect) -> _Shape:
        """`schema_id` is an Avro frame header for Avro values (whose bytes columns hold bytes,
        not base64 text), so whether they are binary is told once, when the shape is built; the
        dialect says which placeholders its columns may hold."""
        cache_key = (table, schema_id, key_names, dialect.connector)
        shape = self._shapes.get(cache_key)
        if shape is None:
            if len(self._shapes) >= _MAX_CACHED_SHAPES:
                self._shapes.clear()
            shape = self._shapes[cache_key] = _build_shape(table, value_schema, key_names,
                                                           is_framed(schema_id), dialect)
        return shape

    # --- without schema -------------------------------------------------------------------

    def _convert_plain(
        self, table: TableName, key_payload: dict[str, Any], image: dict[str, Any] | None,
        dialect: SourceDialect,
    ) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
        converters = self._plain_converters(table)
        key = tuple(_plain_value(converters, table, n, v) for n, v in key_payload.items())
        if image is None:
            return key, None
        values = {n: _plain_value(converters, table, n, v)
                  for n, v in image.items() if not dialect.is_toast(v)}
        return key, values

    def _plain_converters(self, table: TableName) -> dict[str, Converter]:
        if self._catalog is None:
            raise _Reject("no_schema", "message has no schema and the decoder has no table catalog")
        columns = self._catalog.columns(table)
        if columns is None:
            raise _Reject("unknown_table", f"schemaless message for missing table {table}")
        cached = self._plain.get(table)
        if cached is None or cached[0] is not columns:
            cached = (columns, {name: coerce_for_column(t) for name, t in columns.items()})
            self._plain[table] = cached
        return cached[1]


def _cell_dialect(source: Any) -> WriteTimeDialect | None:
    """The Cassandra-model dialect of a change's `source` block, if it is one."""
    if not isinstance(source, dict):
        return None
    try:
        dialect = dialect_for(source)
    except ValueError:
        return None
    return dialect if isinstance(dialect, WriteTimeDialect) else None


def _plain_value(converters: dict[str, Converter], table: TableName, name: str, v: Any) -> Any:
    conv = converters.get(name)
    if conv is None:
        raise _Reject("unknown_column", f"column {name!r} is not in target table {table}")
    if v is None:
        return None
    try:
        return conv(v)
    except _CONVERSION_ERRORS as exc:
        raise _Reject("bad_value", f"column {name!r}: cannot convert {v!r}: {exc}") from None


def _convert(
    shape: _Shape, key_payload: dict[str, Any], image: dict[str, Any] | None
) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
    name = ""
    v: Any = None
    try:
        key = []
        for name, conv in zip(shape.schema.key, shape.key_converters, strict=True):
            v = key_payload[name]
            key.append(None if v is None else conv(v))
        if image is None:
            return tuple(key), None
        values: dict[str, Any] = {}
        for name, conv, toasts in shape.columns:
            v = image.get(name, _ABSENT)
            if v is None:
                values[name] = None
            elif v is not _ABSENT and v not in toasts:
                values[name] = conv(v)
        return tuple(key), values
    except _CONVERSION_ERRORS as exc:
        pg_type = {c.name: c.pg_type for c in shape.schema.columns}.get(name)
        raise _Reject(
            "bad_value", f"column {name!r} ({pg_type}): cannot convert {v!r}: {exc}"
        ) from None


def _build_shape(table: TableName, value_schema: Any, key_names: tuple[str, ...],
                 binary: bool, dialect: SourceDialect) -> _Shape:
    """`binary`: bytes values arrive as bytes (Avro), not as base64 text (JSON)."""
    row = _row_schema(value_schema)
    columns = []
    types: dict[str, FieldType] = {}
    for field in row:
        if not isinstance(field, dict) or not isinstance(field.get("field"), str):
            raise _Reject("bad_schema", f"row schema field {field!r} has no name")
        name = field["field"]
        try:
            ft = field_type(field)
        except (ValueError, TypeError) as exc:
            raise _Reject("bad_schema", f"column {name!r}: {exc}") from None
        columns.append((name, ft, dialect.toast_placeholders(field, binary)))
        types[name] = ft
    missing = [n for n in key_names if n not in types]
    if missing:
        raise _Reject("bad_schema", f"key column(s) {missing} are not in the row schema")
    schema = TableSchema(
        table, tuple(Column(name, ft.pg_type) for name, ft, _ in columns), key_names
    )
    return _Shape(
        schema,
        tuple((name, ft.convert, toast) for name, ft, toast in columns),
        tuple(types[n].convert for n in key_names),
        NativeShape(schema,
                    tuple((n, native_kind(types[n])) for n in key_names),
                    tuple((name, native_kind(ft), toast) for name, ft, toast in columns)),
    )


def _row_schema(value_schema: Any) -> list[Any]:
    """The field list of the envelope's `after` (or `before`) struct."""
    fields = value_schema.get("fields") if isinstance(value_schema, dict) else None
    for wanted in ("after", "before"):
        for f in fields if isinstance(fields, list) else ():
            if isinstance(f, dict) and f.get("field") == wanted:
                row = f.get("fields")
                if isinstance(row, list):
                    return row
    raise _Reject("bad_schema", "value schema has no 'after' or 'before' struct")


def _schema_prefix(raw: bytes, doc: dict[str, Any]) -> bytes | None:
    """The bytes `{"schema":<schema>,"payload":` that start `raw`, if they can be verified."""
    end = raw.find(_PAYLOAD_SEPARATOR)
    if not raw.startswith(_SCHEMA_HEAD) or end < 0 or not raw.endswith(b"}"):
        return None
    try:
        same = (orjson.loads(raw[len(_SCHEMA_HEAD) : end]) == doc["schema"]
                and orjson.loads(raw[end + len(_PAYLOAD_SEPARATOR) : -1]) == doc["payload"])
    except orjson.JSONDecodeError:
        return None
    return raw[: end + len(_PAYLOAD_SEPARATOR)] if same else None


def _loads(raw: bytes, what: str, error_type: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _Reject(error_type, f"{what} is not JSON: {exc}") from None


def _kind(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(v), "null" if v is None else "number"
    )
