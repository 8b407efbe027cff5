"""The flow's decoder hands ScyllaDB and Cassandra messages to their dialect by
`source.connector`: every fixture decodes through `Decoder` exactly as through its connector's
own decoder, with the table named by the topic and the declared CQL types of its topic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from formats.cassandra import decode_cassandra
from formats.scylla import NoRowImage, decode_scylla
from operators.decode import Decoder
from operators.events import DlqRecord, RawMessage, TableName
from tests.formats.test_scylla import CQL_TYPES

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CASES = [(decode_scylla, p) for p in sorted((FIXTURES / "scylla").glob("*.json"))] + [
    (decode_cassandra, p) for p in sorted((FIXTURES / "cassandra").glob("*.json"))]


def _message(path: Path) -> RawMessage:
    doc = json.loads(path.read_text())
    key = None if doc["key"] is None else json.dumps(doc["key"]).encode()
    value = None if doc["value"] is None else json.dumps(doc["value"]).encode()
    return RawMessage(doc["topic"], 0, 5, key, value)


@pytest.mark.parametrize(("decode", "path"), CASES, ids=[f"{p.parent.name}/{p.stem}"
                                                         for _, p in CASES])
def test_the_flow_decoder_gives_each_fixture_to_its_connector(decode, path):
    msg = _message(path)
    declared = dict(CQL_TYPES) if "scylla" in path.parent.name else {}
    decoder = Decoder("tgt", {}, None, native=False, cql_types={msg.topic: declared})
    table = TableName("tgt", msg.topic.rpartition(".")[2])
    expected = decode(msg, table, declared)
    got = decoder.decode(msg)
    assert type(got) is type(expected)
    assert got == expected
    if expected is not None and not isinstance(expected, DlqRecord):
        assert got.schema == expected.schema and got.schema.cells


def test_a_cell_message_without_a_schema_goes_to_the_dlq_as_no_schema():
    msg = _message(FIXTURES / "scylla" / "legacy_insert.json")
    doc = json.loads(msg.value)
    schemaless = msg._replace(value=json.dumps(doc["payload"]).encode())
    got = Decoder("tgt", {}, None, native=False).decode(schemaless)
    assert isinstance(got, DlqRecord) and got.error_type == "no_schema"


def test_a_scylla_stream_without_row_images_stops_the_flow_instead_of_filling_the_dlq():
    """`cdc.include.before/after=none` (the connector's default) is a setting to change, not a
    bad message: the decoder raises, naming the settings."""
    msg = _message(FIXTURES / "scylla" / "advanced_full_insert.json")
    doc = json.loads(msg.value)
    doc["payload"]["before"] = doc["payload"]["after"] = None
    with pytest.raises(NoRowImage, match="cdc.include.after"):
        Decoder("tgt", {}, None, native=False).decode(msg._replace(value=json.dumps(doc).encode()))
