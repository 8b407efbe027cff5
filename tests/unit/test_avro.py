"""Avro schemas as Debezium's AvroConverter writes them → the Connect form the decoder uses."""

from __future__ import annotations

import uuid

import pytest

from operators.avro import AvroFrames, AvroProblem, UnknownSchema, connect_schema

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
