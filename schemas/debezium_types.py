"""Kafka Connect / Debezium field schemas → Postgres column types and value converters.

`field_type(field)` gives the Postgres type and a converter from the JSON value to the Python
value psycopg 3 returns when it reads that type back (the sink compares keys it reads from
Postgres with decoded keys, so the two must be equal). Converters take a non-null JSON value;
callers map null to None themselves (cheaper than one more check per call). A value that cannot
convert raises ValueError, TypeError or OverflowError.

Decisions:
- Postgres `±infinity` timestamps (Debezium sends 9223372036825200000 / -9223372036832400000
  for Timestamp, MicroTimestamp and NanoTimestamp, and the strings `infinity` / `-infinity` for
  ZonedTimestamp) become `datetime.max` / `datetime.min` (UTC-aware for timestamptz), the
  sentinels psycopg documents for infinity. Without an infinity-aware dumper the row stores
  9999-12-31 23:59:59.999999 / 0001-01-01, which psycopg reads back as the same sentinels, so keys
  still compare equal; strings would not (psycopg cannot load `infinity` by default).
- Intervals (MicroDuration, ISO-8601 Interval) become `timedelta` with a month = 30 days and a
  year = 365 days, which is how psycopg loads an interval's months.
- Bits become the `bit varying` text form ('0101', most significant bit first), what psycopg
  returns for bit types; leading zeros up to the schema's `length` are kept.
- A named type this module does not know falls back to its wire type (e.g. `Ltree` → text).
"""

from __future__ import annotations

import binascii
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from functools import cache
from typing import Any, NamedTuple

import orjson

Converter = Callable[[Any], Any]


class FieldType(NamedTuple):
    pg_type: str
    convert: Converter
    native: tuple[str, int] | None = None
    """The native decoder's twin of `convert` (`native/src/lib.rs`, `Kind`), if it has one."""


PG_INFINITY = 9223372036825200000
PG_NEG_INFINITY = -9223372036832400000
_EPOCH = datetime(1970, 1, 1)
_EPOCH_DATE = date(1970, 1, 1)
_DAY_US = 86_400_000_000


def field_type(field: Mapping[str, Any]) -> FieldType:
    """Postgres type and converter of one Connect field schema; built once per distinct type."""
    return _build(*_fingerprint(field))


def _fingerprint(field: Mapping[str, Any]) -> tuple[Any, ...]:
    params = field.get("parameters")
    items = field.get("items")
    if not isinstance(params, Mapping):
        params = {}
    return (
        field.get("type"),
        field.get("name"),
        tuple(sorted(params.items())),
        _fingerprint(items) if isinstance(items, Mapping) else None,
    )


@cache
def _build(wire: Any, name: Any, params: tuple[tuple[str, str], ...], items: Any) -> FieldType:
    parameters = dict(params)
    if name in _NAMED:
        return _NAMED[name](parameters)
    if wire == "array":
        if items is None:
            raise ValueError("array schema has no 'items'")
        return _array_type(_build(*items))
    if wire in _PLAIN:
        return _PLAIN[wire]
    raise ValueError(f"unsupported Connect schema type {wire!r} (name {name!r})")


# --- plain values ---------------------------------------------------------------------------


def int_range(bits: int) -> Converter:
    """A converter that takes exactly the integers of a signed `bits`-bit type."""
    low, high = -(1 << (bits - 1)), 1 << (bits - 1)

    def convert(v: Any) -> int:
        if type(v) is not int or not low <= v < high:
            raise ValueError(f"{v!r} is not an int{bits}")
        return v

    return convert


def to_bool(v: Any) -> bool:
    if type(v) is not bool:
        raise ValueError(f"{v!r} is not a boolean")
    return v


def to_float(v: Any) -> float:
    if type(v) is not float and type(v) is not int:
        raise ValueError(f"{v!r} is not a number")
    return float(v)


def to_str(v: Any) -> str:
    if type(v) is not str:
        raise ValueError(f"{v!r} is not a string")
    return v


def decode_base64(v: Any) -> bytes:
    """Connect `bytes`: base64 text in JSON, the bytes themselves in Avro."""
    if type(v) is bytes:
        return v
    return binascii.a2b_base64(to_str(v), strict_mode=True)


def _passthrough(v: Any) -> Any:
    return v


def _array_type(elem: FieldType) -> FieldType:
    conv = elem.convert

    def convert(v: Any) -> list[Any]:
        if type(v) is not list:
            raise ValueError(f"{v!r} is not an array")
        return [None if x is None else conv(x) for x in v]

    return FieldType(elem.pg_type + "[]", convert)


_INT32 = FieldType("integer", int_range(32), ("int", 32))
_TEXT = FieldType("text", to_str, ("str", 0))
_REAL = FieldType("real", to_float, ("float", 0))
_DOUBLE = FieldType("double precision", to_float, ("float", 0))

# Keyed by the names Kafka Connect's JsonConverter writes (`JsonSchema.*_TYPE_NAME`: FLOAT32 is
# "float", FLOAT64 is "double"); "float32" / "float64" (Connect's `Schema.Type` names) are
# accepted too.
_PLAIN: dict[str, FieldType] = {
    "boolean": FieldType("boolean", to_bool, ("bool", 0)),
    "int8": FieldType("smallint", int_range(8), ("int", 8)),
    "int16": FieldType("smallint", int_range(16), ("int", 16)),
    "int32": _INT32,
    "int64": FieldType("bigint", int_range(64), ("int", 64)),
    "float": _REAL,
    "float32": _REAL,
    "double": _DOUBLE,
    "float64": _DOUBLE,
    "string": _TEXT,
    "bytes": FieldType("bytea", decode_base64, ("bytes", 0)),
    "map": FieldType("jsonb", _passthrough),
    "struct": FieldType("jsonb", _passthrough),
}


# --- dates and times ------------------------------------------------------------------------


def _whole(v: Any, unit: str) -> int:
    """A count of days or ticks: an integer, never a fraction or a boolean (which `timedelta`
    would quietly truncate or count as 1)."""
    if type(v) is not int:
        raise ValueError(f"{v!r} is not a whole number of {unit}")
    return v


def days_to_date(days: Any) -> date:
    return _EPOCH_DATE + timedelta(days=_whole(days, "days"))


def micros_to_datetime(us: Any) -> datetime:
    """Naive UTC datetime (Postgres `timestamp`) from µs since the epoch."""
    return _EPOCH + timedelta(microseconds=us)


def micros_to_time(us: Any) -> time:
    if type(us) is not int or not 0 <= us < _DAY_US:
        raise ValueError(f"{us!r} µs is not a time of day in 00:00:00-23:59:59.999999")
    seconds, micro = divmod(us, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return time(hour, minute, second, micro)


def _timestamp(multiply: int, divide: int) -> Converter:
    def convert(v: Any) -> datetime:
        if v == PG_INFINITY:
            return datetime.max
        if v == PG_NEG_INFINITY:
            return datetime.min
        return micros_to_datetime(_whole(v, "ticks") * multiply // divide)

    return convert


def _time(multiply: int, divide: int) -> Converter:
    return lambda v: micros_to_time(_whole(v, "ticks") * multiply // divide)


def parse_timestamptz(v: Any) -> datetime:
    """ISO-8601 text → UTC-aware datetime; a value without offset is taken as UTC."""
    if v == "infinity":
        return datetime.max.replace(tzinfo=UTC)
    if v == "-infinity":
        return datetime.min.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(to_str(v))
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def parse_timetz(v: Any) -> time:
    return time.fromisoformat(to_str(v))


_ISO_INTERVAL = re.compile(
    r"([-+])?P(?:([-+]?\d+)Y)?(?:([-+]?\d+)M)?(?:([-+]?\d+)W)?(?:([-+]?\d+)D)?"
    r"(?:T(?:([-+]?\d+)H)?(?:([-+]?\d+)M)?(?:([-+]?\d+(?:\.\d+)?)S)?)?"
)


def parse_iso_interval(v: Any) -> timedelta:
    """ISO-8601 duration (`P1Y2M3DT4H5M6.5S`, signed parts allowed); month = 30 d, year = 365 d.
    Seconds round to the nearest µs: Debezium Postgres formats them from a double with 9
    decimals (`1.862369999` for Postgres' `1.86237`), and Postgres intervals hold µs."""
    m = _ISO_INTERVAL.fullmatch(to_str(v))
    if m is None or not any(m.groups()[1:]):
        raise ValueError(f"{v!r} is not an ISO-8601 duration")
    sign, years, months, weeks, days, hours, minutes, seconds = m.groups()
    total_days = 365 * int(years or 0) + 30 * int(months or 0) + 7 * int(weeks or 0)
    micros = round(Decimal(seconds or 0) * 1_000_000)
    delta = timedelta(
        days=total_days + int(days or 0),
        hours=int(hours or 0),
        minutes=int(minutes or 0),
        microseconds=micros,
    )
    return -delta if sign == "-" else delta


# --- numbers, bits, strings -----------------------------------------------------------------


def decode_decimal(v: Any, scale: int) -> Decimal:
    """Connect Decimal: big-endian two's-complement unscaled integer (base64 in JSON); a JSON number
    (JsonConverter `decimal.format=NUMERIC`) is taken as is."""
    if type(v) is str or type(v) is bytes:
        unscaled = int.from_bytes(decode_base64(v), "big", signed=True)
        return Decimal(f"{unscaled}E{-scale}")
    if type(v) is int:
        return Decimal(v)
    if type(v) is float:
        return Decimal(repr(v))
    raise ValueError(f"{v!r} is not a decimal")


def decode_variable_decimal(v: Any) -> Decimal:
    """VariableScaleDecimal: struct `{"scale": s, "value": <base64 unscaled>}`."""
    if not isinstance(v, Mapping) or type(v.get("scale")) is not int:
        raise ValueError(f"{v!r} is not a VariableScaleDecimal struct")
    return decode_decimal(v.get("value"), v["scale"])


def bits_to_str(v: Any, length: int | None) -> str:
    """Debezium Bits (little-endian bytes, bit 0 first) → Postgres bit text, MSB first."""
    raw = decode_base64(v)
    value = int.from_bytes(raw, "little")
    width = len(raw) * 8 if length is None else length
    if value.bit_length() > width:
        raise ValueError(f"{v!r} has more than {width} bits")
    return format(value, f"0{width}b") if width else ""


def _decimal_type(parameters: dict[str, str]) -> FieldType:
    scale = int(parameters.get("scale", 0))
    precision = parameters.get("connect.decimal.precision")
    pg_type = f"numeric({int(precision)},{scale})" if precision else "numeric"
    return FieldType(pg_type, lambda v: decode_decimal(v, scale), ("decimal", scale))


def _bits_type(parameters: dict[str, str]) -> FieldType:
    length = int(parameters["length"]) if "length" in parameters else None
    return FieldType("bit varying", lambda v: bits_to_str(v, length))


def _enum_set(v: Any) -> list[str]:
    text = to_str(v)
    return text.split(",") if text else []


def _uuid(v: Any) -> uuid.UUID:
    return uuid.UUID(to_str(v))


def _json(v: Any) -> Any:
    return orjson.loads(to_str(v))


def _wkb(v: Any) -> bytes:
    if not isinstance(v, Mapping):
        raise ValueError(f"{v!r} is not a geometry struct with 'wkb'")
    return decode_base64(v.get("wkb"))


def _same(ft: FieldType) -> Callable[[dict[str, str]], FieldType]:
    return lambda _parameters: ft


def _fixed(pg_type: str, convert: Converter,
           native: tuple[str, int] | None = None) -> Callable[[dict[str, str]], FieldType]:
    return _same(FieldType(pg_type, convert, native))


def _clock_type(pg_type: str, build: Callable[[int, int], Converter], multiply: int,
                divide: int) -> Callable[[dict[str, str]], FieldType]:
    """A time or timestamp counted in units of `multiply / divide` µs. The native twin is the
    kind named like the Postgres type (`time`, `timestamp`), with µs per unit, or minus the
    units per µs."""
    unit = multiply if divide == 1 else -divide
    return _fixed(pg_type, build(multiply, divide), (pg_type, unit))


_NAMED: dict[str, Callable[[dict[str, str]], FieldType]] = {
    "io.debezium.time.Date": _fixed("date", days_to_date, ("date", 0)),
    "org.apache.kafka.connect.data.Date": _fixed("date", days_to_date, ("date", 0)),
    "io.debezium.time.Time": _clock_type("time", _time, 1000, 1),
    "org.apache.kafka.connect.data.Time": _clock_type("time", _time, 1000, 1),
    "io.debezium.time.MicroTime": _clock_type("time", _time, 1, 1),
    "io.debezium.time.NanoTime": _clock_type("time", _time, 1, 1000),
    "io.debezium.time.Timestamp": _clock_type("timestamp", _timestamp, 1000, 1),
    "org.apache.kafka.connect.data.Timestamp": _clock_type("timestamp", _timestamp, 1000, 1),
    "io.debezium.time.MicroTimestamp": _clock_type("timestamp", _timestamp, 1, 1),
    "io.debezium.time.NanoTimestamp": _clock_type("timestamp", _timestamp, 1, 1000),
    "io.debezium.time.ZonedTimestamp": _fixed("timestamptz", parse_timestamptz),
    "io.debezium.time.ZonedTime": _fixed("timetz", parse_timetz),
    "io.debezium.time.Year": _same(_INT32),
    "io.debezium.time.MicroDuration": _fixed("interval", lambda v: timedelta(microseconds=v)),
    "io.debezium.time.Interval": _fixed("interval", parse_iso_interval),
    "org.apache.kafka.connect.data.Decimal": _decimal_type,
    "io.debezium.data.Bits": _bits_type,
    "io.debezium.data.VariableScaleDecimal": _fixed("numeric", decode_variable_decimal),
    "io.debezium.data.Uuid": _fixed("uuid", _uuid),
    "io.debezium.data.Json": _fixed("jsonb", _json),
    "io.debezium.data.Xml": _fixed("xml", to_str, ("str", 0)),
    "io.debezium.data.Enum": _same(_TEXT),
    "io.debezium.data.EnumSet": _fixed("text[]", _enum_set),
    "io.debezium.data.geometry.Geometry": _fixed("bytea", _wkb),
    "io.debezium.data.geometry.Geography": _fixed("bytea", _wkb),
    "io.debezium.data.geometry.Point": _fixed("bytea", _wkb),
}
