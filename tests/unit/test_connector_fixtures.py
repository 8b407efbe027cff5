"""The ScyllaDB and Cassandra connector fixtures are internally consistent.

The fixtures stand in for messages no local server can produce, so their shapes must be the
connectors' own (see each directory's README); these checks catch a hand edit that breaks them.
"""

import json
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SCYLLA = sorted((FIXTURES / "scylla").glob("*.json"))
CASSANDRA = sorted((FIXTURES / "cassandra").glob("*.json"))
CASSANDRA_DOCS = sorted((FIXTURES / "cassandra" / "docs_examples").glob("*.json"))

JSON_CONVERTER_TYPES = {
    "boolean", "int8", "int16", "int32", "int64", "float", "double",
    "bytes", "string", "array", "map", "struct",
}
SCYLLA_OPS = {"c", "u", "d"}
CASSANDRA_OPS = {"i", "u", "d", "r"}
# ScyllaSourceInfoStructMaker: Debezium 2.7 commonSchemaBuilder + keyspace_name, table_name.
SCYLLA_SOURCE = [
    "version", "connector", "name", "ts_ms", "snapshot", "db", "sequence", "ts_us", "ts_ns",
    "keyspace_name", "table_name",
]
# CassandraSourceInfoStructMaker: Debezium 3.6 commonSchemaBuilder + cluster, file, pos, keyspace,
# table.
CASSANDRA_SOURCE = [
    "version", "connector", "name", "ts_ms", "snapshot", "db", "sequence", "ts_us", "ts_ns",
    "cluster", "file", "pos", "keyspace", "table",
]
CELL_FIELDS = ["value", "deletion_ts", "set"]


def load(path: Path) -> dict[str, Any]:
    """One fixture: a Kafka message as `{"topic", "key", "value"}`."""
    return json.loads(path.read_text())


def schema_problems(schema: dict[str, Any], where: str) -> list[str]:
    """Every place a schema uses a type name JsonConverter does not write, or lacks a part."""
    problems = []
    kind = schema.get("type")
    if kind not in JSON_CONVERTER_TYPES:
        problems.append(f"{where}: type {kind!r}")
    if not isinstance(schema.get("optional"), bool):
        problems.append(f"{where}: optional flag missing")
    if kind == "struct":
        names = [field.get("field") for field in schema.get("fields", [])]
        if None in names or len(set(names)) != len(names):
            problems.append(f"{where}: unnamed or repeated fields {names}")
        for field in schema.get("fields", []):
            problems += schema_problems(field, f"{where}.{field.get('field')}")
    elif kind == "array":
        problems += schema_problems(schema.get("items", {}), f"{where}[]")
    elif kind == "map":
        problems += schema_problems(schema.get("keys", {}), f"{where}{{key}}")
        problems += schema_problems(schema.get("values", {}), f"{where}{{value}}")
    return problems


def payload_problems(schema: dict[str, Any], value: Any, where: str) -> list[str]:
    """Every payload value its schema does not describe (missing field, wrong JSON kind)."""
    if value is None:
        return [] if schema["optional"] or "default" in schema else [f"{where}: null, not optional"]
    kind = schema["type"]
    if kind == "struct":
        if not isinstance(value, dict):
            return [f"{where}: not an object"]
        fields = {field["field"]: field for field in schema["fields"]}
        problems = [f"{where}.{name}: no schema field" for name in value if name not in fields]
        for name, field in fields.items():
            if name not in value and not field["optional"]:
                problems.append(f"{where}.{name}: required field absent")
            problems += payload_problems(field, value.get(name), f"{where}.{name}")
        return problems
    if kind == "array":
        if not isinstance(value, list):
            return [f"{where}: not an array"]
        items = schema["items"]
        return [p for i, v in enumerate(value) for p in payload_problems(items, v, f"{where}[{i}]")]
    if kind == "map":
        if not isinstance(value, dict):
            return [f"{where}: not an object"]
        values = schema["values"]
        return [p for k, v in value.items() for p in payload_problems(values, v, f"{where}[{k}]")]
    expected = {
        "boolean": bool, "string": str, "bytes": str, "float": (int, float), "double": (int, float),
    }.get(kind, int)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        return [f"{where}: {value!r} is not {kind}"]
    return []


def field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    """The named field of a struct schema."""
    return next(f for f in schema["fields"] if f["field"] == name)


def test_both_fixture_directories_hold_fixtures() -> None:
    assert len(SCYLLA) >= 14 and len(CASSANDRA) >= 8 and len(CASSANDRA_DOCS) == 4


@pytest.mark.parametrize("path", SCYLLA + CASSANDRA, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_schema_uses_json_converter_type_names(path: Path) -> None:
    message = load(path)
    problems = schema_problems(message["key"]["schema"], "key")
    problems += schema_problems(message["value"]["schema"], "value")
    assert problems == []


@pytest.mark.parametrize("path", SCYLLA + CASSANDRA, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_payload_field_has_a_schema_field(path: Path) -> None:
    message = load(path)
    problems = payload_problems(message["key"]["schema"], message["key"]["payload"], "key")
    problems += payload_problems(message["value"]["schema"], message["value"]["payload"], "value")
    assert problems == []


@pytest.mark.parametrize("path", SCYLLA, ids=lambda p: p.name)
def test_scylla_messages_use_the_connectors_ops_source_and_images(path: Path) -> None:
    value = load(path)["value"]
    payload = value["payload"]
    assert payload["op"] in SCYLLA_OPS
    assert [f["field"] for f in field(value["schema"], "source")["fields"]] == SCYLLA_SOURCE
    assert payload["source"]["ts_us"] // 1000 == payload["source"]["ts_ms"]
    assert payload["source"]["table_name"] in load(path)["topic"]
    if payload["op"] == "d":
        assert payload["after"] is None
    elif path.name.startswith("advanced_") or payload["op"] == "c":
        assert payload["after"] is not None


LEGACY = [p for p in SCYLLA if p.name.startswith("legacy_")]


@pytest.mark.parametrize("path", LEGACY, ids=lambda p: p.name)
def test_scylla_legacy_cells_wrap_every_non_key_column(path: Path) -> None:
    message = load(path)
    key_columns = {f["field"] for f in message["key"]["schema"]["fields"]}
    payload = message["value"]["payload"]
    image = payload["after"] or payload["before"]
    image_schema = field(message["value"]["schema"], "after" if payload["after"] else "before")
    for column in image_schema["fields"]:
        name = column["field"]
        if name in key_columns:
            assert column["type"] != "struct" and image[name] == message["key"]["payload"][name]
        else:
            assert column["name"].endswith(f".{name}.Cell")
            assert image[name] is None or set(image[name]) == {"value"}


@pytest.mark.parametrize("path", CASSANDRA, ids=lambda p: p.name)
def test_cassandra_messages_use_the_connectors_ops_source_and_cells(path: Path) -> None:
    message = load(path)
    value = message["value"]
    payload = value["payload"]
    assert payload["op"] in CASSANDRA_OPS
    assert "before" not in payload
    assert [f["field"] for f in field(value["schema"], "source")["fields"]] == CASSANDRA_SOURCE
    assert payload["source"]["ts_us"] // 1000 == payload["source"]["ts_ms"]
    after = payload["after"]
    ranges = {"_range_start", "_range_end"}
    for name, cell in after.items():
        if name in ranges:
            assert (cell is not None) == (payload["op"] == "r")
        elif cell is not None:
            assert list(cell) == CELL_FIELDS and cell["set"] is True
    for name, key_value in message["key"]["payload"].items():
        assert (after[name] or {}).get("value") == key_value


def test_cassandra_docs_examples_are_the_documented_customers_payloads() -> None:
    docs = {p.name: json.loads(p.read_text()) for p in CASSANDRA_DOCS}
    assert docs["customers_key_payload.json"] == {"id": 1001, "registration_date": 1562202942545}
    for name in ("insert", "update", "delete"):
        payload = docs[f"customers_{name}_payload.json"]
        columns = {"id", "registration_date", "first_name", "last_name", "email"}
        assert set(payload["after"]) == columns
        assert payload["source"]["connector"] == "cassandra"
