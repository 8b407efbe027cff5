from __future__ import annotations

import base64
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from schemas.catalog import coerce_for_column
from schemas.debezium_types import PG_INFINITY, PG_NEG_INFINITY, field_type


def ft(type_: str, name: str | None = None, **extra: Any) -> tuple[str, Any]:
    f = field_type({"type": type_, "name": name, "optional": True, "field": "c", **extra})
    return f.pg_type, f.convert


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# --- plain types ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "pg_type", "json_value", "expected"),
    [
        ("boolean", "boolean", True, True),
        ("int8", "smallint", -128, -128),
        ("int16", "smallint", 32767, 32767),
        ("int32", "integer", -(2**31), -(2**31)),
        ("int64", "bigint", 2**63 - 1, 2**63 - 1),
        ("float", "real", 1.5, 1.5),
        ("double", "double precision", 3, 3.0),
        ("float32", "real", 1.5, 1.5),  # Connect's Schema.Type names, still accepted
        ("float64", "double precision", 3, 3.0),
        ("string", "text", "héllo", "héllo"),
        ("bytes", "bytea", "AAH/", b"\x00\x01\xff"),
        ("map", "jsonb", {"a": 1}, {"a": 1}),
    ],
)
def test_plain_types(wire: str, pg_type: str, json_value: Any, expected: Any) -> None:
    got_type, convert = ft(wire)
    assert got_type == pg_type
    result = convert(json_value)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("wire", "bad"),
    [
        ("boolean", 1),
        ("int16", 32768),
        ("int32", "5"),
        ("int32", True),
        ("int64", 2**63),
        ("double", "1.5"),
        ("float", True),
        ("string", 5),
        ("bytes", "not base64!"),
    ],
)
def test_plain_types_reject_wrong_values(wire: str, bad: Any) -> None:
    _, convert = ft(wire)
    with pytest.raises(ValueError):
        convert(bad)


def test_arrays_map_element_type_and_keep_nulls() -> None:
    pg_type, convert = ft("array", items={"type": "int32", "optional": True})
    assert pg_type == "integer[]"
    assert convert([1, None, 3]) == [1, None, 3]
    pg_type, convert = ft(
        "array", items={"type": "int32", "optional": True, "name": "io.debezium.time.Date"}
    )
    assert pg_type == "date[]"
    assert convert([19884]) == [date(2024, 6, 10)]
    with pytest.raises(ValueError, match="not an array"):
        convert("x")


def test_unknown_wire_type_and_array_without_items_fail() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        ft("int128")
    with pytest.raises(ValueError, match="items"):
        ft("array")


def test_unknown_semantic_name_falls_back_to_wire_type() -> None:
    pg_type, convert = ft("string", "io.debezium.data.Ltree")
    assert (pg_type, convert("a.b.c")) == ("text", "a.b.c")


# --- FORMATS.md vectors -----------------------------------------------------------------------


def test_formats_md_vectors() -> None:
    _, dec = ft(
        "bytes",
        "org.apache.kafka.connect.data.Decimal",
        parameters={"scale": "2", "connect.decimal.precision": "10"},
    )
    assert dec("BNI=") == Decimal("12.34")
    assert str(dec("BNI=")) == "12.34"
    assert str(dec("nA==")) == "-1.00"
    assert ft("int32", "io.debezium.time.Date")[1](19884) == date(2024, 6, 10)
    assert ft("int64", "io.debezium.time.MicroTimestamp")[1](1529507596945104) == datetime(
        2018, 6, 20, 15, 13, 16, 945104
    )


# --- semantic types ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "name", "pg_type", "json_value", "expected"),
    [
        ("int32", "io.debezium.time.Date", "date", -1, date(1969, 12, 31)),
        ("int32", "org.apache.kafka.connect.data.Date", "date", 19884, date(2024, 6, 10)),
        ("int32", "io.debezium.time.Time", "time", 45_296_789, time(12, 34, 56, 789000)),
        ("int32", "org.apache.kafka.connect.data.Time", "time", 1_000, time(0, 0, 1)),
        ("int64", "io.debezium.time.MicroTime", "time", 45_296_789_012, time(12, 34, 56, 789012)),
        (
            "int64",
            "io.debezium.time.NanoTime",
            "time",
            45_296_789_012_345,
            time(12, 34, 56, 789012),
        ),
        (
            "int64",
            "io.debezium.time.Timestamp",
            "timestamp",
            1529507596945,
            datetime(2018, 6, 20, 15, 13, 16, 945000),
        ),
        (
            "int64",
            "org.apache.kafka.connect.data.Timestamp",
            "timestamp",
            -1,
            datetime(1969, 12, 31, 23, 59, 59, 999000),
        ),
        (
            "int64",
            "io.debezium.time.NanoTimestamp",
            "timestamp",
            1529507596945104789,
            datetime(2018, 6, 20, 15, 13, 16, 945104),
        ),
        (
            "string",
            "io.debezium.time.ZonedTimestamp",
            "timestamptz",
            "2018-06-20T15:13:16.945104+02:00",
            datetime(2018, 6, 20, 13, 13, 16, 945104, tzinfo=UTC),
        ),
        (
            "string",
            "io.debezium.time.ZonedTimestamp",
            "timestamptz",
            "2024-06-10T08:30:00.1234567Z",
            datetime(2024, 6, 10, 8, 30, 0, 123456, tzinfo=UTC),
        ),
        (
            "string",
            "io.debezium.time.ZonedTime",
            "timetz",
            "13:13:16.945104Z",
            time(13, 13, 16, 945104, tzinfo=UTC),
        ),
        ("int32", "io.debezium.time.Year", "integer", 2024, 2024),
        (
            "int64",
            "io.debezium.time.MicroDuration",
            "interval",
            90_061_000_001,
            timedelta(days=1, hours=1, minutes=1, seconds=1, microseconds=1),
        ),
        (
            "string",
            "io.debezium.time.Interval",
            "interval",
            "P1Y2M3DT4H5M6.78S",
            timedelta(days=365 + 60 + 3, hours=4, minutes=5, seconds=6, microseconds=780000),
        ),
        (
            "string",
            "io.debezium.time.Interval",
            "interval",
            "P0Y0M-2DT0H0M-1.5S",
            timedelta(days=-2, seconds=-1.5),
        ),
        (
            "struct",
            "io.debezium.data.VariableScaleDecimal",
            "numeric",
            {"scale": 3, "value": "BNI="},
            Decimal("1.234"),
        ),
        (
            "string",
            "io.debezium.data.Uuid",
            "uuid",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ),
        (
            "string",
            "io.debezium.data.Json",
            "jsonb",
            '{"a": [1, 2.5, null]}',
            {"a": [1, 2.5, None]},
        ),
        ("string", "io.debezium.data.Xml", "xml", "<a>1</a>", "<a>1</a>"),
        ("string", "io.debezium.data.Enum", "text", "red", "red"),
        ("string", "io.debezium.data.EnumSet", "text[]", "a,b", ["a", "b"]),
        ("string", "io.debezium.data.EnumSet", "text[]", "", []),
        (
            "struct",
            "io.debezium.data.geometry.Geometry",
            "bytea",
            {"wkb": "AQEAAAAAAAAAAADwPwAAAAAAAABA", "srid": 4326},
            bytes.fromhex("0101000000000000000000f03f0000000000000040"),
        ),
        (
            "struct",
            "io.debezium.data.geometry.Point",
            "bytea",
            {"x": 1.0, "y": 2.0, "wkb": "AQEAAAAAAAAAAADwPwAAAAAAAABA", "srid": None},
            bytes.fromhex("0101000000000000000000f03f0000000000000040"),
        ),
    ],
)
def test_semantic_types(wire: str, name: str, pg_type: str, json_value: Any, expected: Any) -> None:
    got_type, convert = ft(wire, name)
    assert got_type == pg_type
    result = convert(json_value)
    assert result == expected
    assert type(result) is type(expected)
    if isinstance(expected, datetime | time):
        assert result.tzinfo == expected.tzinfo


def test_decimal_type_uses_precision_and_scale() -> None:
    name = "org.apache.kafka.connect.data.Decimal"
    params = {"scale": "4", "connect.decimal.precision": "19"}
    assert ft("bytes", name, parameters=params)[0] == "numeric(19,4)"
    assert ft("bytes", name, parameters={"scale": "2"})[0] == "numeric"
    _, convert = ft("bytes", name, parameters=params)
    assert convert("AYag") == Decimal("10.0000")
    big = 10**30 + 1  # more digits than the default decimal context keeps
    raw = big.to_bytes(13, "big", signed=True)
    assert convert(b64(raw)) == Decimal("100000000000000000000000000.0001")
    assert convert(12.5) == Decimal("12.5")  # JsonConverter decimal.format=NUMERIC
    assert convert(7) == Decimal(7)
    with pytest.raises(ValueError):
        convert("@@@")


def test_bits_are_little_endian() -> None:
    pg_type, convert = ft("bytes", "io.debezium.data.Bits", parameters={"length": "10"})
    assert pg_type == "bit varying"
    # B'0100000101' = 261 = 0x0105 → little-endian bytes 05 01
    assert convert(b64(b"\x05\x01")) == "0100000101"
    _, no_length = ft("bytes", "io.debezium.data.Bits")
    assert no_length(b64(b"\x01")) == "00000001"
    _, three = ft("bytes", "io.debezium.data.Bits", parameters={"length": "3"})
    with pytest.raises(ValueError, match="more than 3 bits"):
        three(b64(b"\x08"))


@pytest.mark.parametrize(
    "name",
    [
        "io.debezium.time.Timestamp",
        "io.debezium.time.MicroTimestamp",
        "io.debezium.time.NanoTimestamp",
    ],
)
def test_postgres_infinity_timestamps_become_datetime_max_and_min(name: str) -> None:
    _, convert = ft("int64", name)
    assert convert(PG_INFINITY) == datetime.max
    assert convert(PG_NEG_INFINITY) == datetime.min
    assert PG_INFINITY == 9223372036825200000 and PG_NEG_INFINITY == -9223372036832400000


def test_zoned_infinity_becomes_aware_datetime_max_and_min() -> None:
    _, convert = ft("string", "io.debezium.time.ZonedTimestamp")
    assert convert("infinity") == datetime.max.replace(tzinfo=UTC)
    assert convert("-infinity") == datetime.min.replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("wire", "name", "bad"),
    [
        ("int64", "io.debezium.time.MicroTime", 86_400_000_000),
        ("int64", "io.debezium.time.MicroTime", -1),
        ("int64", "io.debezium.time.MicroTimestamp", 10**18),
        ("int32", "io.debezium.time.Date", 10**8),
        ("int32", "io.debezium.time.Date", 1.5),  # timedelta would truncate it to day 1
        ("int32", "io.debezium.time.Date", True),
        ("int32", "org.apache.kafka.connect.data.Date", 2.0),
        ("int64", "io.debezium.time.MicroTimestamp", 1.5),
        ("int64", "io.debezium.time.Timestamp", True),
        ("int64", "io.debezium.time.NanoTimestamp", 1e18),
        ("int32", "io.debezium.time.Time", 1.5),
        ("int64", "io.debezium.time.NanoTime", 1e9),
        ("string", "io.debezium.time.ZonedTimestamp", "yesterday"),
        ("string", "io.debezium.time.Interval", "P"),
        ("string", "io.debezium.time.Interval", "1 day"),
        ("string", "io.debezium.data.Uuid", "not-a-uuid"),
        ("string", "io.debezium.data.Json", "{bad json"),
        ("struct", "io.debezium.data.VariableScaleDecimal", {"value": "AQ=="}),
        ("struct", "io.debezium.data.geometry.Geometry", "AQ=="),
    ],
)
def test_semantic_types_reject_bad_values(wire: str, name: str, bad: Any) -> None:
    _, convert = ft(wire, name)
    with pytest.raises((ValueError, TypeError, OverflowError)):
        convert(bad)


def test_field_types_are_built_once_per_distinct_type() -> None:
    a = field_type({"type": "int64", "name": "io.debezium.time.MicroTimestamp", "field": "a"})
    b = field_type(
        {
            "type": "int64",
            "name": "io.debezium.time.MicroTimestamp",
            "field": "b",
            "optional": False,
        }
    )
    assert a is b
    params = {"scale": "2", "connect.decimal.precision": "10"}
    d1 = field_type(
        {"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "parameters": params}
    )
    d2 = field_type(
        {
            "type": "bytes",
            "name": "org.apache.kafka.connect.data.Decimal",
            "parameters": dict(params),
        }
    )
    d3 = field_type(
        {
            "type": "bytes",
            "name": "org.apache.kafka.connect.data.Decimal",
            "parameters": {"scale": "3"},
        }
    )
    assert d1 is d2
    assert d1 is not d3 and d3.convert("BNI=") == Decimal("1.234")


# --- schemaless coercion by column type (schemas/catalog.py) ----------------------------------


@pytest.mark.parametrize(
    ("pg_type", "json_value", "expected"),
    [
        ("smallint", 5, 5),
        ("integer", 7.0, 7),
        ("bigint", -(2**63), -(2**63)),
        ("numeric(10,2)", "BNI=", Decimal("12.34")),
        ("numeric(10,2)", 12.34, Decimal("12.34")),
        ("numeric", "123.456", Decimal("123.456")),
        ("numeric", {"scale": 2, "value": "nA=="}, Decimal("-1.00")),
        ("numeric", 3, Decimal(3)),
        ("real", 1, 1.0),
        ("double precision", 2.5, 2.5),
        ("text", "x", "x"),
        ("character varying(20)", 12, "12"),
        ("boolean", False, False),
        ("date", 19884, date(2024, 6, 10)),
        ("date", "2024-06-10", date(2024, 6, 10)),
        ("timestamp without time zone", 1529507596945, datetime(2018, 6, 20, 15, 13, 16, 945000)),
        (
            "timestamp without time zone",
            1529507596945104,
            datetime(2018, 6, 20, 15, 13, 16, 945104),
        ),
        (
            "timestamp(6) without time zone",
            1529507596945104789,
            datetime(2018, 6, 20, 15, 13, 16, 945104),
        ),
        (
            "timestamp without time zone",
            "2018-06-20T17:13:16+02:00",
            datetime(2018, 6, 20, 15, 13, 16),
        ),
        (
            "timestamp with time zone",
            1529507596945104,
            datetime(2018, 6, 20, 15, 13, 16, 945104, tzinfo=UTC),
        ),
        (
            "timestamp with time zone",
            "2018-06-20T15:13:16Z",
            datetime(2018, 6, 20, 15, 13, 16, tzinfo=UTC),
        ),
        ("time without time zone", 3_600_000_001, time(1, 0, 0, 1)),
        ("time without time zone", "01:02:03", time(1, 2, 3)),
        (
            "time with time zone",
            "01:02:03+02:00",
            time(1, 2, 3, tzinfo=timezone(timedelta(hours=2))),
        ),
        (
            "uuid",
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ),
        ("jsonb", '{"a": 1}', {"a": 1}),
        ("jsonb", {"a": 1}, {"a": 1}),
        ("json", [1, 2], [1, 2]),
        ("bytea", "AAH/", b"\x00\x01\xff"),
        ("interval", 1_500_000, timedelta(seconds=1.5)),
        ("interval", "PT1H", timedelta(hours=1)),
        ("bit varying(4)", "BQ==", "0101"),
        ("bit(3)", "BQ==", "101"),
        ("integer[]", [1, None, 2], [1, None, 2]),
        ("timestamp without time zone[]", [0], [datetime(1970, 1, 1)]),
        ("ltree", "a.b", "a.b"),
        ("money", 5, "5"),
    ],
)
def test_coerce_for_column(pg_type: str, json_value: Any, expected: Any) -> None:
    result = coerce_for_column(pg_type)(json_value)
    assert result == expected
    assert type(result) is type(expected)
    if isinstance(expected, datetime | time):
        assert result.tzinfo == expected.tzinfo


@pytest.mark.parametrize(
    ("pg_type", "bad"),
    [
        ("smallint", 40000),
        ("integer", 1.5),
        ("integer", "7"),
        ("boolean", "true"),
        ("numeric(10,2)", "12.34"),
        ("date", "June 10"),
        ("uuid", 5),
        ("jsonb", "{nope"),
        ("integer[]", 5),
    ],
)
def test_coerce_for_column_rejects(pg_type: str, bad: Any) -> None:
    with pytest.raises((ValueError, TypeError, ArithmeticError)):
        coerce_for_column(pg_type)(bad)


def test_coerce_converters_are_cached_per_type() -> None:
    assert coerce_for_column("numeric(12,3)") is coerce_for_column("numeric(12,3)")
