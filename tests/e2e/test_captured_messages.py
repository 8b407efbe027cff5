"""Messages captured from the live chain (`tests/fixtures/debezium_live/`, see its README) decode,
on the Python decoder and on the native path, to what the source held after each change.

Needs no services: runs in `make test`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from operators.decode import Decoder
from operators.events import ChangeEvent, Op, RawMessage, TableName, TruncateEvent
from operators.versions import PG
from tests.e2e import tagged
from tests.e2e.source_tables import TABLES
from tests.unit.test_native_decode import decoded_in_order, strict

LIVE = Path(__file__).resolve().parents[1] / "fixtures" / "debezium_live"
FILES = sorted(p.name for p in LIVE.glob("*.json"))


def fixture(name: str) -> tuple[dict[str, Any], RawMessage]:
    """The expectation and the message, bytes as the connector wrote them."""
    doc = json.loads((LIVE / name).read_text())
    key, value = (None if doc[p] is None else doc[p].encode() for p in ("key", "value"))
    return doc["expected"], RawMessage(doc["topic"], doc["partition"], doc["offset"], key, value)


def as_target_reads(table: str, values: dict[str, Any]) -> dict[str, Any]:
    """Decoded values in the form the end-to-end comparison reads them from the target."""
    readers = {c.name: c.target_value for t in TABLES if t.name == table for c in t.columns}
    return {n: v if v is None or readers.get(n) is None else readers[n](v)
            for n, v in values.items()}


def by_topic() -> dict[str, list[RawMessage]]:
    """The captured messages of each topic, in their Kafka order."""
    topics: dict[str, list[RawMessage]] = {}
    for name in FILES:
        msg = fixture(name)[1]
        topics.setdefault(msg.topic, []).append(msg)
    return {t: sorted(m, key=lambda msg: msg.offset) for t, m in topics.items()}


def lsn_of(version: bytes) -> int:
    """The `source.lsn` a Postgres version holds: its second part, or for a snapshot row (whose
    second part is 0) its first, the snapshot's LSN."""
    assert version[0] == PG and len(version) == 17, version
    after, lsn = int.from_bytes(version[1:9], "big"), int.from_bytes(version[9:], "big")
    return lsn or after


def test_the_captures_cover_every_operation_and_have_a_source_note() -> None:
    values = [fixture(n)[1].value for n in FILES]
    ops = {json.loads(v)["payload"]["op"] if v else "tombstone" for v in values}
    assert ops == {"r", "c", "u", "d", "t", "tombstone"}
    readme = (LIVE / "README.md").read_text()
    assert [n for n in FILES if f"`{n}`" not in readme] == []


def assert_decoded_as_captured(event: Any, tombstone: bool, expected: dict[str, Any]) -> None:
    """`event` is what the capture's source held (`expected`: table, LSN range, key, values)."""
    if tombstone:
        assert event is None  # a tombstone changes nothing
        return
    assert event.table == TableName("public", expected["table"])
    assert expected["lsn_before"] <= lsn_of(event.version) <= expected["lsn_after"]
    if type(event) is TruncateEvent:
        assert expected["values"] is None
        return
    assert type(event) is ChangeEvent, event
    assert (list(event.key_columns), list(event.key)) == (
        expected["key_columns"], tagged.load(expected["key"]))
    if expected["values"] is None:
        assert (event.op, event.values) == (Op.DELETE, None)
        return
    assert event.op == Op.UPSERT
    assert as_target_reads(expected["table"], event.values) == {
        n: tagged.load(v) for n, v in expected["values"].items()}


@pytest.mark.parametrize("name", FILES)
def test_a_captured_message_decodes_to_what_the_source_held(name: str) -> None:
    expected, msg = fixture(name)
    event = Decoder("public", {}, None, native=False).decode(msg)
    if type(event) is TruncateEvent:
        assert json.loads(msg.value)["payload"]["op"] == "t"
    assert_decoded_as_captured(event, msg.value is None, expected)


@pytest.mark.parametrize("name", FILES)
def test_a_captured_message_decodes_natively_as_python_does(name: str) -> None:
    _, msg = fixture(name)
    python = Decoder("public", {}, None, native=False).decode(msg)
    decoder = Decoder("public", {}, None, native=True)
    decoder.decode(msg)  # the Python decoder plans the topic
    assert strict(decoder.decode(msg)) == strict(python)


@pytest.mark.parametrize("topic", sorted(by_topic()))
def test_a_captured_topic_decodes_as_one_batch_as_message_by_message(topic: str) -> None:
    """The native batch path (runs per shard) over the captured messages of one topic, in their
    Kafka order, gives what the Python decoder gives for each."""
    messages = by_topic()[topic]
    python = Decoder("public", {}, None, native=False)
    expected = [strict(python.decode(m)) for m in messages]
    decoder = Decoder("public", {}, None, native=True)
    decoder.decode(next(m for m in messages if m.value is not None))  # plans the topic
    assert [strict(e) for e in decoded_in_order(decoder, messages)] == expected
    assert len(messages) >= 3


def test_an_interval_formatted_from_a_double_decodes_to_the_source_microseconds() -> None:
    """Debezium writes Postgres' `00:50:01.86237` as `P0Y0M0DT0H50M1.862369999S`."""
    expected, msg = fixture("alltypes_update_interval.json")
    assert "1.862369999S" in msg.value.decode()
    event = Decoder("public", {}, None, native=False).decode(msg)
    assert event.values["c_interval"] == tagged.load(expected["values"]["c_interval"])


def test_a_change_committed_after_the_snapshot_is_newer_than_the_snapshot_row() -> None:
    """The update that was open while the snapshot read row 1 (tests/e2e/test_snapshot_order.py)
    committed after it: its version must be above the snapshot row's, as must the next one's."""
    decoder = Decoder("public", {}, None, native=False)
    snapshot, in_flight, after = (decoder.decode(fixture(n)[1]) for n in (
        "in_flight_snapshot_row.json", "in_flight_update.json", "in_flight_next_update.json"))
    assert lsn_of(in_flight.version) < lsn_of(snapshot.version)  # what the connector writes
    assert snapshot.version < in_flight.version
    assert snapshot.version < after.version
