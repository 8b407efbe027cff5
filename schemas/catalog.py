"""Target-table metadata read from Postgres, and value coercion for schemaless messages.

Without `schemas.enable` a Debezium JSON message carries bare values, so the target column's type
decides how to read them (`coerce_for_column`). The guesses, per column type:

- smallint/integer/bigint: a JSON integer (or an integral float such as 5.0).
- numeric(p,s): a base64 string is Debezium's default `decimal.handling.mode=precise` and is read
  as an unscaled integer at the column's scale s; a JSON number is taken as is. For `numeric`
  without a scale a string is decimal text (`decimal.handling.mode=string`) and an object is a
  VariableScaleDecimal `{scale, value}`.
- real/double precision: a JSON number. boolean: a JSON boolean.
- date: an integer is days since 1970-01-01; a string is ISO-8601.
- timestamp/timestamptz: an integer is an epoch count whose unit is guessed from its magnitude:
  |v| < 1e13 → ms, < 1e16 → µs, else ns (ms up to the year 2286; µs before 1970-04-27 are misread
  as ms). A string is ISO-8601; an offset is honoured and the value converted to UTC (naive UTC
  for `timestamp`, aware for `timestamptz`); no offset means UTC.
- time: an integer is µs past midnight; a string is ISO-8601. time with time zone: a string.
- interval: an integer is µs; a string is an ISO-8601 duration.
- uuid: a string. json/jsonb: a string holding JSON, or an object/array as is. bytea: base64.
- bit/bit varying(n): Debezium Bits, base64 little-endian, read at the declared length n.
- text and any other type: a string as is, other values as `str(value)`.
- `<type>[]`: a JSON array of the element type.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from functools import cache
from time import monotonic
from typing import Any, TypeVar

import orjson
import psycopg

from operators.events import TableName
from operators.retry import retrying
from schemas.debezium_types import (
    Converter,
    bits_to_str,
    days_to_date,
    decode_base64,
    decode_decimal,
    decode_variable_decimal,
    micros_to_datetime,
    micros_to_time,
    parse_iso_interval,
    parse_timestamptz,
    parse_timetz,
    to_bool,
    to_float,
    to_str,
)

T = TypeVar("T")
MISSING_RECHECK_S = 5.0
_UNKNOWN: Any = object()

_COLUMNS_SQL = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod)
FROM (SELECT to_regclass(format('%%I.%%I', %s::text, %s::text)) AS oid) AS t
LEFT JOIN pg_attribute AS a ON a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE t.oid IS NOT NULL
ORDER BY a.attnum
"""

_PRIMARY_KEY_SQL = """
SELECT a.attname
FROM pg_index AS i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = to_regclass(format('%%I.%%I', %s::text, %s::text)) AND i.indisprimary
ORDER BY k.n
"""


class TableCatalog:
    """Column types and primary keys of target tables, cached until `invalidate`.

    `connect` is called once per cache miss and the connection is closed after the query.
    Transient database errors are retried with backoff; others propagate.
    """

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]]) -> None:
        self._connect = connect
        self._columns: dict[TableName, dict[str, str] | None] = {}
        self._keys: dict[TableName, tuple[str, ...]] = {}
        self._recheck: dict[TableName, float] = {}

    def columns(self, table: TableName) -> dict[str, str] | None:
        """Column name → `format_type` string in column order; None if the table is missing.

        A missing table is looked up again after `MISSING_RECHECK_S`, so creating it takes
        effect without a restart."""
        cached = self._columns.get(table, _UNKNOWN)
        if cached is _UNKNOWN or (cached is None and monotonic() >= self._recheck[table]):
            cached = self._columns[table] = self._read(read_columns, table)
            if cached is None:
                self._recheck[table] = monotonic() + MISSING_RECHECK_S
        return cached

    def primary_key(self, table: TableName) -> tuple[str, ...]:
        """Primary-key columns in key order; empty if the table is missing or has none."""
        if table not in self._keys:
            self._keys[table] = self._read(read_primary_key, table)
        return self._keys[table]

    def _read(self, query: Callable[[psycopg.Connection[Any], TableName], T], table: TableName
              ) -> T:
        """Run `query` on a fresh connection; Postgres being away is waited out, not raised."""
        def attempt() -> T:
            with self._connect() as conn:
                return query(conn, table)

        return retrying(f"read the catalog of {table}", attempt)

    def invalidate(self, table: TableName) -> None:
        self._columns.pop(table, None)
        self._keys.pop(table, None)


def read_columns(conn: psycopg.Connection[Any], table: TableName) -> dict[str, str] | None:
    """Column name → `format_type` string in column order; None if the table is missing."""
    rows = conn.execute(_COLUMNS_SQL, (table.schema, table.name)).fetchall()
    return {n: t for n, t in rows if n is not None} if rows else None


def read_primary_key(conn: psycopg.Connection[Any], table: TableName) -> tuple[str, ...]:
    """Primary-key columns in key order; empty if the table is missing or has none."""
    rows = conn.execute(_PRIMARY_KEY_SQL, (table.schema, table.name)).fetchall()
    return tuple(name for (name,) in rows)


@cache
def coerce_for_column(pg_type: str) -> Converter:
    """Converter from a bare JSON value (non-null) to the Python value of a `pg_type` column."""
    if pg_type.endswith("[]"):
        elem = coerce_for_column(pg_type[:-2])
        return lambda v: [None if x is None else elem(x) for x in _list(v)]
    base, modifiers = _split_type(pg_type)
    if base == "numeric":
        if modifiers and "," in modifiers:
            scale = int(modifiers.split(",")[1])
            return lambda v: decode_decimal(v, scale)
        return _any_decimal
    if base in ("bit", "bit varying"):
        length = int(modifiers) if modifiers else None
        return lambda v: bits_to_str(v, length)
    return _BY_BASE_TYPE.get(base, _as_text)


_TYPE_RE = re.compile(r"([a-z ]+?)(?:\(([\d,]+)\))?( with(?:out)? time zone)?")


def _split_type(pg_type: str) -> tuple[str, str | None]:
    """`timestamp(3) with time zone` → (`timestamp with time zone`, `3`)."""
    m = _TYPE_RE.fullmatch(pg_type)
    if m is None:
        return pg_type, None
    return m.group(1) + (m.group(3) or ""), m.group(2)


def _list(v: Any) -> list[Any]:
    if type(v) is not list:
        raise ValueError(f"{v!r} is not an array")
    return v


def _integer(bits: int) -> Converter:
    low, high = -(1 << (bits - 1)), 1 << (bits - 1)

    def convert(v: Any) -> int:
        if type(v) is float and v.is_integer():
            v = int(v)
        if type(v) is not int or not low <= v < high:
            raise ValueError(f"{v!r} does not fit a {bits}-bit integer column")
        return v

    return convert


def _any_decimal(v: Any) -> Decimal:
    if type(v) is str:
        return Decimal(v)
    if isinstance(v, dict):
        return decode_variable_decimal(v)
    return decode_decimal(v, 0)


def _date(v: Any) -> date:
    return days_to_date(v) if type(v) is int else date.fromisoformat(to_str(v))


def _epoch_micros(v: int) -> int:
    magnitude = abs(v)
    if magnitude < 10**13:
        return v * 1000
    if magnitude < 10**16:
        return v
    return v // 1000


def _timestamp(v: Any) -> datetime:
    if type(v) is int:
        return micros_to_datetime(_epoch_micros(v))
    return parse_timestamptz(v).replace(tzinfo=None)


def _timestamptz(v: Any) -> datetime:
    if type(v) is int:
        return micros_to_datetime(_epoch_micros(v)).replace(tzinfo=UTC)
    return parse_timestamptz(v)


def _time(v: Any) -> time:
    return micros_to_time(v) if type(v) is int else time.fromisoformat(to_str(v))


def _interval(v: Any) -> timedelta:
    return timedelta(microseconds=v) if type(v) is int else parse_iso_interval(v)


def _uuid(v: Any) -> uuid.UUID:
    return uuid.UUID(to_str(v))


def _jsonb(v: Any) -> Any:
    return orjson.loads(v) if type(v) is str else v


def _as_text(v: Any) -> str:
    return v if type(v) is str else str(v)


_BY_BASE_TYPE: dict[str, Converter] = {
    "smallint": _integer(16),
    "integer": _integer(32),
    "bigint": _integer(64),
    "real": to_float,
    "double precision": to_float,
    "boolean": to_bool,
    "date": _date,
    "timestamp without time zone": _timestamp,
    "timestamp with time zone": _timestamptz,
    "time without time zone": _time,
    "time with time zone": parse_timetz,
    "interval": _interval,
    "uuid": _uuid,
    "json": _jsonb,
    "jsonb": _jsonb,
    "bytea": decode_base64,
}
