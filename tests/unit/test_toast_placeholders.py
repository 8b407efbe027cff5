"""Debezium's Postgres connector writes an unchanged TOASTed column (REPLICA IDENTITY DEFAULT) as a
placeholder whose form depends on the column's type (tests/fixtures/debezium/README.md,
"Unchanged TOAST placeholders"). Every form leaves the column out of the event's values, so the
stored value stays: on the Python decoder (JSON with and without schemas, Avro) and on the native
fast path alike; a real value of the same column is still written."""

from __future__ import annotations

import base64
import io
import struct
from typing import Any, NamedTuple

import fastavro
import orjson
import pytest

from operators.decode import Decoder
from operators.events import ChangeEvent, RawMessage, TableName
from tests.unit import debezium_samples as ds

TOPIC = "srv.inventory.docs"
TABLE = TableName("public", "docs")
TOAST = "__debezium_unavailable_value"
# Java's UUID.nameUUIDFromBytes(TOAST bytes): the element of a uuid[] column's placeholder
UUID_TOAST = "b68a35a7-17ad-35b3-af2a-ae46edb4545a"
HSTORE_JSON_TOAST = '{"__debezium_unavailable_value":"__debezium_unavailable_value"}'
INT_ARRAY_TOAST = [95, 95, 100, 101, 98, 101, 122, 105, 117, 109, 95, 117, 110, 97, 118, 97, 105,
                   108, 97, 98, 108, 101, 95, 118, 97, 108, 117, 101]  # TOAST's bytes
UUID = "6f9619ff-8b86-d011-b42d-00c04fc964ff"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def optional(type_: str, **extra: Any) -> dict[str, Any]:
    return {"type": type_, "optional": True, **extra}


JSON = optional("string", name="io.debezium.data.Json", version=1)


class Case(NamedTuple):
    """A column type: its Connect schema as JsonConverter writes it, a real value and the
    placeholder, both as JSON; their Avro counterparts."""

    schema: dict[str, Any]
    value: Any
    toast: Any
    avro_type: Any
    avro_value: Any
    avro_toast: Any


CASES = {
    "text": Case(optional("string"), "kept", TOAST, "string", "kept", TOAST),
    "jsonb": Case(JSON, '{"a": 1}', TOAST,
                  {"type": "string", "connect.name": "io.debezium.data.Json"}, '{"a": 1}', TOAST),
    "hstore, hstore.handling.mode=json": Case(
        JSON, '{"a":"1"}', HSTORE_JSON_TOAST,
        {"type": "string", "connect.name": "io.debezium.data.Json"}, '{"a":"1"}',
        HSTORE_JSON_TOAST),
    "hstore, hstore.handling.mode=map": Case(
        optional("map", keys={"type": "string", "optional": False},
                 values={"type": "string", "optional": True}),
        {"a": "1"}, {TOAST: TOAST},
        {"type": "map", "values": ["null", "string"]}, {"a": "1"}, {TOAST: TOAST}),
    "bytea": Case(optional("bytes"), b64(b"\x00\xff"), b64(TOAST.encode()),
                  "bytes", b"\x00\xff", TOAST.encode()),
    "bytea[]": Case(optional("array", items=optional("bytes")), [b64(b"\x00\xff")],
                    [b64(TOAST.encode())],
                    {"type": "array", "items": ["null", "bytes"]}, [b"\x00\xff"],
                    [TOAST.encode()]),
    "uuid[]": Case(optional("array", items=optional("string", name="io.debezium.data.Uuid",
                                                      version=1)),
                   [UUID], [UUID_TOAST],
                   {"type": "array", "items": ["null", {
                       "type": "string", "connect.name": "io.debezium.data.Uuid"}]},
                   [UUID], [UUID_TOAST]),
    "text[]": Case(optional("array", items=optional("string")), ["a"], [TOAST],
                   {"type": "array", "items": ["null", "string"]}, ["a"], [TOAST]),
    "jsonb[]": Case(optional("array", items=JSON), ['{"a": 1}'], [TOAST],
                    {"type": "array", "items": ["null", {
                        "type": "string", "connect.name": "io.debezium.data.Json"}]},
                    ['{"a": 1}'], [TOAST]),
    "integer[]": Case(optional("array", items=optional("int32")), [7], INT_ARRAY_TOAST,
                      {"type": "array", "items": ["null", "int"]}, [7], INT_ARRAY_TOAST),
    "date[]": Case(optional("array", items=optional("int32", name="io.debezium.time.Date",
                                                      version=1)),
                   [19884], INT_ARRAY_TOAST,
                   {"type": "array", "items": ["null", {
                       "type": "int", "connect.name": "io.debezium.time.Date"}]},
                   [19884], INT_ARRAY_TOAST),
    "bigint[]": Case(optional("array", items=optional("int64")), [7], INT_ARRAY_TOAST,
                     {"type": "array", "items": ["null", "long"]}, [7], INT_ARRAY_TOAST),
}
# The Postgres type of the target column, for the decoder's catalog (messages without schemas).
PG_TYPES = {"text": "text", "jsonb": "jsonb", "hstore, hstore.handling.mode=json": "jsonb",
            "hstore, hstore.handling.mode=map": "jsonb", "bytea": "bytea", "bytea[]": "bytea[]",
            "uuid[]": "uuid[]", "text[]": "text[]", "jsonb[]": "jsonb[]",
            "integer[]": "integer[]", "date[]": "date[]", "bigint[]": "bigint[]"}
cases = pytest.mark.parametrize("name", list(CASES))


def json_message(case: Case, doc: Any, offset: int, schemas: bool = True,
                 topic: str = TOPIC) -> RawMessage:
    """An update of `docs (id bigint primary key, doc <type>, note text)` setting `note`."""
    row = {"id": 1, "doc": doc, "note": f"note {offset}"}
    payload = ds.envelope("u", ds.pg_source(lsn=100 + offset, table="docs"), None, row)
    if not schemas:
        return ds.raw(topic, payload, {"id": 1}, offset)
    fields = [ds.field("id", "int64", optional=False), {**case.schema, "field": "doc"},
              ds.field("note", "string")]
    schema = ds.envelope_schema(fields, ds.PG_SOURCE_SCHEMA, topic)
    key = ds.key_doc({"id": 1}, [ds.field("id", "int64", optional=False)], topic, True)
    return ds.raw(topic, {"schema": schema, "payload": payload}, key, offset)


def change(result: object) -> ChangeEvent:
    assert isinstance(result, ChangeEvent), result
    return result


def python_values(msg: RawMessage) -> dict[str, Any] | None:
    return change(Decoder("public", {}, None, native=False).decode(msg)).values


@cases
def test_the_python_decoder_leaves_a_placeholder_column_out_and_writes_a_real_value(
        name: str) -> None:
    case = CASES[name]
    assert python_values(json_message(case, case.toast, 2)) == {"id": 1, "note": "note 2"}
    assert "doc" in python_values(json_message(case, case.value, 1))  # type: ignore[operator]


@cases
def test_the_native_fast_path_leaves_a_placeholder_column_out_as_python_does(name: str) -> None:
    case = CASES[name]
    decoder = Decoder("public", {}, None, native=True)
    real = json_message(case, case.value, 1)
    expected_real = python_values(real)
    assert change(decoder.decode(real)).values == expected_real  # teaches the plan
    placeholder = json_message(case, case.toast, 2)
    event = decoder._fast.decode(placeholder)  # type: ignore[union-attr]
    assert event is not None, "the plan declined the placeholder"
    assert event.values == {"id": 1, "note": "note 2"}
    assert change(decoder._fast.decode(real)).values == expected_real  # type: ignore[union-attr]
    others, runs = decoder._fast.decode_runs([placeholder], 1, decoder.decode)  # type: ignore
    assert [change(e).values for _, e in others] == [{"id": 1, "note": "note 2"}] and runs == [[]]


class Catalog:
    """The target table as `schemas.catalog.TableCatalog` gives it."""

    def __init__(self, pg_type: str) -> None:
        self.table = {"id": "bigint", "doc": pg_type, "note": "text"}

    def columns(self, table: TableName) -> dict[str, str] | None:
        return self.table if table == TABLE else None

    def primary_key(self, table: TableName) -> tuple[str, ...]:
        return ("id",)

    def invalidate(self, table: TableName) -> None:
        pass


@cases
def test_a_placeholder_in_a_message_without_schema_leaves_the_column_out(name: str) -> None:
    decoder = Decoder("public", {}, Catalog(PG_TYPES[name]), native=False)  # type: ignore[arg-type]
    event = change(decoder.decode(json_message(CASES[name], CASES[name].toast, 2, schemas=False)))
    assert event.values == {"id": 1, "note": "note 2"}


SOURCE = {"type": "record", "name": "Source", "namespace": "io.debezium.connector.postgresql",
          "fields": [{"name": "connector", "type": "string"}, {"name": "lsn", "type": "long"}]}
AVRO_KEY = {"type": "record", "name": "Key", "namespace": TOPIC,
            "fields": [{"name": "id", "type": "long"}]}


def avro_envelope(case: Case) -> dict[str, Any]:
    row = {"type": "record", "name": "Value", "namespace": TOPIC, "fields": [
        {"name": "id", "type": "long"},
        {"name": "doc", "type": ["null", case.avro_type], "default": None},
        {"name": "note", "type": ["null", "string"], "default": None}]}
    return {"type": "record", "name": "Envelope", "namespace": TOPIC, "fields": [
        {"name": "before", "type": ["null", row], "default": None},
        {"name": "after", "type": ["null", "Value"], "default": None},
        {"name": "source", "type": SOURCE}, {"name": "op", "type": "string"}]}


def framed(schema_id: int, schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    out.write(b"\x00" + struct.pack(">I", schema_id))
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return out.getvalue()


def avro_values(case: Case, doc: Any) -> dict[str, Any] | None:
    schemas = {1: avro_envelope(case), 2: AVRO_KEY}
    decoder = Decoder("public", {}, None, native=False,
                      fetch_schema=lambda ident: orjson.dumps(schemas[ident]).decode())
    value = {"before": None, "after": {"id": 1, "doc": doc, "note": "new"},
             "source": {"connector": "postgresql", "lsn": 100}, "op": "u"}
    msg = RawMessage(TOPIC, 0, 0, framed(2, AVRO_KEY, {"id": 1}), framed(1, schemas[1], value))
    return change(decoder.decode(msg)).values


@cases
def test_an_avro_placeholder_column_is_left_out_and_a_real_value_written(name: str) -> None:
    case = CASES[name]
    assert avro_values(case, case.avro_toast) == {"id": 1, "note": "new"}
    assert avro_values(case, case.avro_value) == {
        "id": 1, "doc": python_values(json_message(case, case.value, 1))["doc"],  # type: ignore
        "note": "new"}
