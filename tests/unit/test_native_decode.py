"""The native fast path (`native/`, `operators/native_decode.py`) gives exactly what the Python
decoder gives for every message, or declines it, and it does accept the messages it is for."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators import native_decode
from operators.decode import Decoder
from operators.events import ChangeEvent, RawMessage
from operators.keys import shard_of
from operators.settings import ConfigError
from tests.unit import debezium_samples as ds

TOPIC = "srv.inventory.things"
TOAST = "__debezium_unavailable_value"

FIELDS = [
    ds.field("id", "int64", optional=False),
    ds.field("i8", "int8"),
    ds.field("i16", "int16"),
    ds.field("i32", "int32"),
    ds.field("flag", "boolean"),
    ds.field("f32", "float"),
    ds.field("f64", "double"),
    ds.field("name", "string"),
    ds.field("raw", "bytes"),
    ds.field("day", "int32", name="io.debezium.time.Date"),
    ds.field("ts_ms", "int64", name="io.debezium.time.Timestamp"),
    ds.field("ts_us", "int64", name="io.debezium.time.MicroTimestamp"),
    ds.field("ts_ns", "int64", name="io.debezium.time.NanoTimestamp"),
    ds.field("t_ms", "int32", name="io.debezium.time.Time"),
    ds.field("t_us", "int64", name="io.debezium.time.MicroTime"),
    ds.field("t_ns", "int64", name="io.debezium.time.NanoTime"),
    ds.decimal_field("amount", 2, 12),
    ds.decimal_field("big", 0),
    ds.decimal_field("tiny", 9),  # str() in scientific notation for small values
    ds.field("year", "int32", name="io.debezium.time.Year"),
    ds.field("color", "string", name="io.debezium.data.Enum"),
    # no native twin: the plan calls the Python converter
    ds.field("ref", "string", name="io.debezium.data.Uuid"),
    ds.field("at", "string", name="io.debezium.time.ZonedTimestamp"),
    ds.field("doc", "string", name="io.debezium.data.Json"),
    ds.field("tags", "array", items={"type": "string", "optional": True}),
]
KEY_SCHEMA = {"type": "struct", "optional": False, "name": "srv.inventory.things.Key",
              "fields": [ds.field("id", "int64", optional=False)]}
PG_SCHEMA = ds.envelope_schema(FIELDS, ds.PG_SOURCE_SCHEMA, "srv.inventory.things")
SQLSERVER_SCHEMA = ds.envelope_schema(FIELDS, ds.SQLSERVER_SOURCE_SCHEMA, "srv.inventory.things")

INT64 = 1 << 63
UINT64_MAX = (1 << 64) - 1  # orjson writes no larger integer
# Debezium's ±infinity timestamps, and values just past Python's datetime range
PG_INFINITY, PG_NEG_INFINITY = 9223372036825200000, -9223372036832400000
MAX_DAY, MIN_DAY = 2932896, -719162


def b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def valid_row() -> dict[str, Any]:
    return {
        "id": 1, "i8": -128, "i16": 32767, "i32": -(1 << 31), "flag": True, "f32": 1.5,
        "f64": -2.25e-300, "name": "Zoë \"quoted\"\\\n\t", "raw": b64(b"\x00\xff"),
        "day": 19884, "ts_ms": 1529507596945, "ts_us": -1, "ts_ns": 1529507596945104123,
        "t_ms": 86_399_999, "t_us": 0, "t_ns": 3_600_000_000_001, "amount": b64(b"\x04\xd2"),
        "big": b64(b"\xff" * 16), "tiny": b64(b"\x01"), "year": 2024, "color": "red",
        "ref": "6f9619ff-8b86-d011-b42d-00c04fc964ff", "at": "2024-06-10T08:30:00.1234567Z",
        "doc": '{"a": [1, 2]}', "tags": ["a", None],
    }


def message(payload: Any, key: Any, schema: Any = PG_SCHEMA, offset: int = 0) -> RawMessage:
    value = orjson.dumps({"schema": schema, "payload": payload})
    raw_key = None if key is None else orjson.dumps({"schema": KEY_SCHEMA, "payload": key})
    return RawMessage(TOPIC, 0, offset, raw_key, value)


def pg_message(op: str = "u", row: dict[str, Any] | None = None, lsn: Any = 100,
               key: Any = None, **source: Any) -> RawMessage:
    """`source`: fields of the source block to set (`sequence`, `snapshot`)."""
    row = valid_row() if row is None else row
    image = {"before": row} if op == "d" else {"after": row}
    payload = {"before": None, "after": None, **image, "source": ds.pg_source(lsn=lsn, **source),
               "op": op, "ts_ms": 1, "transaction": None}
    return message(payload, {"id": row.get("id", 1)} if key is None else key)


def taught() -> Decoder:
    """A native decoder that has planned the topic's JSON schemas (Postgres and SQL Server)."""
    decoder = Decoder("public", {}, None, native=True)
    for teacher in (pg_message(), message(orjson.loads(sqlserver_payload("c")), {"id": 1},
                                          SQLSERVER_SCHEMA)):
        assert type(decoder.decode(teacher)) is ChangeEvent
    return decoder


def sqlserver_payload(op: str, commit: Any = "00000027:00000758:0005",
                      change: Any = "00000027:00000758:0003", serial: Any = 1) -> bytes:
    return orjson.dumps({"before": None, "after": valid_row(),
                         "source": ds.sqlserver_source(commit, change, serial), "op": op,
                         "ts_ms": 1, "transaction": None})


def strict(result: object) -> Any:
    """A comparable form that tells 1 from 1.0 and True, and Decimal('1.0') from '1.00'."""
    if isinstance(result, ChangeEvent):
        values = None if result.values is None else [
            (name, type(v).__name__, repr(v)) for name, v in result.values.items()]
        return ("event", result.table, result.key_columns,
                [(type(k).__name__, repr(k)) for k in result.key], result.op, result.version,
                values, result.schema, result.topic, result.partition, result.offset,
                result.row_id)
    return (type(result).__name__, result)


def assert_same(msg: RawMessage) -> object:
    expected = Decoder("public", {}, None, native=False).decode(msg)
    got = taught().decode(msg)
    assert strict(got) == strict(expected)
    return got


def test_valid_messages_are_decoded_natively_and_equal_python() -> None:
    decoder = taught()
    for msg in (pg_message("c"), pg_message("u"), pg_message("r"), pg_message("d"),
                message(orjson.loads(sqlserver_payload("u")), {"id": 1}, SQLSERVER_SCHEMA),
                message(orjson.loads(sqlserver_payload("c", None, None, None)), {"id": 1},
                        SQLSERVER_SCHEMA)):
        assert decoder._fast.decode(msg) is not None, "the fast path declined a valid message"
        assert_same(msg)


def test_without_native_nothing_is_planned() -> None:
    decoder = Decoder("public", {}, None, native=False)
    decoder.decode(pg_message())
    assert decoder._fast is None


@pytest.mark.parametrize("column, value", [
    ("ts_ms", PG_INFINITY), ("ts_us", PG_NEG_INFINITY), ("ts_ns", PG_INFINITY),
    ("day", MAX_DAY), ("day", MIN_DAY), ("ts_us", MAX_DAY * 86_400_000_000),
    ("name", TOAST), ("raw", b64(TOAST.encode())), ("amount", b64(TOAST.encode())),
    ("tags", [TOAST]), ("i32", None), ("big", b64(b"")),
])
def test_edge_values_decode_natively_as_python_does(column: str, value: Any) -> None:
    msg = pg_message(row={**valid_row(), column: value})
    assert taught()._fast.decode(msg) is not None
    assert_same(msg)


@pytest.mark.parametrize("change", [
    {"i8": 128}, {"i32": 1.0}, {"id": True}, {"flag": 1}, {"f64": "1"}, {"name": 5},
    {"raw": "not base64!"}, {"day": MAX_DAY + 1}, {"ts_us": (MAX_DAY + 1) * 86_400_000_000},
    {"t_us": 86_400_000_000}, {"t_ms": -1}, {"amount": 12.5}, {"big": b64(b"\x01" * 17)},
    {"ref": "not-a-uuid"}, {"at": "yesterday"}, {"doc": "{"}, {"tags": "a"}, {"id": None},
])
def test_values_the_fast_path_does_not_take_are_left_to_python(change: dict) -> None:
    """Bad values (Python sends them to the DLQ), and decimals wider than 128 bits."""
    msg = pg_message(row={**valid_row(), **change})
    assert taught()._fast.decode(msg) is None
    assert_same(msg)


@pytest.mark.parametrize("msg", [
    pg_message("t"), pg_message("m"), pg_message("x"), pg_message(lsn=-1), pg_message(lsn="5"),
    pg_message(lsn=None), pg_message(key={"id": 1, "extra": 2}),
    pg_message(key={"other": 1}), pg_message(key={"id": None}),
    pg_message("c", row={"id": 1}),  # a partial image: absent columns are left out
    message({"op": "c", "after": None, "source": ds.pg_source()}, {"id": 1}),
    message({"op": "d", "before": 3, "source": ds.pg_source()}, {"id": 1}),
    message({"op": "u", "after": valid_row(), "source": None}, {"id": 1}),
    message({"op": "u", "after": valid_row(), "source": ds.pg_source(), "ddl": None}, {"id": 1}),
    message([1], {"id": 1}), message(None, {"id": 1}),
    RawMessage(TOPIC, 0, 0, None, pg_message().value),
    RawMessage(TOPIC, 0, 0, pg_message().key, pg_message().value[:-1]),
    *(RawMessage(TOPIC, 0, 0, pg_message().key,
                 pg_message().value.replace(b'"lsn":100', b'"lsn":' + lsn))
      for lsn in (b"1e2", b"100.0", b"18446744073709551616", b"-0")),
    *(RawMessage(TOPIC, 0, 0, pg_message().key, pg_message().value.replace(old, new))
      for old, new in ((b'"flag":true', b'"flag":true,"name":"first"'),  # a repeated column:
                       (b'"tags":', b'"name":"last","tags":'))),  # the last one counts
    message(orjson.loads(sqlserver_payload("u", commit="0000027:00000758:00050")), {"id": 1},
            SQLSERVER_SCHEMA),
    message(orjson.loads(sqlserver_payload("u", change="zz000027:00000758:0005")), {"id": 1},
            SQLSERVER_SCHEMA),
    message(orjson.loads(sqlserver_payload("u", serial=INT64)), {"id": 1}, SQLSERVER_SCHEMA),
])
def test_unusual_messages_decode_as_python_does(msg: RawMessage) -> None:
    assert_same(msg)


@pytest.mark.parametrize("source", [
    {"sequence": '["90","100"]'}, {"sequence": '["18446744073709551615","100"]'},
    {"sequence": '["90",null]'}, {"snapshot": "incremental"}, {"snapshot": True},
    {"snapshot": None}, {"snapshot": "other"},
])
def test_a_change_that_names_its_previous_commit_is_versioned_natively(source: dict) -> None:
    msg = pg_message(**source)
    assert taught()._fast.decode(msg) is not None
    assert assert_same(msg).version[:9] == b"\x01" + int(orjson.loads(
        msg.value)["payload"]["source"]["sequence"].split('"')[1]).to_bytes(8, "big")


@pytest.mark.parametrize("msg", [
    *(pg_message("r", snapshot=s) for s in ("true", "first", "first_in_data_collection",
                                            "last_in_data_collection", "last")),
    pg_message(sequence=None), pg_message(sequence='[null,"100"]'),
    *(pg_message(sequence=s) for s in ('["-1","100"]', '["+1","100"]', '["1.0","100"]',
                                       '["","100"]', '["18446744073709551616","100"]',
                                       '[90,"100"]', '["90"]', '["90","100",1]', '["90",100]',
                                       '[ "90","100"]', '["\\u0039","100"]', "90", "")),
    pg_message(sequence=["90", "100"]),
    RawMessage(TOPIC, 0, 0, pg_message().key,
               pg_message("r").value.replace(b'"snapshot":"false"', b'"snapshot":"\\u006cast"')),
])
def test_snapshot_rows_and_changes_without_a_previous_commit_are_left_to_python(
        msg: RawMessage) -> None:
    """Their version needs the partition's snapshot point (or a DLQ record), which Python keeps."""
    assert taught()._fast.decode(msg) is None
    assert_same(msg)


def test_a_new_schema_version_gets_its_own_plan_and_the_old_one_stays() -> None:
    decoder = taught()
    wider = ds.envelope_schema([*FIELDS, ds.field("note", "string")], ds.PG_SOURCE_SCHEMA,
                               "srv.inventory.things")
    new = message(orjson.loads(pg_message().value)["payload"], {"id": 1}, wider)
    assert decoder._fast.decode(new) is None  # not planned yet: Python decodes it and plans
    assert type(decoder.decode(new)) is ChangeEvent
    assert decoder._fast.decode(new) is not None
    assert decoder._fast.decode(pg_message()) is not None


def test_a_missing_native_module_is_a_configuration_error(monkeypatch) -> None:
    monkeypatch.setattr(native_decode, "FastPlan", None)
    with pytest.raises(ConfigError, match="REPLICATE_NATIVE_DECODE"):
        Decoder("public", {}, None, native=True)


# --- property: any message, native decodes it as Python does or declines -------------------

def _junk() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(), st.booleans(), st.integers(-INT64, UINT64_MAX),
        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
        st.just(TOAST), st.just(b64(TOAST.encode())), st.lists(st.integers(-9, 9), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(-9, 9), max_size=2),
    )


_VALID: dict[str, st.SearchStrategy[Any]] = {
    "i8": st.integers(-128, 127), "i16": st.integers(-(1 << 15), (1 << 15) - 1),
    "i32": st.integers(-(1 << 31), (1 << 31) - 1), "flag": st.booleans(),
    "f32": st.floats(allow_nan=False, allow_infinity=False, width=32),
    "f64": st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                    st.integers(-INT64, UINT64_MAX)),
    "name": st.text(), "raw": st.binary(max_size=20).map(b64),
    "day": st.integers(MIN_DAY - 2, MAX_DAY + 2),
    "ts_ms": st.integers(-62_135_596_800_001, 253_402_300_800_000),
    "ts_us": st.one_of(st.integers(-(1 << 63), (1 << 63) - 1),
                       st.sampled_from([PG_INFINITY, PG_NEG_INFINITY])),
    "ts_ns": st.integers(-(1 << 63), (1 << 63) - 1),
    "t_ms": st.integers(-2, 86_400_001), "t_us": st.integers(-2, 86_400_000_001),
    "t_ns": st.integers(-2, 86_400_000_000_001),
    "amount": st.binary(max_size=16).map(b64), "big": st.binary(max_size=16).map(b64),
    "tiny": st.binary(max_size=3).map(b64),
    "year": st.integers(-(1 << 32), 1 << 32), "color": st.text(max_size=5),
    "ref": st.uuids().map(str), "at": st.datetimes().map(lambda d: d.isoformat() + "Z"),
    "doc": st.just('{"k": 1}'), "tags": st.lists(st.one_of(st.none(), st.text(max_size=3))),
}


@st.composite
def rows(draw: st.DrawFn) -> dict[str, Any]:
    row: dict[str, Any] = {"id": draw(st.one_of(st.integers(-INT64, UINT64_MAX), _junk()))}
    for name, valid in _VALID.items():
        choice = draw(st.sampled_from(["valid", "valid", "valid", "junk", "absent"]))
        if choice == "valid":
            row[name] = draw(valid)
        elif choice == "junk":
            row[name] = draw(_junk())
    return row


@st.composite
def messages(draw: st.DrawFn) -> RawMessage:
    row = draw(rows())
    op = draw(st.sampled_from(["c", "u", "r", "d", "d", "t", "m", None]))
    if draw(st.booleans()):
        last = st.one_of(st.none(), st.integers(-1, UINT64_MAX + 1).map(str),
                         st.text(max_size=3), st.integers(0, 9))
        sequence = st.one_of(st.none(), st.text(max_size=8), st.builds(
            lambda *pair: orjson.dumps(pair).decode(), last, st.one_of(st.none(), last)))
        source, schema = ds.pg_source(lsn=draw(st.one_of(
            st.integers(-1, UINT64_MAX), st.none(), st.text(max_size=2))),
            sequence=draw(sequence), snapshot=draw(st.sampled_from(
                ["false", "true", "last", "first", "incremental", "other", True, None]))), PG_SCHEMA
    else:
        lsn = st.one_of(st.none(), st.just("00000027:00000758:0005"), st.text(max_size=22))
        source = ds.sqlserver_source(draw(lsn), draw(lsn), draw(st.one_of(
            st.none(), st.integers(-INT64, UINT64_MAX))))
        schema = SQLSERVER_SCHEMA
    payload = {"before": row if op == "d" else None, "after": None if op == "d" else row,
               "source": source, "op": op, "ts_ms": 1, "transaction": None}
    key = draw(st.one_of(st.just({"id": row.get("id")}), _junk(),
                         st.just({"id": 1, "tenant": 2})))
    return message(payload, key, schema, draw(st.integers(0, 10)))


@settings(max_examples=400, deadline=None)
@given(messages())
def test_any_message_decodes_natively_as_python_does_or_is_declined(msg: RawMessage) -> None:
    assert_same(msg)


@settings(max_examples=200, deadline=None)
@given(st.builds(dict, **{name: valid for name, valid in _VALID.items()}),
       st.integers(-(1 << 63), (1 << 63) - 1), st.sampled_from(["c", "u", "r", "d"]))
def test_valid_changes_take_the_fast_path(row: dict, id_: int, op: str) -> None:
    """Values a column can legally hold: the fast path declines only those Python rejects."""
    msg = pg_message(op, {**row, "id": id_})
    expected = Decoder("public", {}, None, native=False).decode(msg)
    native = taught()._fast.decode(msg)
    if type(expected) is ChangeEvent:
        assert native is not None, f"declined a message Python decodes: {expected}"
        assert strict(native) == strict(expected)
    else:
        assert native is None


@settings(max_examples=60, deadline=None)
@given(st.lists(messages(), min_size=1, max_size=8), st.integers(1, 60))
def test_a_batch_decodes_as_its_messages_one_by_one(sample: list[RawMessage],
                                                    repeat: int) -> None:
    """`decode_runs` reads large batches on several threads; every message's result is there
    once, the same as one by one, and a run's events are of its shard."""
    batch = [msg._replace(offset=n) for n, msg in enumerate(sample * repeat)]
    python = Decoder("public", {}, None, native=False)
    expected = [strict(python.decode(msg)) for msg in batch]
    assert [strict(got) for got in decoded_in_order(taught(), batch)] == expected


def decoded_in_order(decoder: Decoder, batch: list[RawMessage], shards: int = 3) -> list[Any]:
    """What `decode_runs` gives for each message of `batch`: runs' events in their places."""
    others, runs = decoder.decode_runs(batch, shards)
    found = dict(others)
    assert len(found) == len(others)
    for shard, shard_runs in enumerate(runs):
        for run in shard_runs:
            for position, event in native_decode.run_events(run):
                assert shard_of(event.row_id, shards) == shard and position not in found
                found[position] = event
    assert sorted(found) == list(range(len(batch)))
    return [found[i] for i in range(len(batch))]
