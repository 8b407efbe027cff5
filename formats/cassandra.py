"""Debezium's Cassandra connector (`debezium-connector-cassandra` 4.x/5.x): its dialect, and its
change events (Connect JSON with schemas) → `CellChange` (formats/cells.py).

The facts below are the connector's code's (tests/fixtures/cassandra/README.md, which says where
its documentation differs: the docs' `op: "c"` and µs `source.ts_ms` are not what it writes).

- The value has `op`, `source` and `after`, no `before`. Every column of `after`, key columns
  included, is a cell `{"value": v, "deletion_ts": t, "set": true}`, or `null` for a column the
  mutation did not carry (untouched).
- `i` an INSERT (writes the row marker) and `u` an UPDATE: the cells shown are written at
  `source.ts_us`; a cell whose value is null was set to null; a cell with a value and a
  `deletion_ts` was written with a TTL and expires at `deletion_ts` (µs).
- `d` a row delete: the key is whole, every regular cell `{null, <deletion time>, true}`. A
  partition delete is a `d` whose clustering key values are null (a PARTITION_DELETE of the
  partition key); on a table without clustering key it is a row delete, the same thing there.
- `r` a range tombstone: partition key cells only, and `_range_start` / `_range_end`
  (`{method: ClusteringPrefix.Kind, values: [{name, value, type}]}`, each value in CQL's text form
  with its marshal type, the clustering columns it names).
- Snapshot rows are `i` with `source.snapshot` `true` and `source.ts_us` the time of the
  snapshot's read, not the cells' write times; their TTL cells carry the expiry.
- Types: `schemas/cql_types.py`. The connector writes inet as a plain string, time and varint
  (`varint.handling.mode=long`, the default) as int64 and decimal as a double
  (`decimal.handling.mode=double`, the default: digits past a double's are lost before the message
  is written; `precise` keeps them), so pass the columns' declared CQL types (`cql_types`,
  `system_schema.columns.type`) to map them as their CQL types.
- Counter tables: the connector skips their commit-log changes; a snapshot may still emit them.
- Non-frozen collections: a cell holds only the elements its mutation carried; the connector's
  code does not show whether it replaced the collection or added to it, so the cell replaces the
  stored collection.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from formats.cells import (
    CellChange,
    CellKind,
    CellMessage,
    CellReject,
    RangeBound,
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
from schemas.cql_types import CqlType, marshal_scalar

OPS = ("i", "u", "d", "r")
RANGE_START = "_range_start"
RANGE_END = "_range_end"
_BOUND_KINDS = {RANGE_START: ("INCL_START_BOUND", "EXCL_START_BOUND"),
                RANGE_END: ("INCL_END_BOUND", "EXCL_END_BOUND")}
# clustering orders a range delete cannot be applied in by comparing values: descending columns
# and Cassandra's own UUID and inet comparators
_UNORDERED = re.compile(r"ReversedType|TimeUUIDType|UUIDType|InetAddressType")


class CassandraDialect(WriteTimeDialect):
    connector = "cassandra"

    def decode(self, msg: RawMessage, table: TableName,
               cql_types: Mapping[str, str] | None = None,
               parts: CellMessage | None = None) -> CellChange | DlqRecord | None:
        return decode_cassandra(msg, table, cql_types, parts)


def decode_cassandra(msg: RawMessage, table: TableName,
                     cql_types: Mapping[str, str] | None = None,
                  parts: CellMessage | None = None) -> CellChange | DlqRecord | None:
    """One message of `table` → its `CellChange`, a `DlqRecord` naming what is wrong with it, or
    None for a Kafka tombstone (`tombstones.on.delete=true`). `cql_types`: column → declared
    CQL type, where known."""
    return decoded_or_dlq(_decode, msg, table, cql_types, parts)


def _decode(msg: RawMessage, parts: CellMessage, table: TableName,
            cql_types: Mapping[str, str]) -> CellChange:
    value_schema, payload = value_parts(parts)
    op, source, ts_us = envelope(payload, OPS)
    after = payload.get("after")
    if not isinstance(after, dict):
        raise CellReject("missing_after", f"op {op!r} has no 'after' object")
    keys = key_values(parts)
    types = _SHAPES(parts, value_schema, cql_types)
    missing = [name for name in keys if name not in types]
    if missing:
        raise CellReject("bad_schema", f"key column(s) {missing} are not in the row schema")
    key_columns = tuple(keys)
    key = tuple(convert(name, types[name], v) for name, v in keys.items())
    named = _named_prefix(key)
    if op in ("i", "u") and named < len(key):
        raise CellReject("missing_key", f"key {keys} of a write has null values")
    kind = {"i": CellKind.WRITE, "u": CellKind.WRITE, "r": CellKind.RANGE_DELETE,
            "d": CellKind.PARTITION_DELETE if named < len(key) else CellKind.ROW_DELETE}[op]
    whole_rows = kind in (CellKind.WRITE, CellKind.ROW_DELETE)
    change = CellChange(table, key_columns, key, None if whole_rows else named, kind, ts_us,
                        op == "i", {}, msg.topic, msg.partition, msg.offset,
                        snapshot=is_snapshot(source), schema=schema_of(table, types, key_columns))
    if kind is CellKind.WRITE:
        _write_cells(change, types, after)
        change.marker_expires_us = _insert_ttl(change)
    elif kind is CellKind.RANGE_DELETE:
        clustering = key_columns[named:]
        change.range_start = _bound(after, RANGE_START, clustering)
        change.range_end = _bound(after, RANGE_END, clustering)
    return change


def _shape(value_schema: Mapping[str, Any], declared: Mapping[str, str]) -> dict[str, CqlType]:
    """Column → handler, from the cell structs of one value schema."""
    fields = row_fields(value_schema, "after")
    types = {}
    for name, cell in fields.items():
        if name in (RANGE_START, RANGE_END):
            continue
        inner = [f for f in cell.get("fields") or () if isinstance(f, dict)]
        if [f.get("field") for f in inner] != ["value", "deletion_ts", "set"]:
            raise CellReject("bad_schema", f"column {name!r} is not a cell struct "
                                           "{value, deletion_ts, set}")
        types[name] = column_type(name, inner[0], declared.get(name))
    return types


_SHAPES = Shapes(_shape)


def _named_prefix(key: tuple[Any, ...]) -> int:
    """How many leading key values are given; the null ones must all follow them."""
    named = next((i for i, v in enumerate(key) if v is None), len(key))
    if named == 0 or any(v is not None for v in key[named:]):
        raise CellReject("missing_key", f"key {list(key)} lacks partition key values")
    return named


def _write_cells(change: CellChange, types: Mapping[str, CqlType],
                 after: Mapping[str, Any]) -> None:
    for name, ctype in types.items():
        cell = after.get(name)
        if cell is None or name in change.key_columns:
            continue
        if not isinstance(cell, dict) or "value" not in cell:
            raise CellReject("bad_value", f"column {name!r}: {cell!r} is not a cell "
                                          "{value, deletion_ts, set}")
        value = convert(name, ctype, cell["value"])
        change.cells[name] = value
        expiry = cell.get("deletion_ts")
        if value is not None and expiry is not None:
            if type(expiry) is not int or not 0 < expiry < 1 << 63:
                raise CellReject("bad_value", f"column {name!r}: deletion_ts {expiry!r} is not "
                                              "µs since the epoch")
            change.expires_us[name] = expiry


def _insert_ttl(change: CellChange) -> int | None:
    """When an INSERT's row marker expires: an INSERT's TTL (its own, or the table's default)
    is every cell's and the marker's, and the message shows it on the cells only; so when every
    value written expires at one time, the marker does too."""
    values = [col for col, v in change.cells.items() if v is not None]
    expiries = {change.expires_us.get(col) for col in values}
    if not change.row_marker or not values or len(expiries) != 1 or None in expiries:
        return None
    return expiries.pop()


def _bound(after: Mapping[str, Any], which: str, clustering: tuple[str, ...]) -> RangeBound:
    """One end of a range tombstone; its values are converted from CQL's text form by the
    handler of the marshal type named beside each."""
    bound = after.get(which)
    if not isinstance(bound, dict) or not isinstance(bound.get("values"), list):
        raise CellReject("malformed_envelope", f"range tombstone has no '{which}' bound")
    method = bound.get("method")
    if method not in _BOUND_KINDS[which]:
        raise CellReject("malformed_envelope", f"'{which}' method {method!r} is not one of "
                                               f"{', '.join(_BOUND_KINDS[which])}")
    given = {}
    for item in bound["values"]:
        if not isinstance(item, dict) or not all(
            isinstance(item.get(k), str) for k in ("name", "value", "type")
        ):
            raise CellReject("malformed_envelope", f"'{which}' value {item!r} is not "
                                                   "{name, value, type}")
        given[item["name"]] = item
    names = clustering[: len(given)]
    if set(names) != set(given):
        raise CellReject("malformed_envelope", f"'{which}' names {sorted(given)}, not a prefix "
                                               f"of the clustering columns {list(clustering)}")
    values = []
    for name in names:
        item = given[name]
        unordered = _UNORDERED.search(item["type"])
        if unordered is not None:
            raise CellReject("unsupported_range", f"'{which}' {name!r}: a range over a "
                             f"{unordered.group(0)} clustering column is not applied (its order "
                             "is not its values' natural order); replay the rows it deleted")
        try:
            values.append(marshal_scalar(item["type"]).parse(item["value"]))
        except (ValueError, TypeError, OverflowError, ArithmeticError) as exc:
            raise CellReject("bad_value", f"'{which}' {name!r}: cannot read {item['value']!r} "
                                          f"as {item['type']}: {exc}") from None
    return RangeBound(tuple(values), method.startswith("INCL"))
