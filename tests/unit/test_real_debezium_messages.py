"""Real Debezium messages (`tests/fixtures/debezium/`, see its README for their sources) decode to
the rows they document, on the Python decoder and on the native fast path; and every Connect
schema the tests and the benchmark workload write uses the type names JsonConverter writes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from benchmarks import workload
from benchmarks.workload_avro import avro_schema
from operators.avro import connect_schema
from operators.decode import Decoder
from operators.events import ChangeEvent, Op, RawMessage, TableName, TruncateEvent
from operators.versions import pg_version, sqlserver_version
from tests.unit import debezium_samples as ds
from tests.unit import test_native_decode as native_samples
from tests.unit.test_native_decode import decoded_in_order, strict

FIXTURES = Path(__file__).parent.parent / "fixtures"
DEBEZIUM = FIXTURES / "debezium"

# org.apache.kafka.connect.json.JsonSchema: BOOLEAN_TYPE_NAME ... STRUCT_TYPE_NAME
JSON_CONVERTER_TYPES = frozenset(
    ("boolean", "int8", "int16", "int32", "int64", "float", "double", "bytes", "string",
     "array", "map", "struct"))

TABLE = TableName("public", "customers")  # both docs' examples are of a `customers` table
PG_ROW = {"id": 1, "first_name": "Anne", "last_name": "Kretchmar", "email": "annek@noanswer.org"}
SS_ROW = {"id": 1005, "first_name": "john", "last_name": "doe", "email": "john.doe@example.org"}


def fixture(name: str) -> dict[str, Any]:
    return json.loads((DEBEZIUM / name).read_text())


def message(name: str, offset: int = 0) -> RawMessage:
    """The fixture as JsonConverter puts it on Kafka: compact JSON, keys in the written order."""
    doc = fixture(name)
    key = None if doc["key"] is None else orjson.dumps(doc["key"])
    return RawMessage(doc["topic"], 0, offset, key, orjson.dumps(doc["value"]))


# Postgres changes without `source.sequence` rank by the partition's snapshot point, which only
# the Python decoder keeps: the fast path declines them
RANKED_BY_PYTHON = {"postgresql_update.json", "postgresql_delete.json"}

# name → (op, key, values, version): the documented row content
EXPECTED: dict[str, tuple[Op, tuple[Any, ...], dict[str, Any] | None, bytes]] = {
    "postgresql_create.json": (Op.UPSERT, (1,), PG_ROW, pg_version(24023119, 24023128)),
    "postgresql_update.json": (Op.UPSERT, (1,), {**PG_ROW, "first_name": "Anne Marie"},
                               pg_version(24023128, 24023128)),  # no `sequence`: its own LSN
    "postgresql_delete.json": (Op.DELETE, (1,), None, pg_version(46523128, 46523128)),
    "postgresql_types_create.json": (Op.UPSERT, (1,), {
        **PG_ROW, "rank": 7, "ratio": 0.5, "score": 3.141592653589793, "lucky": [1, None, -3],
        "weights": [0.25, -1.5], "tags": ["vip", "eu"], "embedding": [1.0, 2.5, -3.0],
        "attrs": {"key": "val", "empty": None}}, pg_version(24023119, 24023128)),
    "postgresql_structured_date_create.json": (Op.UPSERT, (1,), {
        **PG_ROW, "birthday": {"year": 2024, "month": 6, "day": 10, "specialValue": None}},
        pg_version(24023119, 24023128)),
    "sqlserver_create.json": (Op.UPSERT, (1005,), SS_ROW,
                              sqlserver_version("00000027:00000758:0005",
                                                "00000027:00000758:0003", 1)),
    "sqlserver_update.json": (Op.UPSERT, (1005,), {**SS_ROW, "email": "noreply@example.org"},
                              sqlserver_version("00000027:00000ac0:0007",
                                                "00000027:00000ac0:0002", 2)),
    "sqlserver_delete.json": (Op.DELETE, (1005,), None,
                              sqlserver_version("00000027:00000db0:0007",
                                                "00000027:00000db0:0005", 1)),
    "sqlserver_types_create.json": (Op.UPSERT, (1005,), {
        **SS_ROW, "level": 255, "rank": -32768, "ratio": 1.5, "score": 2.718281828459045,
        "balance": 1234.5}, sqlserver_version("00000027:00000758:0005",
                                              "00000027:00000758:0003", 1)),
}
PG_TRUNCATE = "postgresql_truncate.json"


def test_every_fixture_has_an_expectation_and_a_source_note() -> None:
    names = {p.name for p in DEBEZIUM.glob("*.json")}
    assert names == {*EXPECTED, PG_TRUNCATE}
    readme = (DEBEZIUM / "README.md").read_text()
    assert [n for n in sorted(names) if f"`{n}`" not in readme] == []


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_documented_change_decodes_to_its_documented_row(name: str) -> None:
    op, key, values, version = EXPECTED[name]
    event = Decoder("public", {}, None, native=False).decode(message(name))
    assert type(event) is ChangeEvent, event
    assert (event.table, event.key_columns, event.key, event.op, event.version) == (
        TABLE, ("id",), key, op, version)
    assert event.values == values
    if values is not None:  # 1 and 1.0 are equal in Python: the types must be the row's too
        assert {k: type(v) for k, v in event.values.items()} == {
            k: type(v) for k, v in values.items()}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_documented_change_decodes_natively_as_python_does(name: str) -> None:
    msg = message(name)
    python = Decoder("public", {}, None, native=False).decode(msg)
    decoder = Decoder("public", {}, None, native=True)
    decoder.decode(msg)  # the Python decoder plans the topic
    assert (decoder._fast.decode(msg) is None) == (name in RANKED_BY_PYTHON)
    assert strict(decoder.decode(msg)) == strict(python)
    batch = [message(name, offset) for offset in range(3)]
    assert [strict(e) for e in decoded_in_order(decoder, batch)] == [
        strict(replace(python, offset=offset)) for offset in range(3)]


def test_a_documented_truncate_decodes_on_both_paths() -> None:
    msg = message(PG_TRUNCATE)
    expected = TruncateEvent(TABLE, pg_version(46523128, 46523128), msg.topic, 0, 0)
    assert Decoder("public", {}, None, native=False).decode(msg) == expected
    assert Decoder("public", {}, None, native=True).decode(msg) == expected


@pytest.mark.parametrize(("name", "column_types"), [
    ("postgresql_types_create.json", {"ratio": "real", "score": "double precision"}),
    ("sqlserver_types_create.json",
     {"ratio": "real", "score": "double precision", "balance": "double precision"}),
])
def test_double_and_float_columns_decode_on_both_paths(name: str,
                                                       column_types: dict[str, str]) -> None:
    """A real `double` / `float` column is a number column, not a bad schema."""
    msg = message(name)
    written = fixture(name)["value"]["payload"]["after"]
    decoder = Decoder("public", {}, None, native=True)
    for event in (decoder.decode(msg), decoder._fast.decode(msg)):  # Python, then native
        assert type(event) is ChangeEvent, event
        types = {c.name: c.pg_type for c in event.schema.columns}
        assert {c: types[c] for c in column_types} == column_types
        assert {c: event.values[c] for c in column_types} == {c: written[c] for c in column_types}


# --- every schema the tests and the workload write uses JsonConverter's type names ----------


def schema_types(schema: Any) -> Iterator[Any]:
    """The `type` of a Connect JSON schema and of every schema nested in it."""
    if not isinstance(schema, dict):
        return
    yield schema.get("type")
    for f in schema.get("fields") or ():
        yield from schema_types(f)
    for nested in ("items", "keys", "values"):
        yield from schema_types(schema.get(nested))


def envelope_types(raw: bytes | None) -> Iterator[Any]:
    doc = None if raw is None else orjson.loads(raw)
    if isinstance(doc, dict) and "schema" in doc:
        yield from schema_types(doc["schema"])


def fixture_schemas() -> Iterator[tuple[str, Any]]:
    for path in sorted(FIXTURES.rglob("*.json")):
        doc = json.loads(path.read_text())
        for part in ("key", "value"):
            if isinstance(doc.get(part), dict):
                yield f"{path.name} {part}", doc[part].get("schema")


def sample_messages() -> Iterator[tuple[str, RawMessage]]:
    yield "pg_message", ds.pg_message("c", after=ds.customer_row())
    yield "sqlserver_message", ds.sqlserver_message("c", after=ds.order_row())
    yield "truncate_message", ds.truncate_message()
    yield "test_native_decode", native_samples.pg_message()
    yield "test_native_decode sqlserver", native_samples.message(
        orjson.loads(native_samples.sqlserver_payload("c")), {"id": 1},
        native_samples.SQLSERVER_SCHEMA)


def workload_messages() -> Iterator[tuple[str, bytes, bytes | None]]:
    for connector in ("postgresql", "sqlserver"):
        spec = workload.WorkloadSpec(events=20, keys=10, columns=8, connector=connector,
                                     composite_key=connector == "sqlserver")
        for topic, _partition, _offset, key, value in workload.generate(spec).iter_messages():
            yield f"workload {connector} {topic}", key, value


def test_every_fixture_schema_uses_json_converter_type_names() -> None:
    found = [(where, t) for where, schema in fixture_schemas() for t in schema_types(schema)]
    assert {"double", "float", "int8", "int16", "array", "map"} <= {t for _, t in found}
    assert [(where, t) for where, t in found if t not in JSON_CONVERTER_TYPES] == []


def test_every_sample_message_uses_json_converter_type_names() -> None:
    found = [(where, t) for where, msg in sample_messages()
             for raw in (msg.key, msg.value) for t in envelope_types(raw)]
    assert len(found) > 50
    assert [(where, t) for where, t in found if t not in JSON_CONVERTER_TYPES] == []


def test_every_workload_message_uses_json_converter_type_names() -> None:
    found = [(where, t) for where, key, value in workload_messages()
             for raw in (key, value) for t in envelope_types(raw)]
    assert len(found) > 50
    assert [(where, t) for where, t in found if t not in JSON_CONVERTER_TYPES] == []


def test_avro_schemas_read_back_with_json_converter_type_names() -> None:
    """The benchmark's Avro writer takes JsonConverter's names, and the decoder's Avro → Connect
    naming gives them back, so a schema reads the same in JSON and in Avro."""
    value = fixture("sqlserver_types_create.json")["value"]["schema"]
    row = next(f for f in value["fields"] if f["field"] == "after")
    back = connect_schema(avro_schema(row))
    assert [(f["field"], f["type"]) for f in back["fields"]] == [
        (f["field"], f["type"]) for f in row["fields"]]
