"""ScyllaDB and Cassandra messages in Avro decode as their Connect JSON does: each fixture of
`tests/fixtures/cell_avro/` is a JSON fixture converted by Kafka Connect's JsonConverter and
Apicurio's AvroConverter (its README), and gives through `Decoder`, with the writer schemas it
captured in place of the registry, exactly the `CellChange` (and table schema) of its JSON twin.

Needs no services: the schemas come from the fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from formats.cells import CellChange
from operators.avro import SchemaFetcher
from operators.decode import Decoder
from operators.events import RawMessage
from tests.formats.test_cell_dispatch import _message as json_message
from tests.formats.test_scylla import CQL_TYPES
from tests.unit.test_debezium_avro_fixtures import avro_capture

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
AVRO = FIXTURES / "cell_avro"
FILES = sorted(p.relative_to(AVRO).as_posix() for p in AVRO.glob("*/*.json"))


def avro_fixture(name: str) -> tuple[RawMessage, SchemaFetcher, Path]:
    """The message as the converter framed it, a registry that knows only its schemas, and its
    JSON twin."""
    doc, key, value, fetch = avro_capture(AVRO / name)
    return RawMessage(doc["topic"], 0, 5, key, value), fetch, FIXTURES / doc["json"]


def test_every_scylla_and_cassandra_json_fixture_has_an_avro_twin_named_in_the_readme():
    twins = {avro_fixture(name)[2].relative_to(FIXTURES).as_posix() for name in FILES}
    assert twins == {p.relative_to(FIXTURES).as_posix() for d in ("scylla", "cassandra")
                     for p in (FIXTURES / d).glob("*.json")}
    assert set(FILES) == twins
    readme = (AVRO / "README.md").read_text()
    assert [d for d in ("scylla", "cassandra") if f"`{d}/`" not in readme] == []


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("name", FILES)
def test_an_avro_cell_message_decodes_to_the_change_of_its_json_twin(name: str,
                                                                      native: bool) -> None:
    msg, fetch, twin = avro_fixture(name)
    assert msg.key[0] == 0 and msg.value[0] == 0  # Confluent framing, 4-byte id
    declared = dict(CQL_TYPES) if name.startswith("scylla/") else {}
    cql_types = {msg.topic: declared}
    got = Decoder("tgt", {}, None, fetch, native=native, cql_types=cql_types).decode(msg)
    expected = Decoder("tgt", {}, None, native=False, cql_types=cql_types).decode(
        json_message(twin))
    assert type(expected) is CellChange, expected
    assert got == expected
    assert got.schema == expected.schema and got.schema.cells
