"""Avro messages captured from the live chain (`tests/fixtures/debezium_avro/`, see its README:
Debezium with Apicurio's Avro converter through the schema registry) decode on the replicator's
Avro path, with their writer schemas as the registry served them, to what the source held after
each change, and to what the JSON capture of the same change decodes to.

Needs no services: the schemas come from the fixtures."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from operators.avro import AvroFrames, SchemaFetcher, UnknownSchema
from operators.decode import Decoder
from operators.events import ChangeEvent, RawMessage
from tests.e2e.test_captured_messages import LIVE, assert_decoded_as_captured
from tests.e2e.test_captured_messages import fixture as json_fixture

AVRO = Path(__file__).resolve().parents[1] / "fixtures" / "debezium_avro"
FILES = sorted(p.name for p in AVRO.glob("*.json"))


def avro_capture(path: Path) -> tuple[dict[str, Any], bytes | None, bytes | None,
                                       SchemaFetcher]:
    """A captured Avro message file: its document, its key and value bytes as the converter
    framed them, and a registry that knows the message's schemas only."""
    doc = json.loads(path.read_text())
    key, value = (None if doc[p] is None else base64.b64decode(doc[p]) for p in ("key", "value"))
    schemas = {int(ident): text for ident, text in doc["schemas"].items()}

    def fetch(ident: int | str) -> str:
        if ident not in schemas:
            raise UnknownSchema(f"no schema {ident} in {path.name}")
        return schemas[ident]

    return doc, key, value, fetch


def fixture(name: str) -> tuple[dict[str, Any], RawMessage, SchemaFetcher]:
    """The expectation, the message as the converter wrote it, and its registry."""
    doc, key, value, fetch = avro_capture(AVRO / name)
    return doc["expected"], RawMessage(doc["topic"], doc["partition"], doc["offset"], key,
                                       value), fetch


def row(event: ChangeEvent) -> tuple[Any, ...]:
    """What the target gets from an event, with types (1 is not 1.0, Decimal('1.0') not '1.00')."""
    values = None if event.values is None else [
        (name, type(v).__name__, repr(v)) for name, v in event.values.items()]
    return (event.table, event.key_columns, [(type(k).__name__, repr(k)) for k in event.key],
            event.op, values)


def test_the_avro_captures_are_framed_cover_every_operation_and_have_a_source_note() -> None:
    ops = set()
    for name in FILES:
        _, msg, fetch = fixture(name)
        framed = [raw for raw in (msg.key, msg.value) if raw is not None]
        assert framed and all(raw[0] == 0 for raw in framed), name  # magic 0, 4-byte id
        ops.add(AvroFrames(fetch, "value").split(msg.value)[2]["op"] if msg.value
                else "tombstone")
    assert ops == {"r", "c", "u", "d", "t", "tombstone"}
    readme = (AVRO / "README.md").read_text()
    assert [n for n in FILES if f"`{n}`" not in readme] == []


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("name", FILES)
def test_a_captured_avro_message_decodes_to_what_the_source_held(name: str, native: bool) -> None:
    expected, msg, fetch = fixture(name)
    event = Decoder("public", {}, None, fetch, native=native).decode(msg)
    assert_decoded_as_captured(event, msg.value is None, expected)


@pytest.mark.parametrize("name", [n for n in FILES if (LIVE / n).exists()])
def test_an_avro_capture_decodes_as_the_json_capture_of_the_same_change(name: str) -> None:
    """Both captures ran the same changes with the same random values (tests/e2e/capture.py)."""
    avro_expected, avro, fetch = fixture(name)
    json_expected, plain = json_fixture(name)
    assert avro_expected["values"] == json_expected["values"]
    from_avro = Decoder("public", {}, None, fetch, native=False).decode(avro)
    from_json = Decoder("public", {}, None, native=False).decode(plain)
    if type(from_json) is ChangeEvent:
        assert row(from_avro) == row(from_json)
    else:
        assert type(from_avro) is type(from_json)
