"""CQL types → Postgres types, with converters from what the ScyllaDB and Debezium Cassandra
connectors write for them (docs/types.md, "ScyllaDB" and "Cassandra").

Both connectors map each CQL type to a Kafka Connect schema (tests/fixtures/scylla/README.md,
tests/fixtures/cassandra/README.md), and several CQL types share one: ScyllaDB writes decimal,
varint, uuid, timeuuid, inet and duration as plain strings and time as a plain int64; Cassandra
writes inet as a plain string, time and varint (by default) as int64 and decimal (by default) as a
double. So a column's handler is chosen by its declared CQL type when the caller knows it
(`system_schema.columns.type`, e.g. `frozen<map<text, int>>`), else by what the Connect schema
alone tells (`_GUESS`: a string is text, an int64 bigint, a double double). The handler then picks
its converter by the Connect schema the value arrives in; a CQL type arriving in a schema neither
connector writes for it is a schema error (ValueError).

Handlers are registered by name, like psycopg's adapters: each `Scalar` lists the names it answers
to (CQL names and Cassandra's marshal class names, which range-tombstone bounds carry). Converters
take a non-null wire value (JSON; bytes for Avro blobs) and return what psycopg returns when it
reads the Postgres type back, so a key read from Postgres rebuilds the same state key
(operators/keys.py). A value that cannot convert raises ValueError, TypeError or OverflowError.

Decisions:
- tinyint → smallint (Postgres has no one-byte integer); varint → numeric; counter → bigint.
- decimal → numeric, never double precision. A decimal that arrived as a double (Cassandra's
  default `decimal.handling.mode=double`) is taken as the shortest decimal that reads back as that
  double (`repr`): digits the connector already rounded away are not recovered.
- timestamp → timestamptz (a CQL timestamp is an instant, ms since the epoch), UTC-aware.
- time → time and duration → interval hold µs: nanoseconds below the µs are dropped (toward
  zero). A duration's months become days as psycopg reads an interval (a year = 365 d, a month =
  30 d); Cassandra's NanoDuration already folded months into nanoseconds with 30.4375-day months.
- inet → inet, as `ipaddress` objects; Cassandra's `InetAddress.toString` form (`/127.0.0.1`,
  `host/127.0.0.1`) loses everything up to its `/`.
- list/set of a scalar → an array of its Postgres type; of a collection, tuple or UDT → jsonb.
  map → a jsonb object (keys as text), tuple → a jsonb array, UDT → a jsonb object; values inside
  jsonb take their JSON form (`_jsonable`: numbers that JSON may round, like decimal, as text).
  Frozen or not, the mapping is the same.
"""

from __future__ import annotations

import binascii
import ipaddress
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any, NamedTuple

import orjson

from schemas.debezium_types import (
    Converter,
    days_to_date,
    decode_base64,
    decode_decimal,
    decode_variable_decimal,
    int_range,
    micros_to_time,
    to_bool,
    to_float,
    to_str,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_K_DATE = "org.apache.kafka.connect.data.Date"
_K_TIMESTAMP = "org.apache.kafka.connect.data.Timestamp"
_K_DECIMAL = "org.apache.kafka.connect.data.Decimal"
_D_DATE = "io.debezium.time.Date"
_D_TIMESTAMP = "io.debezium.time.Timestamp"
_D_NANO_DURATION = "io.debezium.time.NanoDuration"
_D_NANO_TIME = "io.debezium.time.NanoTime"
_D_UUID = "io.debezium.data.Uuid"
_D_VARIABLE_DECIMAL = "io.debezium.data.VariableScaleDecimal"
_WIRE_ALIASES = {"float32": "float", "float64": "double"}  # Connect's Schema.Type names

Wire = tuple[str, str | None]  # (Connect type as JsonConverter names it, schema name)
ConverterFor = Callable[[Mapping[str, str]], Converter]  # the schema's parameters → converter


@dataclass(frozen=True, slots=True)
class CqlType:
    """A column's CQL type resolved against the Connect schema its values arrive in."""

    cql: str
    pg_type: str
    convert: Converter
    scalar: bool = True


@dataclass(frozen=True, slots=True)
class Scalar:
    """The handler of one CQL scalar type: the names it registers under (CQL names first, then
    Cassandra marshal class names), its Postgres type, a converter per Connect schema a connector
    writes it as, and a parser of CQL's own text form of a value (`AbstractType.getString`, what
    Cassandra's range-tombstone bounds hold)."""

    names: tuple[str, ...]
    pg_type: str
    wire: Mapping[Wire, ConverterFor]
    parse: Converter


# --- converters -----------------------------------------------------------------------------


def _always(convert: Converter) -> ConverterFor:
    return lambda _parameters: convert


def _int_text(bits: int) -> Converter:
    check = int_range(bits)
    return lambda v: check(int(_integer_text(v)))


_INTEGER = re.compile(r"-?\d+")


def _integer_text(v: Any) -> str:
    if not _INTEGER.fullmatch(to_str(v)):
        raise ValueError(f"{v!r} is not an integer")
    return v


def pg_numeric(d: Decimal) -> Decimal:
    """`d` as psycopg reads it back from `numeric`: finite, and a positive exponent (Java's
    `1E+3`) written out, since Postgres keeps no negative scale."""
    if not d.is_finite():
        raise ValueError(f"{d} is not a finite decimal")
    return d.quantize(Decimal(1)) if d.as_tuple().exponent > 0 else d  # type: ignore[operator]


def _decimal_text(v: Any) -> Decimal:
    try:
        return pg_numeric(Decimal(to_str(v)))
    except InvalidOperation:
        raise ValueError(f"{v!r} is not a decimal") from None


def _decimal_double(v: Any) -> Decimal:
    return pg_numeric(Decimal(repr(to_float(v))))


def _varint_long(v: Any) -> Decimal:
    return Decimal(int_range(64)(v))


def _varint_text(v: Any) -> Decimal:
    return Decimal(_integer_text(v))


def _kafka_decimal(parameters: Mapping[str, str]) -> Converter:
    scale = int(parameters.get("scale", 0))
    return lambda v: pg_numeric(decode_decimal(v, scale))


def _uuid(v: Any) -> uuid.UUID:
    return uuid.UUID(to_str(v))


def _inet(v: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(to_str(v).rpartition("/")[2])


def _nanos_to_micros(ns: Any) -> int:
    """Whole µs of a signed count of ns, toward zero."""
    micros = abs(int_range(64)(ns)) // 1000
    return micros if ns >= 0 else -micros


def _nanos_to_time(ns: Any) -> time:
    return micros_to_time(_nanos_to_micros(ns))


def _millis_to_timestamptz(ms: Any) -> datetime:
    return _EPOCH + timedelta(milliseconds=int_range(64)(ms))


def _nanos_to_interval(ns: Any) -> timedelta:
    return timedelta(microseconds=_nanos_to_micros(ns))


_CQL_DURATION = re.compile(
    r"(-)?(?:(\d+)y)?(?:(\d+)mo)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?"
    r"(?:(\d+)ms)?(?:(\d+)(?:us|µs))?(?:(\d+)ns)?"
)
_DURATION_NANOS = (3_600_000_000_000, 60_000_000_000, 1_000_000_000, 1_000_000, 1_000, 1)


def parse_cql_duration(v: Any) -> timedelta:
    """CQL's duration text (`CqlDuration.toString`, `Duration.toString`: `1y2mo3d4h5m6s7ms8us9ns`,
    leading `-` if negative) → timedelta, a year 365 days and a month 30 days."""
    m = _CQL_DURATION.fullmatch(to_str(v))
    if m is None or not any(m.groups()[1:]):
        raise ValueError(f"{v!r} is not a CQL duration")
    sign, years, months, weeks, days, *clock = m.groups()
    day_count = 365 * int(years or 0) + 30 * int(months or 0) + 7 * int(weeks or 0) + int(days or 0)
    nanos = sum(int(n or 0) * unit for n, unit in zip(clock, _DURATION_NANOS, strict=True))
    delta = timedelta(days=day_count, microseconds=nanos // 1000)
    return -delta if sign else delta


def _parse_time(v: Any) -> time:
    """`TimeSerializer` text, `12:34:56.789000000`: nanoseconds cut to µs."""
    clock, _, fraction = to_str(v).partition(".")
    return time.fromisoformat(clock).replace(microsecond=int((fraction + "000000")[:6]))


def _parse_timestamp(v: Any) -> datetime:
    parsed = datetime.fromisoformat(to_str(v))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _parse_bool(v: Any) -> bool:
    text = to_str(v).lower()
    if text not in ("true", "false"):
        raise ValueError(f"{v!r} is not a boolean")
    return text == "true"


def _parse_blob(v: Any) -> bytes:
    text = to_str(v)
    return bytes.fromhex(text[2:] if text.startswith("0x") else text)


# --- the registry ---------------------------------------------------------------------------

_STRING: Wire = ("string", None)
_INT64: Wire = ("int64", None)
_TEXT_WIRE = {_STRING: _always(to_str)}


def _integer(names: tuple[str, ...], pg_type: str, wire: str, bits: int) -> Scalar:
    return Scalar(names, pg_type, {(wire, None): _always(int_range(bits))}, _int_text(bits))


_UUID_WIRE = {_STRING: _always(_uuid), ("string", _D_UUID): _always(_uuid)}

SCALARS: tuple[Scalar, ...] = (
    Scalar(("text", "varchar", "UTF8Type"), "text", _TEXT_WIRE, to_str),
    Scalar(("ascii", "AsciiType"), "text", _TEXT_WIRE, to_str),
    _integer(("tinyint", "ByteType"), "smallint", "int8", 8),
    _integer(("smallint", "ShortType"), "smallint", "int16", 16),
    _integer(("int", "Int32Type"), "integer", "int32", 32),
    _integer(("bigint", "LongType"), "bigint", "int64", 64),
    _integer(("counter", "CounterColumnType"), "bigint", "int64", 64),
    Scalar(("varint", "IntegerType"), "numeric",
           {_STRING: _always(_varint_text), _INT64: _always(_varint_long),
            ("bytes", _K_DECIMAL): _kafka_decimal}, _varint_text),
    Scalar(("decimal", "DecimalType"), "numeric",
           {_STRING: _always(_decimal_text), ("double", None): _always(_decimal_double),
            ("struct", _D_VARIABLE_DECIMAL):
                _always(lambda v: pg_numeric(decode_variable_decimal(v)))},
           _decimal_text),
    Scalar(("float", "FloatType"), "real", {("float", None): _always(to_float)},
           lambda v: float(to_str(v))),
    Scalar(("double", "DoubleType"), "double precision", {("double", None): _always(to_float)},
           lambda v: float(to_str(v))),
    Scalar(("boolean", "BooleanType"), "boolean", {("boolean", None): _always(to_bool)},
           _parse_bool),
    Scalar(("blob", "BytesType"), "bytea", {("bytes", None): _always(decode_base64)},
           _parse_blob),
    Scalar(("uuid", "UUIDType"), "uuid", _UUID_WIRE, _uuid),
    Scalar(("timeuuid", "TimeUUIDType"), "uuid", _UUID_WIRE, _uuid),
    Scalar(("inet", "InetAddressType"), "inet", {_STRING: _always(_inet)}, _inet),
    Scalar(("date", "SimpleDateType"), "date",
           {("int32", _K_DATE): _always(days_to_date), ("int32", _D_DATE): _always(days_to_date)},
           lambda v: date.fromisoformat(to_str(v))),
    Scalar(("time", "TimeType"), "time",
           {_INT64: _always(_nanos_to_time), ("int64", _D_NANO_TIME): _always(_nanos_to_time)},
           _parse_time),
    Scalar(("timestamp", "TimestampType", "DateType"), "timestamptz",
           {("int64", _K_TIMESTAMP): _always(_millis_to_timestamptz),
            ("int64", _D_TIMESTAMP): _always(_millis_to_timestamptz)},
           _parse_timestamp),
    Scalar(("duration", "DurationType"), "interval",
           {_STRING: _always(parse_cql_duration),
            ("int64", _D_NANO_DURATION): _always(_nanos_to_interval)},
           parse_cql_duration),
)
HANDLERS: dict[str, Scalar] = {name: s for s in SCALARS for name in s.names}

# The converters with a native twin in `cdc_native.CellPlan` (`native/src/cell_decode.rs`,
# `CellType`), found by identity: (kind name, parameter) as the plan takes it.
_NATIVE: dict[Converter, tuple[str, int]] = {
    to_str: ("str", 0), to_bool: ("bool", 0), to_float: ("float", 0),
    decode_base64: ("bytes", 0), days_to_date: ("date", 0),
    _decimal_text: ("decimal_text", 0), _millis_to_timestamptz: ("timestamp_ms", 0),
    **{HANDLERS[name].wire[(wire, None)]({}): ("int", bits) for name, wire, bits in (
        ("tinyint", "int8", 8), ("smallint", "int16", 16), ("int", "int32", 32),
        ("bigint", "int64", 64), ("counter", "int64", 64))},
}


def native_kind(ctype: CqlType) -> tuple[str, int] | None:
    """The native twin of a column's converter (`_NATIVE`), None where it has none."""
    return _NATIVE.get(ctype.convert)


# The CQL type a Connect schema is taken for when the column's CQL type is not known.
_GUESS: dict[Wire, str] = {
    _STRING: "text",
    ("string", _D_UUID): "uuid",
    ("int8", None): "tinyint",
    ("int16", None): "smallint",
    ("int32", None): "int",
    _INT64: "bigint",
    ("float", None): "float",
    ("double", None): "double",
    ("boolean", None): "boolean",
    ("bytes", None): "blob",
    ("bytes", _K_DECIMAL): "varint",  # Cassandra's varint.handling.mode=precise (scale 0)
    ("struct", _D_VARIABLE_DECIMAL): "decimal",
    ("int32", _K_DATE): "date",
    ("int32", _D_DATE): "date",
    ("int64", _K_TIMESTAMP): "timestamp",
    ("int64", _D_TIMESTAMP): "timestamp",
    ("int64", _D_NANO_DURATION): "duration",
    ("int64", _D_NANO_TIME): "time",
}


_REVERSED = re.compile(r"(?:[\w.]*\.)?ReversedType\((.*)\)")


def marshal_scalar(marshal: str) -> Scalar:
    """The handler of a Cassandra marshal type, e.g. `org.apache.cassandra.db.marshal.Int32Type`
    or a descending clustering column's `...ReversedType(...Int32Type)`."""
    inner = marshal
    while (reversed_ := _REVERSED.fullmatch(inner)) is not None:
        inner = reversed_.group(1)
    name = inner.rpartition(".")[2]
    handler = HANDLERS.get(name)
    if handler is None or name[:1].islower():
        raise ValueError(f"no CQL scalar handles the marshal type {marshal!r}")
    return handler


# --- CQL type text --------------------------------------------------------------------------


class _Node(NamedTuple):
    name: str
    args: tuple[_Node, ...] = ()

    def __str__(self) -> str:
        return self.name + (f"<{', '.join(map(str, self.args))}>" if self.args else "")


_TOKEN = re.compile(r'\s*(?:([A-Za-z_][A-Za-z0-9_.]*)|"((?:[^"]|"")+)"|([<>,]))')


def parse_cql_type(text: str) -> _Node:
    """`frozen<map<text, int>>` → a tree of names; unquoted names are case-insensitive."""
    tokens = []
    pos = 0
    while pos < len(text.rstrip()):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f"cannot read CQL type {text!r} at {pos}")
        bare, quoted, punct = m.groups()
        tokens.append(bare.lower() if bare else quoted.replace('""', '"') if quoted else punct)
        pos = m.end()
    node, rest = _node(tokens, text)
    if rest:
        raise ValueError(f"cannot read CQL type {text!r}: trailing {''.join(rest)!r}")
    return node


def _node(tokens: list[str], text: str) -> tuple[_Node, list[str]]:
    if not tokens or tokens[0] in "<>,":
        raise ValueError(f"cannot read CQL type {text!r}")
    name, rest = tokens[0], tokens[1:]
    if not rest or rest[0] != "<":
        return _Node(name), rest
    args = []
    rest = rest[1:]
    while True:
        arg, rest = _node(rest, text)
        args.append(arg)
        if not rest or rest[0] not in ",>":
            raise ValueError(f"cannot read CQL type {text!r}")
        sep, rest = rest[0], rest[1:]
        if sep == ">":
            return _Node(name, tuple(args)), rest


# --- resolving a column ---------------------------------------------------------------------


def column_type(schema: Mapping[str, Any], cql: str | None = None) -> CqlType:
    """The handler of a column whose values arrive in Connect `schema`: by its declared CQL type
    `cql`, else by what the schema alone tells. ValueError if they do not fit together."""
    return _resolved(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS), cql)


@cache
def _resolved(schema_json: bytes, cql: str | None) -> CqlType:
    schema = orjson.loads(schema_json)
    node = parse_cql_type(cql) if cql is not None else _guess(schema)
    return _resolve(node, schema)


def _wire(schema: Any) -> Wire:
    if not isinstance(schema, Mapping) or not isinstance(schema.get("type"), str):
        raise ValueError(f"{schema!r} is not a Connect schema")
    name = schema.get("name")
    kind = _WIRE_ALIASES.get(schema["type"], schema["type"])
    return kind, name if isinstance(name, str) else None


def _guess(schema: Mapping[str, Any]) -> _Node:
    wire = _wire(schema)
    if wire in _GUESS:
        return _Node(_GUESS[wire])
    kind = wire[0]
    if kind == "array":
        items = schema.get("items")
        if _is_map_entry(items):
            fields = _fields(items)
            return _Node("map", (_guess(fields["key"]), _guess(fields["value"])))
        return _Node("list", (_guess(items),))  # type: ignore[arg-type]
    if kind == "map":
        return _Node("map", (_guess(schema.get("keys", {"type": "string"})),
                             _guess(schema.get("values"))))  # type: ignore[arg-type]
    if kind == "struct":
        fields = _fields(schema)
        if _is_tuple(schema, fields):
            return _Node("tuple", tuple(_guess(f) for f in fields.values()))
        return _Node(_udt_name(wire[1]))
    if (kind, None) in _GUESS:  # a schema name this module does not know: its wire type
        return _Node(_GUESS[(kind, None)])
    raise ValueError(f"no CQL type arrives as Connect {kind!r} (name {wire[1]!r})")


def _fields(schema: Any) -> dict[str, Mapping[str, Any]]:
    fields = schema.get("fields") if isinstance(schema, Mapping) else None
    if not isinstance(fields, list) or not all(
        isinstance(f, Mapping) and isinstance(f.get("field"), str) for f in fields
    ):
        raise ValueError(f"struct schema {schema!r} has no named fields")
    return {f["field"]: f for f in fields}


def _is_map_entry(items: Any) -> bool:
    """ScyllaDB's map entry struct `<prefix>.<ks>.<table>.MapEntry_<K>_<V>` {key, value}."""
    name = items.get("name") if isinstance(items, Mapping) else None
    return (isinstance(name, str) and name.rpartition(".")[2].startswith("MapEntry_")
            and list(_fields(items)) == ["key", "value"])


def _is_tuple(schema: Mapping[str, Any], fields: Mapping[str, Any]) -> bool:
    """ScyllaDB: `...Tuple_<T1>_<T2>` with `field_0`...; Cassandra: `<Types>Tuple` with
    `field1`..."""
    name = (schema.get("name") or "").rpartition(".")[2]
    n = len(fields)
    return ((name.startswith("Tuple_") and list(fields) == [f"field_{i}" for i in range(n)])
            or (name.endswith("Tuple") and list(fields) == [f"field{i + 1}" for i in range(n)]))


def _udt_name(name: str | None) -> str:
    """`shop.address` (Cassandra) or `<prefix>.<ks>.<table>.UDT_address` (ScyllaDB) → address."""
    last = (name or "udt").rpartition(".")[2]
    return last.removeprefix("UDT_") or "udt"


def _resolve(node: _Node, schema: Mapping[str, Any]) -> CqlType:
    name, args = node
    if name == "frozen" and len(args) == 1:
        inner = _resolve(args[0], schema)
        return replace(inner, cql=str(node))
    if name in ("list", "set") and len(args) == 1:
        return _collection(node, schema)
    if name == "map" and len(args) == 2:
        return _map(node, schema)
    if name == "tuple" and args:
        return _tuple(node, schema)
    handler = HANDLERS.get(name)
    if handler is not None and not args and name[:1].islower():
        wire = _wire(schema)
        make = handler.wire.get(wire)
        if make is None:
            raise ValueError(f"CQL {name} does not arrive as Connect {wire[0]!r} "
                             f"(name {wire[1]!r})")
        parameters = schema.get("parameters")
        return CqlType(name, handler.pg_type,
                       make(parameters if isinstance(parameters, Mapping) else {}))
    if args or name in ("frozen", "list", "set", "map", "tuple"):
        raise ValueError(f"CQL type {node} has the wrong number of arguments")
    return _udt(node, schema)


def _collection(node: _Node, schema: Mapping[str, Any]) -> CqlType:
    if _wire(schema)[0] != "array":
        raise ValueError(f"CQL {node} does not arrive as a Connect array")
    elem = _resolve(node.args[0], schema.get("items"))  # type: ignore[arg-type]
    conv = elem.convert if elem.scalar else _json_of(elem.convert)

    def convert(v: Any) -> list[Any]:
        if type(v) is not list:
            raise ValueError(f"{v!r} is not an array")
        return [None if x is None else conv(x) for x in v]

    return CqlType(str(node), elem.pg_type + "[]" if elem.scalar else "jsonb", convert, False)


def _map(node: _Node, schema: Mapping[str, Any]) -> CqlType:
    """A Connect map (Cassandra: a JSON object, or `[[k, v], ...]` for keys that are not
    strings) or ScyllaDB's array of `{key, value}` structs → a jsonb object."""
    wire = _wire(schema)[0]
    items = schema.get("items")
    if wire == "map":
        key_schema, value_schema = schema.get("keys", {"type": "string"}), schema.get("values")
    elif wire == "array" and _is_map_entry(items):
        fields = _fields(items)
        key_schema, value_schema = fields["key"], fields["value"]
    else:
        raise ValueError(f"CQL {node} does not arrive as a Connect map or map entries")
    key_conv = _resolve(node.args[0], key_schema).convert  # type: ignore[arg-type]
    value_conv = _json_of(_resolve(node.args[1], value_schema).convert)  # type: ignore[arg-type]

    def convert(v: Any) -> dict[str, Any]:
        if isinstance(v, dict):
            entries = v.items()
        elif type(v) is list and all(isinstance(e, dict) for e in v):
            entries = [(e.get("key"), e.get("value")) for e in v]
        elif type(v) is list and all(type(e) is list and len(e) == 2 for e in v):
            entries = [(e[0], e[1]) for e in v]
        else:
            raise ValueError(f"{v!r} is not a map")
        return {_json_key(key_conv(k)): None if x is None else value_conv(x) for k, x in entries}

    return CqlType(str(node), "jsonb", convert, False)


def _tuple(node: _Node, schema: Mapping[str, Any]) -> CqlType:
    """A struct of `field_0`... (ScyllaDB) or `field1`... (Cassandra) → a jsonb array."""
    if _wire(schema)[0] != "struct":
        raise ValueError(f"CQL {node} does not arrive as a Connect struct")
    fields = _fields(schema)
    if len(fields) != len(node.args):
        raise ValueError(f"CQL {node} arrives as a struct of {len(fields)} fields")
    parts = tuple((f, _json_of(_resolve(arg, s).convert))
                  for (f, s), arg in zip(fields.items(), node.args, strict=True))
    return CqlType(str(node), "jsonb", _struct_converter(parts, list), False)


def _udt(node: _Node, schema: Mapping[str, Any]) -> CqlType:
    """A user-defined type: its fields' types are what their Connect schemas tell."""
    if _wire(schema)[0] != "struct":
        raise ValueError(f"CQL {node} is not a known type and does not arrive as a struct")
    parts = tuple((f, _json_of(_resolve(_guess(s), s).convert)) for f, s in _fields(schema).items())
    return CqlType(str(node), "jsonb", _struct_converter(parts, dict), False)


def _struct_converter(parts: tuple[tuple[str, Converter], ...], build: type) -> Converter:
    def convert(v: Any) -> Any:
        if not isinstance(v, dict):
            raise ValueError(f"{v!r} is not a struct")
        values = ((f, None if v.get(f) is None else conv(v[f])) for f, conv in parts)
        return [x for _, x in values] if build is list else dict(values)

    return convert


# --- values inside jsonb --------------------------------------------------------------------


def _json_of(convert: Converter) -> Converter:
    return lambda v: _jsonable(convert(v))


def _iso_interval(d: timedelta) -> str:
    micros = (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds
    sign, micros = ("-", -micros) if micros < 0 else ("", micros)
    seconds, micro = divmod(micros, 1_000_000)
    return f"{sign}PT{seconds}.{micro:06d}S"


_JSON_FORMS: dict[type, Converter] = {
    Decimal: str,
    uuid.UUID: str,
    ipaddress.IPv4Address: str,
    ipaddress.IPv6Address: str,
    bytes: lambda b: binascii.b2a_base64(b, newline=False).decode(),
    datetime: datetime.isoformat,
    date: date.isoformat,
    time: time.isoformat,
    timedelta: _iso_interval,
}


def _jsonable(v: Any) -> Any:
    """A converted value as JSON holds it: decimals, uuids, addresses as text; bytes as base64;
    dates and times in ISO 8601; durations as ISO 8601 seconds (`PT131400.000000S`)."""
    if type(v) is list:
        return [_jsonable(x) for x in v]
    if type(v) is dict:
        return {k: _jsonable(x) for k, x in v.items()}
    form = _JSON_FORMS.get(type(v))
    return v if form is None else form(v)


def _json_key(v: Any) -> str:
    """A map key as a JSON object key: text as is, anything else its JSON text (`1`, `true`)."""
    v = _jsonable(v)
    return v if type(v) is str else orjson.dumps(v).decode()
