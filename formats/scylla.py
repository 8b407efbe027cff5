"""The ScyllaDB CDC source connector (`scylladb/scylla-cdc-source-connector` 2.x): its dialect,
and its change events (Connect JSON with schemas) → `CellChange` (formats/cells.py).

The facts below are the connector's code's (tests/fixtures/scylla/README.md, which says where its
README differs). Ops: `c` row insert (writes the row marker), `u` row update, `d` row delete or
partition delete. `source.ts_us` is the write time (`cdc$time`). There is no snapshot.

Legacy format (`cdc.output.format=legacy`, the default): key columns are plain values; every other
column is a cell: `{"value": x}` sets it to x, `{"value": null}` sets it to null, `null` leaves it
untouched, so a change writes exactly the cells it shows. Collections, tuples and UDTs are not in
this format at all.

Advanced format: plain values in row images chosen by `cdc.include.before` / `cdc.include.after`:
- `none` (the default) for both: every op has neither image, so nothing can be replicated;
  `decode_scylla` raises `NoRowImage` at the first insert or update. The flow should stop at
  start-up on it, naming the settings, rather than send every change to the DLQ.
- `after`: an insert's is the whole post-image in both other modes; an update's is the whole
  post-image (`full`) or its modified non-null columns (`only-updated`). A cell is written when
  its `after` value is not null and differs from its `before` value (an update's untouched columns
  are equal in `full` images and null in `only-updated` ones). A limit of both: rewriting a cell
  with the value it held is not seen, so that cell keeps its older write time.
- Set to null: `after` cannot show it in `only-updated` (a modified column is put only when its
  new value is not null); a cell whose `before` value is not null and whose `after` value is null
  was set to null, so `before` (`full` or `only-updated`) reveals it. Without a `before` image, and
  for a cell that was already null, a write of null is not seen.
- With `before` but no `after` (`cdc.include.after=none`) an insert or update says nothing of the
  values written: `missing_after`.
- Non-frozen collections: in `full` the post-image holds the whole collection, which replaces the
  stored one. In `only-updated` `after` holds only the elements this write added and not the
  removed ones (`cdc$deleted_elements_<col>` only marks the column modified), so the change cannot
  be applied element-wise: tables with non-frozen collections need `cdc.include.after=full`. A
  message does not tell the two modes apart.

Deletes: `before` holds the pre-image of a row delete whatever the mode (key columns and null cells
in the legacy format). The connector emits a partition delete only for a table without clustering
key (where a partition is one row), with neither image in the advanced format: that is a
PARTITION_DELETE over the whole key. In the legacy format it looks like a row delete and is
decoded as one, with the same effect on such a table. Range deletes are not emitted. Each delete
is followed by a Kafka tombstone (null value), which carries nothing: `decode_scylla` returns None.

TTL: the messages carry no cell TTL in either format and an expiry emits nothing
(scylladb/scylladb#8380), so `expires_us` is always empty; a ScyllaDB 2026.1 per-row TTL expiry
arrives as a row delete at the expiry's time.

Types: `schemas/cql_types.py`; ScyllaDB writes decimal, varint, uuid, timeuuid, inet and duration
as strings and time as a plain int64, so pass the columns' declared CQL types (`cql_types`) to
map them as their CQL types rather than as text and bigint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from formats.cells import (
    CellChange,
    CellKind,
    CellMessage,
    CellReject,
    Shapes,
    WriteTimeDialect,
    column_type,
    convert,
    decoded_or_dlq,
    envelope,
    is_snapshot,
    key_values,
    row_fields,
    schema_of,
    value_parts,
)
from operators.events import DlqRecord, RawMessage, TableName
from schemas.cql_types import CqlType

OPS = ("c", "u", "d")


class ScyllaDialect(WriteTimeDialect):
    connector = "scylla"

    def decode(self, msg: RawMessage, table: TableName,
               cql_types: Mapping[str, str] | None = None,
               parts: CellMessage | None = None) -> CellChange | DlqRecord | None:
        return decode_scylla(msg, table, cql_types, parts)

    def native_columns(self, parts: CellMessage, cql_types: Mapping[str, str] | None,
                       ) -> Mapping[str, CqlType] | None:
        """The legacy format's columns (`native/src/cell_decode.rs` reads that format only)."""
        if not isinstance(parts.schema, dict):
            return None
        legacy, types = _SHAPES(parts, parts.schema, cql_types or {})
        return types if legacy else None


class NoRowImage(Exception):
    """The connector sends no row images (`cdc.include.before` and `cdc.include.after` are
    `none`): a configuration error, not a bad message; the flow should stop on it."""

    error_type = "no_row_image"


def decode_scylla(msg: RawMessage, table: TableName,
                  cql_types: Mapping[str, str] | None = None,
                  parts: CellMessage | None = None) -> CellChange | DlqRecord | None:
    """One message of `table` → its `CellChange`, a `DlqRecord` naming what is wrong with it, or
    None for a Kafka tombstone. `cql_types`: column → declared CQL type, where known. Raises
    `NoRowImage` for an insert or update without row images."""
    return decoded_or_dlq(_decode, msg, table, cql_types, parts)


def _decode(msg: RawMessage, parts: CellMessage, table: TableName,
            cql_types: Mapping[str, str]) -> CellChange:
    value_schema, payload = value_parts(parts)
    op, source, ts_us = envelope(payload, OPS)
    keys = key_values(parts)
    legacy, types = _SHAPES(parts, value_schema, cql_types)
    missing = [name for name in keys if name not in types]
    if missing:
        raise CellReject("bad_schema", f"key column(s) {missing} are not in the row schema")
    key = tuple(convert(name, types[name], v) for name, v in keys.items())
    if None in key:
        raise CellReject("missing_key", f"key {keys} has null values")
    before, after = _image(payload, "before"), _image(payload, "after")
    regular = {name: t for name, t in types.items() if name not in keys}
    kind = CellKind.WRITE
    cells: dict[str, Any] = {}
    if op == "d":
        whole_partition = not legacy and before is None and after is None
        kind = CellKind.PARTITION_DELETE if whole_partition else CellKind.ROW_DELETE
    elif legacy:
        cells = _legacy_cells(regular, after, op)
    else:
        cells = _advanced_cells(regular, before, after, op, msg)
    return CellChange(
        table, tuple(keys), key, len(key) if kind is CellKind.PARTITION_DELETE else None,
        kind, ts_us, op == "c", cells, msg.topic, msg.partition, msg.offset,
        snapshot=is_snapshot(source), schema=schema_of(table, types, tuple(keys)),
    )


def _shape(value_schema: Mapping[str, Any], declared: Mapping[str, str],
           ) -> tuple[bool, dict[str, CqlType]]:
    """(legacy format?, column → handler) of one value schema."""
    fields = row_fields(value_schema, "after")
    legacy = any(_is_cell(f) for f in fields.values())
    types = {name: column_type(name, f["fields"][0] if _is_cell(f) else f, declared.get(name))
             for name, f in fields.items()}
    return legacy, types


_SHAPES = Shapes(_shape)


def _is_cell(field: Mapping[str, Any]) -> bool:
    """A legacy cell: struct `<prefix>.<ks>.<table>.<col>.Cell` of one field, `value`."""
    name, fields = field.get("name"), field.get("fields")
    return (field.get("type") == "struct" and isinstance(name, str) and name.endswith(".Cell")
            and isinstance(fields, list) and len(fields) == 1
            and isinstance(fields[0], dict) and fields[0].get("field") == "value")


def _image(payload: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    image = payload.get(name)
    if image is not None and not isinstance(image, dict):
        raise CellReject("malformed_envelope", f"'{name}' is not an object")
    return image


def _legacy_cells(regular: Mapping[str, CqlType], after: Mapping[str, Any] | None,
                  op: str) -> dict[str, Any]:
    if after is None:
        raise CellReject("missing_after", f"op {op!r} has no 'after' row image")
    cells = {}
    for name, ctype in regular.items():
        cell = after.get(name)
        if cell is None:
            continue
        if not isinstance(cell, dict) or "value" not in cell:
            raise CellReject("bad_value", f"column {name!r}: {cell!r} is not a cell "
                                          "{\"value\": ...}")
        cells[name] = convert(name, ctype, cell["value"])
    return cells


def _advanced_cells(regular: Mapping[str, CqlType], before: Mapping[str, Any] | None,
                    after: Mapping[str, Any] | None, op: str, msg: RawMessage) -> dict[str, Any]:
    if before is None and after is None:
        raise NoRowImage(
            f"{msg.topic}[{msg.partition}]@{msg.offset}: a ScyllaDB {op!r} change has neither a "
            "'before' nor an 'after' image, so the connector runs with cdc.include.before=none "
            "and cdc.include.after=none (its default); set cdc.include.after=full (or "
            "only-updated) and cdc.include.before=full (or only-updated)")
    if after is None:
        raise CellReject("missing_after", f"op {op!r} has no 'after' row image "
                                          "(cdc.include.after=none)")
    cells = {}
    for name, ctype in regular.items():
        new = after.get(name)
        old = None if before is None else before.get(name)
        if new is not None and (op == "c" or new != old):
            cells[name] = convert(name, ctype, new)
        elif new is None and old is not None:
            cells[name] = None
    return cells
