"""Avro schemas as Debezium's AvroConverter writes them → the Connect form the decoder uses."""

from __future__ import annotations

import io
import json
import math
import struct
import uuid

import fastavro
import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.avro import AvroFrames, AvroProblem, UnknownSchema, connect_schema

FLOAT32_MAX = struct.unpack("<f", b"\xff\xff\x7f\x7f")[0]

ROW = {
    "type": "record", "name": "Value", "namespace": "srv.inventory.customers",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "small", "type": {"type": "int", "connect.type": "int16"}},
        {"name": "price", "type": ["null", {
            "type": "bytes", "scale": 2, "precision": 12, "connect.version": 1,
            "connect.parameters": {"scale": "2", "connect.decimal.precision": "12"},
            "connect.name": "org.apache.kafka.connect.data.Decimal", "logicalType": "decimal"}],
         "default": None},
        {"name": "tags", "type": ["null", {"type": "array", "items": "string"}], "default": None},
    ],
    "connect.name": "srv.inventory.customers.Value",
}
ENVELOPE = {
    "type": "record", "name": "Envelope", "namespace": "srv.inventory.customers",
    "fields": [
        {"name": "before", "type": ["null", ROW], "default": None},
        {"name": "after", "type": ["null", "Value"], "default": None},  # by name, as Debezium
        {"name": "op", "type": "string"},
    ],
}


def test_envelope_becomes_connect_structs_with_names_parameters_and_references() -> None:
    connect = connect_schema(ENVELOPE)
    before, after, op = connect["fields"]
    assert before["field"] == "before" and before["optional"] is True
    assert [f["field"] for f in after["fields"]] == ["id", "small", "price", "tags"]
    fields = {f["field"]: f for f in after["fields"]}
    assert fields["id"] == {"field": "id", "type": "int64", "optional": False}
    assert fields["small"]["type"] == "int16"
    assert fields["price"]["name"] == "org.apache.kafka.connect.data.Decimal"
    assert fields["price"]["parameters"] == {"scale": "2", "connect.decimal.precision": "12"}
    assert fields["price"]["optional"] is True
    assert fields["tags"]["type"] == "array" and fields["tags"]["items"]["type"] == "string"
    assert op == {"field": "op", "type": "string", "optional": False}


def test_a_union_of_two_types_is_refused() -> None:
    with pytest.raises(ValueError, match="is not \\[null, type\\]"):
        connect_schema({"type": "record", "name": "R",
                        "fields": [{"name": "x", "type": ["null", "int", "string"]}]})


def test_a_name_used_before_its_definition_is_refused() -> None:
    with pytest.raises(ValueError, match="not defined"):
        connect_schema({"type": "record", "name": "R", "fields": [{"name": "x", "type": "Later"}]})


def test_framed_message_without_a_registry_is_a_specific_problem() -> None:
    frames = AvroFrames(None, "value")
    with pytest.raises(AvroProblem) as problem:
        frames.split(b"\x00\x00\x00\x00\x07\x02")
    assert problem.value.error_type == "no_schema_registry"
    message = str(problem.value)
    assert "schema 7" in message and "REPLICATE_SCHEMA_REGISTRY_URL" in message


def test_a_header_cut_short_is_malformed() -> None:
    with pytest.raises(AvroProblem) as problem:
        AvroFrames(None, "key").split(b"\x00\x00\x01")
    assert problem.value.error_type == "malformed_avro"


def test_a_schema_the_registry_does_not_have_is_unknown_schema_id() -> None:
    def fetch(ident: int | str) -> str:
        raise UnknownSchema(f"no schema {ident}")

    with pytest.raises(AvroProblem) as problem:
        AvroFrames(fetch, "value").split(b"\x00\x00\x00\x00\x2a\x02")
    assert problem.value.error_type == "unknown_schema_id" and "42" in str(problem.value)


def test_a_schema_that_is_not_avro_is_bad_schema() -> None:
    with pytest.raises(AvroProblem) as problem:
        AvroFrames(lambda ident: '{"type": "no-such-type"}', "value").split(b"\x00\x00\x00\x00\x01")
    assert problem.value.error_type == "bad_schema"


def test_a_guid_framed_message_asks_for_its_guid_and_is_read() -> None:
    asked: list[int | str] = []

    def fetch(ident: int | str) -> str:
        asked.append(ident)
        return '{"type": "record", "name": "K", "fields": [{"name": "id", "type": "long"}]}'

    guid = uuid.UUID("12345678-1234-5678-1234-567812345678")
    schema, header, payload = AvroFrames(fetch, "key").split(b"\x01" + guid.bytes + b"\x54")
    assert asked == [str(guid)] and header == b"\x01" + guid.bytes
    assert payload == {"id": 42} and schema["fields"][0]["type"] == "int64"


@settings(max_examples=300)
@given(st.floats(width=32))
def test_an_avro_float_reads_as_the_shortest_decimal_of_the_same_float32(value: float) -> None:
    """As JsonConverter prints a Connect FLOAT32 (`real`: 215921.84, not 215921.84375), in every
    position a schema may hold a float: a field, a union branch, an array's items, a map's
    values."""
    schema = {"type": "record", "name": "R", "fields": [
        {"name": "plain", "type": "float"},
        {"name": "optional", "type": ["null", {"type": "float"}]},
        {"name": "items", "type": {"type": "array", "items": "float"}},
        {"name": "by_name", "type": {"type": "map", "values": "float"}}]}
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(schema),
                               {"plain": value, "optional": value, "items": [value],
                                "by_name": {"x": value}})
    _, _, payload = AvroFrames(lambda ident: json.dumps(schema), "value").split(
        b"\x00\x00\x00\x00\x01" + body.getvalue())
    read = [payload["plain"], payload["optional"], payload["items"][0], payload["by_name"]["x"]]
    if math.isnan(value):
        assert all(math.isnan(v) for v in read)
        return
    assert read == [float(str(numpy.float32(value)))] * 4  # numpy: the shortest unique digits


def test_the_largest_float32_reads_as_itself_where_a_rounded_decimal_would_overflow() -> None:
    schema = '{"type": "record", "name": "R", "fields": [{"name": "x", "type": "float"}]}'
    _, _, payload = AvroFrames(lambda ident: schema, "value").split(
        b"\x00\x00\x00\x00\x01" + struct.pack("<f", FLOAT32_MAX))
    assert payload["x"] == 3.4028235e38
