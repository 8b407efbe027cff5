"""Every row of docs/types.md's ScyllaDB and Cassandra tables: a CQL type, arriving in the Connect
schema its connector writes, maps to the Postgres type and Python value the table says."""

from __future__ import annotations

import ipaddress
import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

import pytest

from schemas.cql_types import (
    HANDLERS,
    SCALARS,
    column_type,
    marshal_scalar,
    parse_cql_duration,
    parse_cql_type,
)


def s(wire: str, name: str | None = None, **more: Any) -> dict[str, Any]:
    """A Connect schema as JsonConverter writes it."""
    return {"type": wire, "optional": True, **({"name": name} if name else {}), **more}


def struct(name: str, **fields: dict[str, Any]) -> dict[str, Any]:
    return s("struct", name, fields=[{**f, "field": n} for n, f in fields.items()])


K_DATE, K_TS = "org.apache.kafka.connect.data.Date", "org.apache.kafka.connect.data.Timestamp"
D_DATE, D_TS = "io.debezium.time.Date", "io.debezium.time.Timestamp"
UUID_NAME, NANO_DURATION = "io.debezium.data.Uuid", "io.debezium.time.NanoDuration"
U1 = "81d4a030-4632-11f0-9484-409dd8f36eba"
SCYLLA_ENTRY = struct("P.shop.orders.MapEntry_TEXT_INT", key=s("string"), value=s("int32"))
SCYLLA_TUPLE = struct("P.shop.orders.Tuple_INT_TEXT", field_0=s("int32"), field_1=s("string"))
SCYLLA_UDT = struct("P.shop.orders.UDT_address", street=s("string"), zip=s("int32"))
CASSANDRA_TUPLE = struct("Int32UTF8Tuple", field1=s("int32"), field2=s("string"))
CASSANDRA_UDT = struct("inventory.address", street=s("string"), zip=s("int32"))
INSTANT = datetime(2024, 6, 10, 12, 34, 56, 789000, tzinfo=UTC)


class Row(NamedTuple):
    cql: str
    schema: dict[str, Any]
    wire: Any
    pg_type: str
    value: Any


SCYLLA = {
    "text": Row("text", s("string"), "text_val", "text", "text_val"),
    "ascii": Row("ascii", s("string"), "abc", "text", "abc"),
    "varchar": Row("varchar", s("string"), "v", "text", "v"),
    "tinyint": Row("tinyint", s("int8"), 5, "smallint", 5),
    "smallint": Row("smallint", s("int16"), 7, "smallint", 7),
    "int": Row("int", s("int32"), -2147483648, "integer", -2147483648),
    "bigint": Row("bigint", s("int64"), 1234567890123, "bigint", 1234567890123),
    "varint": Row("varint", s("string"), "123456789012345678901234567890", "numeric",
                  Decimal("123456789012345678901234567890")),
    "float": Row("float", s("float"), 2.71828, "real", 2.71828),
    "double": Row("double", s("double"), 3.14159, "double precision", 3.14159),
    "decimal": Row("decimal", s("string"), "12345.67", "numeric", Decimal("12345.67")),
    "decimal, exponent form": Row("decimal", s("string"), "1E+3", "numeric", Decimal("1000")),
    "boolean": Row("boolean", s("boolean"), True, "boolean", True),
    "blob": Row("blob", s("bytes"), "yv66vg==", "bytea", b"\xca\xfe\xba\xbe"),
    "uuid": Row("uuid", s("string"), "453662fa-db4b-4938-9033-d8523c0a371c", "uuid",
                uuid.UUID("453662fa-db4b-4938-9033-d8523c0a371c")),
    "timeuuid": Row("timeuuid", s("string"), U1, "uuid", uuid.UUID(U1)),
    "inet": Row("inet", s("string"), "127.0.0.1", "inet", ipaddress.ip_address("127.0.0.1")),
    "date": Row("date", s("int32", K_DATE), 19884, "date", date(2024, 6, 10)),
    "time": Row("time", s("int64"), 45296789000999, "time", time(12, 34, 56, 789000)),
    "timestamp": Row("timestamp", s("int64", K_TS), 1718022896789, "timestamptz", INSTANT),
    "duration": Row("duration", s("string"), "1y2mo3d12h30m1ms2us3ns", "interval",
                    timedelta(days=365 + 60 + 3, hours=12, minutes=30, microseconds=1002)),
    "counter": Row("counter", s("int64"), 42, "bigint", 42),
    "list": Row("list<int>", s("array", items=s("int32")), [10, None, 30], "integer[]",
                [10, None, 30]),
    "set": Row("set<text>", s("array", items=s("string")), ["x", "y"], "text[]", ["x", "y"]),
    "set of uuid": Row("frozen<set<uuid>>", s("array", items=s("string")), [U1], "uuid[]",
                       [uuid.UUID(U1)]),
    "map": Row("map<text, int>", s("array", items=SCYLLA_ENTRY),
               [{"key": "a", "value": 1}, {"key": "b", "value": 2}], "jsonb", {"a": 1, "b": 2}),
    "tuple": Row("frozen<tuple<int, text>>", SCYLLA_TUPLE, {"field_0": 1, "field_1": "t"},
                 "jsonb", [1, "t"]),
    "udt": Row("frozen<address>", SCYLLA_UDT, {"street": "Main St", "zip": 12345}, "jsonb",
               {"street": "Main St", "zip": 12345}),
    "nested collection": Row("list<frozen<list<int>>>",
                             s("array", items=s("array", items=s("int32"))), [[1], [2, 3]],
                             "jsonb", [[1], [2, 3]]),
    "decimal inside jsonb": Row("map<text, decimal>", s("array", items=struct(
        "P.ks.t.MapEntry_TEXT_DECIMAL", key=s("string"), value=s("string"))),
        [{"key": "a", "value": "1.50"}], "jsonb", {"a": "1.50"}),
}

CASSANDRA = {
    "text": Row("text", s("string"), "text_val", "text", "text_val"),
    "ascii": Row("ascii", s("string"), "abc", "text", "abc"),
    "varchar": Row("varchar", s("string"), "v", "text", "v"),
    "tinyint": Row("tinyint", s("int8"), -128, "smallint", -128),
    "smallint": Row("smallint", s("int16"), 7, "smallint", 7),
    "int": Row("int", s("int32"), 1, "integer", 1),
    "bigint": Row("bigint", s("int64"), -9223372036854775808, "bigint", -9223372036854775808),
    "varint (long)": Row("varint", s("int64"), 999999999, "numeric", Decimal(999999999)),
    "varint (precise)": Row("varint", s("bytes", "org.apache.kafka.connect.data.Decimal",
                                        parameters={"scale": "0"}), "AQ==", "numeric",
                            Decimal(1)),
    "varint (string)": Row("varint", s("string"), "-12", "numeric", Decimal(-12)),
    "float": Row("float", s("float"), 1.5, "real", 1.5),
    "double": Row("double", s("double"), 3.14159, "double precision", 3.14159),
    "decimal (double)": Row("decimal", s("double"), 12345.67, "numeric", Decimal("12345.67")),
    "decimal (precise)": Row("decimal", s("struct", "io.debezium.data.VariableScaleDecimal"),
                             {"scale": 2, "value": "BNI="}, "numeric", Decimal("12.34")),
    "decimal (string)": Row("decimal", s("string"), "0.000001", "numeric", Decimal("0.000001")),
    "boolean": Row("boolean", s("boolean"), False, "boolean", False),
    "blob": Row("blob", s("bytes"), "yv66vg==", "bytea", b"\xca\xfe\xba\xbe"),
    "uuid": Row("uuid", s("string", UUID_NAME), U1, "uuid", uuid.UUID(U1)),
    "timeuuid": Row("timeuuid", s("string", UUID_NAME), U1, "uuid", uuid.UUID(U1)),
    "inet": Row("inet", s("string"), "/127.0.0.1", "inet", ipaddress.ip_address("127.0.0.1")),
    "inet with host name": Row("inet", s("string"), "localhost/::1", "inet",
                               ipaddress.ip_address("::1")),
    "date": Row("date", s("int32", D_DATE), 19884, "date", date(2024, 6, 10)),
    "time": Row("time", s("int64"), 45296789000000, "time", time(12, 34, 56, 789000)),
    "timestamp": Row("timestamp", s("int64", D_TS), 1718022896789, "timestamptz", INSTANT),
    "duration": Row("duration", s("int64", NANO_DURATION), 131400000000999, "interval",
                    timedelta(days=1, hours=12, minutes=30, microseconds=0)),
    "counter": Row("counter", s("int64"), 42, "bigint", 42),
    "list": Row("list<int>", s("array", items=s("int32")), [10, 20, 30], "integer[]",
                [10, 20, 30]),
    "set": Row("set<text>", s("array", items=s("string")), ["x", "y", "z"], "text[]",
               ["x", "y", "z"]),
    "map": Row("map<text, int>", s("map", keys=s("string"), values=s("int32")),
               {"a": 1, "b": 2}, "jsonb", {"a": 1, "b": 2}),
    "map with int keys": Row("frozen<map<int, timestamp>>",
                             s("map", keys=s("int32"), values=s("int64", D_TS)),
                             [[1, 1718022896789]], "jsonb",
                             {"1": "2024-06-10T12:34:56.789000+00:00"}),
    "tuple": Row("frozen<tuple<int, text>>", CASSANDRA_TUPLE, {"field1": 1, "field2": "t"},
                 "jsonb", [1, "t"]),
    "udt": Row("frozen<address>", CASSANDRA_UDT, {"street": "Main St", "zip": None}, "jsonb",
               {"street": "Main St", "zip": None}),
}


@pytest.mark.parametrize("row", SCYLLA.values(), ids=SCYLLA.keys())
def test_a_scylla_column_of_a_declared_cql_type_maps_as_docs_types_says(row: Row) -> None:
    ctype = column_type(row.schema, row.cql)
    assert (ctype.pg_type, ctype.convert(row.wire)) == (row.pg_type, row.value)


@pytest.mark.parametrize("row", CASSANDRA.values(), ids=CASSANDRA.keys())
def test_a_cassandra_column_of_a_declared_cql_type_maps_as_docs_types_says(row: Row) -> None:
    ctype = column_type(row.schema, row.cql)
    assert (ctype.pg_type, ctype.convert(row.wire)) == (row.pg_type, row.value)


# Without the declared type, the Connect schema alone decides (docs/types.md, last column).
UNDECLARED = [
    (SCYLLA["decimal"], "text", "12345.67"),
    (SCYLLA["varint"], "text", "123456789012345678901234567890"),
    (SCYLLA["uuid"], "text", "453662fa-db4b-4938-9033-d8523c0a371c"),
    (SCYLLA["inet"], "text", "127.0.0.1"),
    (SCYLLA["duration"], "text", "1y2mo3d12h30m1ms2us3ns"),
    (SCYLLA["time"], "bigint", 45296789000999),
    (SCYLLA["tinyint"], "smallint", 5),
    (SCYLLA["timestamp"], "timestamptz", INSTANT),
    (SCYLLA["map"], "jsonb", {"a": 1, "b": 2}),
    (SCYLLA["tuple"], "jsonb", [1, "t"]),
    (SCYLLA["udt"], "jsonb", {"street": "Main St", "zip": 12345}),
    (SCYLLA["list"], "integer[]", [10, None, 30]),
    (CASSANDRA["decimal (double)"], "double precision", 12345.67),
    (CASSANDRA["decimal (precise)"], "numeric", Decimal("12.34")),
    (CASSANDRA["varint (long)"], "bigint", 999999999),
    (CASSANDRA["varint (precise)"], "numeric", Decimal(1)),
    (CASSANDRA["inet"], "text", "/127.0.0.1"),
    (CASSANDRA["uuid"], "uuid", uuid.UUID(U1)),
    (CASSANDRA["duration"], "interval", timedelta(days=1, hours=12, minutes=30)),
    (CASSANDRA["date"], "date", date(2024, 6, 10)),
    (CASSANDRA["map"], "jsonb", {"a": 1, "b": 2}),
    (CASSANDRA["tuple"], "jsonb", [1, "t"]),
    (CASSANDRA["udt"], "jsonb", {"street": "Main St", "zip": None}),
]


@pytest.mark.parametrize(("row", "pg_type", "value"), UNDECLARED,
                         ids=[f"{r.cql}:{r.schema['type']}" for r, _, _ in UNDECLARED])
def test_without_a_declared_type_the_connect_schema_decides(row: Row, pg_type: str,
                                                            value: Any) -> None:
    ctype = column_type(row.schema)
    assert (ctype.pg_type, ctype.convert(row.wire)) == (pg_type, value)


@pytest.mark.parametrize(("cql", "schema"), [
    ("decimal", s("boolean")),
    ("timestamp", s("int64")),
    ("list<int>", s("int32")),
    ("map<text, int>", s("array", items=s("int32"))),
    ("frozen<tuple<int, text>>", struct("Int32Tuple", field1=s("int32"))),
    ("frozen<address>", s("string")),
    ("map<text>", s("map", keys=s("string"), values=s("int32"))),
    ("list<int", s("array", items=s("int32"))),
])
def test_a_declared_type_that_does_not_fit_the_connect_schema_is_a_schema_error(
        cql: str, schema: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        column_type(schema, cql)


@pytest.mark.parametrize(("cql", "schema", "wire"), [
    ("tinyint", s("int8"), 128),
    ("int", s("int32"), 1.5),
    ("varint", s("string"), "12.5"),
    ("varint", s("string"), "1_000"),
    ("decimal", s("string"), "NaN"),
    ("decimal", s("double"), float("inf")),
    ("uuid", s("string"), "not-a-uuid"),
    ("inet", s("string"), "/999.0.0.1"),
    ("time", s("int64"), 86_400_000_000_000),
    ("date", s("int32", K_DATE), 10**8),
    ("duration", s("string"), "1x"),
    ("boolean", s("boolean"), 1),
    ("list<int>", s("array", items=s("int32")), {"a": 1}),
])
def test_a_value_that_does_not_fit_its_type_raises(cql: str, schema: dict[str, Any],
                                                    wire: Any) -> None:
    with pytest.raises((ValueError, TypeError, OverflowError)):
        column_type(schema, cql).convert(wire)


def test_every_cql_scalar_type_the_issue_lists_has_a_handler() -> None:
    listed = ("ascii text varchar tinyint smallint int bigint varint float double decimal "
              "boolean blob uuid timeuuid inet date time timestamp duration counter").split()
    assert [name for name in listed if name not in HANDLERS] == []
    assert len({s.names[0] for s in SCALARS}) == len(SCALARS)


def test_declared_type_names_are_read_with_frozen_nesting_and_any_case() -> None:
    assert str(parse_cql_type("FROZEN<map<text, frozen<list<int>>>>")) == (
        "frozen<map<text, frozen<list<int>>>>")
    assert parse_cql_type('frozen<"MyType">').args[0].name == "MyType"


@pytest.mark.parametrize(("text", "expected"), [
    ("1d12h30m", timedelta(days=1, hours=12, minutes=30)),
    ("-2w", timedelta(days=-14)),
    ("1mo", timedelta(days=30)),
    ("5m6s7ms", timedelta(minutes=5, seconds=6, milliseconds=7)),
    ("1500ns", timedelta(microseconds=1)),
])
def test_cql_duration_text_becomes_an_interval_as_psycopg_reads_one(text: str,
                                                                    expected: timedelta) -> None:
    assert parse_cql_duration(text) == expected


@pytest.mark.parametrize(("marshal", "text", "expected"), [
    ("org.apache.cassandra.db.marshal.Int32Type", "5", 5),
    ("org.apache.cassandra.db.marshal.ReversedType(org.apache.cassandra.db.marshal.LongType)",
     "-7", -7),
    ("org.apache.cassandra.db.marshal.UTF8Type", "a'b", "a'b"),
    ("org.apache.cassandra.db.marshal.TimestampType", "2024-06-10T12:34:56.789Z", INSTANT),
    ("org.apache.cassandra.db.marshal.TimeType", "12:34:56.789000999", time(12, 34, 56, 789000)),
    ("org.apache.cassandra.db.marshal.SimpleDateType", "2024-06-10", date(2024, 6, 10)),
    ("org.apache.cassandra.db.marshal.TimeUUIDType", U1, uuid.UUID(U1)),
    ("org.apache.cassandra.db.marshal.DecimalType", "1.50", Decimal("1.50")),
    ("org.apache.cassandra.db.marshal.BytesType", "cafebabe", b"\xca\xfe\xba\xbe"),
    ("org.apache.cassandra.db.marshal.BooleanType", "true", True),
])
def test_a_range_bound_value_is_read_by_its_marshal_type(marshal: str, text: str,
                                                         expected: Any) -> None:
    assert marshal_scalar(marshal).parse(text) == expected


def test_a_marshal_type_without_a_scalar_handler_is_refused() -> None:
    with pytest.raises(ValueError):
        marshal_scalar("org.apache.cassandra.db.marshal.ListType(Int32Type)")


@pytest.mark.parametrize(("wire", "text"), [("1E+3", "1000"), ("1.50E+2", "150"),
                                            ("1.50E-3", "0.00150"), ("12345.67", "12345.67")])
def test_a_decimal_has_the_digits_psycopg_reads_back_so_state_keys_match(wire: str,
                                                                         text: str) -> None:
    assert str(column_type(s("string"), "decimal").convert(wire)) == text
