"""The native shard step (`cdc_native.NativeBatch`, `operators/native_shard.py`) decides a batch
of runs as `operators.lww.decide_batch` decides the Python decoder's events of the same messages,
and stages the rows psycopg would write for that decision."""

from __future__ import annotations

import pickle
from typing import Any

import orjson
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg._copy_base import TextFormatter
from psycopg.adapt import Transformer

from operators.decode import Decoder
from operators.decode_step import DecodeStep
from operators.events import ChangeEvent, Op, ProgressMarker, RawMessage, TableName
from operators.keys import key_json
from operators.lww import KeyState, decide_batch
from operators.native_decode import NativeBatch, Run, RunEvents, run_events
from operators.native_shard import _REASONS, expand
from operators.pg_writer import StagedKind, stage_columns
from operators.settings import Settings
from operators.state_store import encode_state
from tests.unit import debezium_samples as ds

TOPICS = ("srv.inventory.things", "srv.inventory.others")
FIELDS = [ds.field("id", "int64", optional=False), ds.field("name", "string"),
          ds.field("qty", "int32"), ds.field("flag", "boolean"), ds.field("raw", "bytes")]
pytestmark = pytest.mark.integration
KEY_SCHEMA = {"type": "struct", "optional": False, "name": "Key",
              "fields": [ds.field("id", "int64", optional=False)]}


def envelope(topic: str, fields: list[dict[str, Any]]) -> dict[str, Any]:
    return ds.envelope_schema(fields, ds.PG_SOURCE_SCHEMA, topic)


SCHEMAS = {topic: envelope(topic, FIELDS) for topic in TOPICS}


def message(topic: str, offset: int, op: str, key: int, lsn: int,
            schema: dict[str, Any] | None = None, **more: Any) -> RawMessage:
    row = {"id": key, "name": "n", "qty": lsn, "flag": lsn % 2 == 0, "raw": "AAE=", **more}
    image = {"before": row, "after": None} if op == "d" else {"before": None, "after": row}
    payload = {**image, "source": ds.pg_source(lsn=lsn), "op": op, "ts_ms": 1,
               "transaction": None}
    return RawMessage(topic, 0, offset,
                      orjson.dumps({"schema": KEY_SCHEMA, "payload": {"id": key}}),
                      orjson.dumps({"schema": schema or SCHEMAS[topic], "payload": payload}))


def taught() -> Decoder:
    decoder = Decoder("public", {}, None, native=True)
    for topic in TOPICS:
        assert type(decoder.decode(message(topic, 0, "c", 0, 1))) is ChangeEvent
    return decoder


def version(lsn: int) -> bytes:
    return b"\x01" + lsn.to_bytes(8, "big")


@pytest.fixture(scope="module")
def conn(pg_dsn: str):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


def stage_row(conn: psycopg.Connection, values: tuple[Any, ...]) -> bytes:
    """What the writer's `copy.write_row` sends."""
    formatter = TextFormatter(Transformer.from_context(conn))
    head = formatter.write_row(values)
    return bytes(head) + bytes(formatter.end())


def expected_rows(conn: psycopg.Connection, events: list[ChangeEvent],
                  states: dict[bytes, KeyState | None], floors: dict[str, bytes],
                  soft: bool) -> dict[tuple[str, int], set[bytes]]:
    """The stage rows of `decide_batch`'s writes, formatted by psycopg, per (table, kind)."""
    rows: dict[tuple[str, int], set[bytes]] = {}
    for write in decide_batch(events, states, floors).writes.values():
        event = write.event
        tail = (key_json(event.key).decode(), write.version)
        if write.op is Op.DELETE and (not soft or write.values is None):
            kind, row = StagedKind.DELETE, (*event.key, *tail)
        else:
            kind = StagedKind.UPSERT if write.op is Op.UPSERT else StagedKind.DELETE_WITH_IMAGE
            columns = stage_columns(event.key_columns, tuple(write.values))
            row = (*(write.values[c] for c in columns), *tail)
        rows.setdefault((str(event.table), kind), set()).add(stage_row(conn, row))
    return rows


changes = st.lists(st.tuples(st.sampled_from(TOPICS), st.sampled_from("cud"), st.integers(0, 3),
                             st.integers(1, 8)), min_size=1, max_size=40)
stored = st.dictionaries(st.tuples(st.sampled_from(TOPICS), st.integers(0, 3)),
                         st.tuples(st.integers(1, 8), st.booleans()), max_size=6)
table_floors = st.dictionaries(st.sampled_from(TOPICS), st.integers(1, 8), max_size=2)


@settings(max_examples=300, deadline=None)
@given(changes, stored, table_floors, st.booleans(), st.integers(1, 3))
def test_runs_decide_and_stage_as_python_does(
    conn: psycopg.Connection, batch: list[tuple[str, str, int, int]],
    known: dict[tuple[str, int], tuple[int, bool]], floor_lsns: dict[str, int], soft: bool,
    shards: int,
) -> None:
    messages = [message(topic, n, op, key, lsn) for n, (topic, op, key, lsn) in enumerate(batch)]
    python = Decoder("public", {}, None, native=False)
    events = [python.decode(m) for m in messages]
    table_of = {topic: TableName("public", topic.rsplit(".", 1)[1]) for topic in TOPICS}
    floors = {str(table_of[t]): version(lsn) for t, lsn in floor_lsns.items()}
    states = {ev.row_id: None for ev in events}
    for (topic, key), (lsn, deleted) in known.items():
        row_id = ChangeEvent(table_of[topic], ("id",), (key,), Op.UPSERT, b"", None, None,
                             topic, 0, 0).row_id
        states[row_id] = KeyState(version(lsn), deleted)
    reference = decide_batch(events, states, floors)

    others, runs = taught().decode_runs(messages, shards)
    assert others == [], "every message of these tables is a plain record"
    totals = [0, 0, 0]
    for shard_runs in runs:
        if not shard_runs:
            continue
        batch_ = NativeBatch(shard_runs)
        keys = batch_.keys()
        decided = batch_.decide(
            [None if states.get(k) is None else encode_state(states[k]) for k in keys],
            [floors.get(str(run.schema.table)) for run in shard_runs], soft)
        assert decided is not None
        applied, duplicates, new_states, undo, staged, stale = decided
        shard_events = [e for run in shard_runs for _, e in run_events(run)]
        ids = {e.row_id for e in shard_events}
        ref = decide_batch([e for e in events if e.row_id in ids], states, floors)
        assert (applied, duplicates) == (ref.applied, ref.duplicates)
        assert dict(new_states) == {k: encode_state(s) for k, s in ref.new_states.items()}
        assert dict(undo) == {k: None if states[k] is None else encode_state(states[k])
                              for k in ref.new_states}
        assert sorted((shard_runs[i].topic, p, o, k, v, a, _REASONS[r])
                      for i, p, o, k, v, a, r in stale) == sorted(
            (s.topic, s.partition, s.offset, s.row_id, s.version, s.applied_version, s.reason)
            for s in ref.stale)
        got = {(str(shard_runs[i].schema.table), kind): set(rows.splitlines(keepends=True))
               for i, kind, rows in staged}
        assert got == expected_rows(conn, [e for e in events if e.row_id in ids], states, floors,
                                   soft)
        totals = [totals[0] + applied, totals[1] + duplicates, totals[2] + len(stale)]
    assert totals == [reference.applied, reference.duplicates, len(reference.stale)]


def test_a_key_applied_under_two_schema_versions_is_left_to_python() -> None:
    """The images of two schema versions would have to be merged: the batch goes to Python."""
    topic = TOPICS[0]
    wider = envelope(topic, [*FIELDS, ds.field("extra", "string")])
    decoder = taught()
    assert type(decoder.decode(message(topic, 0, "c", 9, 1, wider, extra="e"))) is ChangeEvent
    _, first = decoder.decode_runs([message(topic, 1, "u", 1, 2, wider, extra="e")], 1)
    _, second = decoder.decode_runs([message(topic, 2, "u", 1, 3)], 1)
    runs = first[0] + second[0]
    assert len(runs) == 2
    batch = NativeBatch(runs)
    assert batch.decide([None] * len(batch.keys()), [None, None], False) is None
    _, one_plan = decoder.decode_runs([message(topic, 3, "u", 1, 4)], 1)
    assert NativeBatch(one_plan[0]).decide([None], [None], False) is not None


def test_a_run_sent_to_another_process_arrives_as_its_events() -> None:
    messages = [message(TOPICS[0], n, "u", n, n + 1) for n in range(5)]
    _, runs = taught().decode_runs(messages, 1)
    arrived = pickle.loads(pickle.dumps(runs[0][0]))
    assert type(arrived) is RunEvents
    python = Decoder("public", {}, None, native=False)
    assert [(e.row_id, e.values, e.offset) for e in arrived] == [
        (e.row_id, e.values, e.offset) for e in map(python.decode, messages)]


def test_a_shard_with_a_python_event_gets_the_runs_events_in_their_places() -> None:
    """A Python change event (here: the topic's first message, and an image with an unchanged
    TOAST value) among a shard's runs: the shard gets every event in order, no run."""
    topic = TOPICS[0]
    step = DecodeStep(Settings(topics=topic, shards=1))
    toast = "__debezium_unavailable_value"
    batch = [message(topic, 0, "c", 5, 1), message(topic, 1, "u", 1, 2),
             message(topic, 2, "u", 1, 3, name=toast), message(topic, 3, "u", 1, 4)]
    (name, items), = step([*batch, ProgressMarker(topic, 0, 4)])
    assert [type(i) for i in items] == [ChangeEvent] * 4 + [ProgressMarker]
    assert [i.offset for i in items[:4]] == [0, 1, 2, 3]
    assert "name" not in items[2].values, "the unchanged column is left out"
    (_, later), = step([message(topic, 4, "u", 2, 5), message(topic, 5, "d", 2, 6)])
    assert [type(i) for i in later] == [Run] and len(later[0]) == 2


def test_a_run_keeps_what_is_at_or_past_the_committed_offsets() -> None:
    topic = TOPICS[0]
    messages = [message(topic, n, "u", n, n + 1) for n in range(6)]
    _, runs = taught().decode_runs(messages, 1)
    (run,) = runs[0]  # a run holds one partition's messages
    assert run.since({}) is run and run.since({(topic, 0): 0, (topic, 1): 9}) is run
    kept = run.since({(topic, 0): 3, ("other", 0): 9})
    assert sorted(e.offset for _, e in run_events(kept)) == [3, 4, 5]
    assert run.since({(topic, 0): 9}) is None


@pytest.mark.parametrize("newer_first", [True, False])
def test_a_shard_gets_one_batchs_events_of_two_schema_versions_in_offset_order(
        newer_first: bool) -> None:
    """Key 1 updated under one schema version, then under another, in one batch: each plan
    makes a run, and the shard must not decide the later change before the earlier one."""
    topic = TOPICS[0]
    wider = envelope(topic, [*FIELDS, ds.field("note", "string")])
    step = DecodeStep(Settings(topics=topic, shards=1))
    step([message(topic, 0, "c", 5, 1), message(topic, 1, "c", 6, 2, wider, note="x")])
    schemas = [SCHEMAS[topic], wider] if newer_first else [wider, SCHEMAS[topic]]
    batch = [message(topic, 10 + n, "u", 1, 10 + n, schema, note="y")
             if schema is wider else message(topic, 10 + n, "u", 1, 10 + n, schema)
             for n, schema in enumerate(schemas * 2)]
    (_, items), = step([*batch, ProgressMarker(topic, 0, 14)])
    events = expand([item for item in items if type(item) is not ProgressMarker])
    assert [e.offset for e in events] == [10, 11, 12, 13]
    python = Decoder("public", {}, None, native=False)
    assert [(e.row_id, e.version, e.values) for e in events] == [
        (e.row_id, e.version, e.values) for e in map(python.decode, batch)]
