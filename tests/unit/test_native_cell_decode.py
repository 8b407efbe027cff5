"""The native decoder of ScyllaDB's legacy format (`native/src/cell_decode.rs`, a `CellPlan`
learned by `operators/native_decode.py`) makes of every message exactly the record that
`CellRun.from_changes` makes of the Python decoder's `CellChange`, or declines it; it declines
every message Python sends to the DLQ, and it does read the messages it is for."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.systems import cql_types_setting
from benchmarks.workload_scylla import ScyllaSpec, generate, schemas
from formats.cells import CellChange, CellKind
from formats.scylla import decode_scylla
from operators.decode import Decoder
from operators.events import DlqRecord, RawMessage, TableName
from operators.keys import shard_of
from operators.native_decode import run_events
from tests.formats.test_scylla import CQL_TYPES, FIXTURES, load, message

cdc_native = pytest.importorskip("cdc_native")
CellRun, Fetched = cdc_native.CellRun, cdc_native.Fetched

SHARDS = 4
SPEC = ScyllaSpec(events=3000, keys=300)
TOPIC = SPEC.topic("orders")
TABLE = TableName("public", "orders")
CQL = {"amount": "decimal"}  # as the benchmark declares them (`cql_types_setting`)
KEY_SCHEMA, VALUE_SCHEMA = schemas(SPEC, "orders")
KEY_PREFIX = b'{"schema":' + orjson.dumps(KEY_SCHEMA) + b',"payload":'
VALUE_PREFIX = b'{"schema":' + orjson.dumps(VALUE_SCHEMA) + b',"payload":'
SOURCE = {"version": "2.0.3", "connector": "scylla", "name": "bench", "ts_ms": 1718022896789,
          "snapshot": "false", "db": "shop", "sequence": None, "ts_us": 1718022896789001,
          "ts_ns": 1718022896789001000, "keyspace_name": "shop", "table_name": "orders"}
VALID_CELLS = {"amount": '"12.50"', "big": "-9223372036854775808", "flag": "true",
               "note": '"a \\"b\\"\\n\\u00e9"', "placed_at": "1718022896789", "score": "-0.0"}


# --- the two decoders ------------------------------------------------------------------------


def python_record(change: Any) -> tuple | None:
    """What `CellRun.from_changes` keeps of a Python change, without its position; None where
    it keeps nothing (not a write or row delete, or a value without a native form)."""
    if type(change) is not CellChange or change.kind not in (CellKind.WRITE,
                                                             CellKind.ROW_DELETE):
        return None
    run = CellRun.from_changes([change])
    return None if run is None else run.records()[0][1:]


def native_decode(decoder: Decoder, msg: RawMessage) -> tuple | None:
    """The native record of `msg` (checked for its position, shard and change), or None when
    the plan declined it."""
    batch = Fetched(msg.topic, msg.partition, [(msg.offset, msg.key, msg.value)])
    decoded, runs = decoder.decode_runs([batch], SHARDS)
    made = [(shard, run) for shard, shard_runs in enumerate(runs) for run in shard_runs]
    if not made:
        assert [position for position, _ in decoded] == [0]
        return None
    assert decoded == []
    [(shard, run)] = made
    [record] = run.records()
    assert record[0] == 0 and shard == shard_of(record[7], SHARDS)
    [(position, change)] = run_events(run)
    assert position == 0 and type(change) is CellChange
    assert change == decode_scylla(msg, TABLE, CQL) and change.schema is run.schema
    return record[1:]


def taught(**teacher: Any) -> Decoder:
    """A decoder that has planned a test schema of `TOPIC`: `compose(**teacher)`'s."""
    decoder = Decoder("public", {}, None, cql_types={TOPIC: CQL})
    assert type(decoder.decode(compose(**teacher))) is CellChange
    return decoder


def assert_equal_or_declined(decoder: Decoder, msg: RawMessage) -> tuple | None:
    """The native record of `msg`, which Python decodes to the same, or None (declined)."""
    expected = decode_scylla(msg, TABLE, CQL)
    got = native_decode(decoder, msg)
    if expected is None or type(expected) is DlqRecord:
        assert got is None, f"native accepted what Python rejects: {expected}"
    if got is not None:
        assert got == python_record(expected)
    return got


# --- messages --------------------------------------------------------------------------------


def members(pairs: list[tuple[str, str | None]]) -> str:
    """A JSON object of `(name, JSON text)` members, None leaving a member out."""
    return "{" + ",".join(f"{orjson.dumps(n).decode()}:{v}" for n, v in pairs
                          if v is not None) + "}"


def compose(op: str | None = '"c"', cells: dict[str, str | None] | None = None,
            key: str | None = None, source: str | None = None, before: str | None = "null",
            extra: list[tuple[str, str | None]] = (), offset: int = 0,
            prefixes: tuple[bytes, bytes] = (KEY_PREFIX, VALUE_PREFIX)) -> RawMessage:
    """A legacy message of `TOPIC`: `cells` maps a column to its cell's JSON (None: absent);
    `prefixes`: the key's and the value's envelope up to the payload."""
    cells = {c: f'{{"value":{v}}}' for c, v in VALID_CELLS.items()} if cells is None else cells
    after = members([("customer_id", "1"), ("order_id", "2"), *cells.items()])
    payload = members([("source", orjson.dumps(SOURCE).decode() if source is None else source),
                       ("before", before), ("after", after), ("op", op), ("ts_ms", "1"),
                       ("transaction", "null"), *extra])
    key = '{"customer_id":1,"order_id":2}' if key is None else key
    return RawMessage(TOPIC, 1, offset, prefixes[0] + key.encode() + b"}",
                      prefixes[1] + payload.encode() + b"}")


def text_keyed(schema: Any) -> bytes:
    """The envelope prefix of `schema` with `customer_id` a text column."""
    text = orjson.dumps(schema).replace(b'{"type":"int32","optional":true,"field":"customer_id"}',
                                        b'{"type":"string","optional":true,"field":"customer_id"}')
    assert b'"string","optional":true,"field":"customer_id"' in text
    return b'{"schema":' + text + b',"payload":'


TEXT_KEYED = (text_keyed(KEY_SCHEMA), text_keyed(VALUE_SCHEMA))


# --- fixtures, the workload, valid messages --------------------------------------------------


def table_of(topic: str) -> TableName:
    """The table the decoder names a topic's (`<prefix>.<keyspace>.<table>`)."""
    return TableName("public", topic.rpartition(".")[2])


def fixture(name: str) -> RawMessage:
    """A fixture message written compactly, as JsonConverter writes it (a plan is learned from
    the schema bytes that start a message: `{"schema":...,"payload":`)."""
    msg = message(load(name))
    return msg._replace(key=orjson.dumps(orjson.loads(msg.key)),
                        value=orjson.dumps(orjson.loads(msg.value)))


@pytest.mark.parametrize("name", sorted(p.stem for p in FIXTURES.glob("legacy_*.json")))
@pytest.mark.parametrize("cql_types", [{}, {"amount": "decimal", "big": "bigint"}])
def test_every_legacy_fixture_is_decoded_natively_as_python_decodes_it(
        name: str, cql_types: dict[str, str]) -> None:
    msg = fixture(name)
    decoder = Decoder("public", {}, None, cql_types={msg.topic: cql_types})
    assert native_decode(decoder, msg) is None  # Python decodes the first, and learns
    expected = decode_scylla(msg, table_of(msg.topic), cql_types)
    batch = Fetched(msg.topic, msg.partition, [(msg.offset, msg.key, msg.value)])
    decoded, runs = decoder.decode_runs([batch], SHARDS)
    [run] = [run for shard_runs in runs for run in shard_runs]
    assert decoded == [] and run.records()[0][1:] == python_record(expected)
    assert run.changes() == [(0, expected)]


@pytest.mark.parametrize("name", sorted(p.stem for p in FIXTURES.glob("legacy_*.json")
                                        if "carts" not in load(p.stem)["topic"]))
def test_a_schema_with_a_column_of_no_native_twin_has_no_plan(name: str) -> None:
    msg = fixture(name)  # shop.orders: uuid, inet, varint, duration, time as declared
    decoder = Decoder("public", {}, None, cql_types={msg.topic: CQL_TYPES})
    for _ in range(2):
        decoded, runs = decoder.decode_runs([msg], SHARDS)
        assert runs == [[]] * SHARDS
        assert decoded == [(0, decode_scylla(msg, table_of(msg.topic), CQL_TYPES))]
    assert decoder.newest_plans() == {}


def test_valid_messages_of_every_op_are_decoded_natively() -> None:
    decoder = taught()
    nulls = {"amount": '{"value":null}', "big": "null", "note": None}
    for msg in (compose('"c"'), compose('"u"'), compose('"d"', cells={}), compose('"u"', nulls),
                compose('"d"', before='{"customer_id":1}', cells=nulls)):
        assert assert_equal_or_declined(decoder, msg) is not None, msg


def test_a_workload_is_decoded_natively_once_per_change_in_its_shard() -> None:
    """FastPath.decode_runs over Fetched batches and RawMessages: every change is in one
    CellRun of its shard at its position; tombstones and the first message are Python's."""
    wl = generate(SPEC)
    cql_types = json.loads(cql_types_setting(wl))
    decoder = Decoder("public", {}, None, cql_types=cql_types)
    for topic, partition in sorted(wl.arrivals):
        msgs = [RawMessage(topic, partition, 100 + i, k, v)
                for i, (k, v) in enumerate(wl.messages(topic, partition))]
        half = len(msgs) // 2
        items = [Fetched(topic, partition, [(m.offset, m.key, m.value) for m in msgs[:half]]),
                 *msgs[half:half + 10],
                 Fetched(topic, partition, [(m.offset, m.key, m.value) for m in msgs[half + 10:]])]
        decoded, runs = decoder.decode_runs(items, SHARDS)
        table = table_of(topic)
        seen = [position for position, _ in decoded]
        for position, item in decoded:
            msg = msgs[position]
            assert msg.value is None or (position == 0 and type(item) is CellChange), position
            assert item == decode_scylla(msg, table, cql_types[topic])
        for shard, shard_runs in enumerate(runs):
            for run in shard_runs:
                assert isinstance(run, CellRun) and run.topic == topic
                for record, (position, change) in zip(run.records(), run.changes(), strict=True):
                    msg = msgs[position]
                    expected = decode_scylla(msg, table, cql_types[topic])
                    assert record[0] == position and record[2] == msg.offset
                    assert shard == shard_of(record[7], SHARDS)
                    assert change == expected and record[1:] == python_record(expected)
                    seen.append(position)
        assert sorted(seen) == list(range(len(msgs)))
        assert sum(len(run) for shard_runs in runs for run in shard_runs) > len(msgs) * 0.8


def test_the_consumer_is_taught_debezium_plans_only() -> None:
    decoder = taught()
    assert decoder.newest_plans() == {}
    assert native_decode(decoder, compose()) is not None


# --- values and poison -----------------------------------------------------------------------

def mostly(valid: st.SearchStrategy[Any], odd: st.SearchStrategy[Any],
           odds: int = 8) -> st.SearchStrategy[Any]:
    """`valid`, but one time in `odds` `odd` (so that a message of many parts is often valid)."""
    return st.sampled_from(range(odds)).flatmap(lambda i: odd if i == odds - 1 else valid)


def json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


BOUNDS = [-2**63, -2**31 - 1, -2**31, -1, 0, 2**31 - 1, 2**31, 2**63 - 1]
BEYOND = [-2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30]
INTS = mostly(st.one_of(st.integers(-2**63, 2**63 - 1), st.sampled_from(BOUNDS)).map(str),
              st.sampled_from([*map(str, BEYOND), "-0", "1.0", "1e3", "true", '"5"', "[]"]))
FLOATS = mostly(
    st.one_of(st.floats(allow_nan=False, allow_infinity=False).map(json_text),
              st.sampled_from(BOUNDS + BEYOND).map(str),
              st.sampled_from(["-0.0", "-0", "1e300", "5e-324", "1E5", "1e-400", "2.5E-3"])),
    st.sampled_from(["1e400", "-1e400", "1.7976931348623159e308", str(2**65), '"1.5"', "true"]))
TEXTS = mostly(
    st.one_of(st.text().map(json_text),
              st.sampled_from(['"\\ud83d\\ude00"', '"a\\/b"', '"\\"\\\\\\b\\f\\n\\r\\t\\u0001"',
                               '"\\u00e9"'])),
    st.sampled_from(['"\\u0000"', '"a\\u0000"', '"\\ud800"', '"\\udc00x"', "5", "true"]))
BOOLS = mostly(st.sampled_from(["true", "false"]), st.sampled_from(["0", "1", '"true"']))


def decimal_text(digits: st.SearchStrategy[str], exponents: st.SearchStrategy[int],
                 ) -> st.SearchStrategy[str]:
    """`"[sign]whole[.fraction][e[sign]exponent]"` as JSON."""
    exponent = st.builds(lambda e, sign, v: f"{e}{sign if v >= 0 else '-'}{abs(v)}",
                         st.sampled_from("eE"), st.sampled_from(["", "+"]), exponents)
    return st.builds(lambda sign, whole, frac, exp: f'"{sign}{whole}{frac}{exp}"',
                     st.sampled_from(["", "-", "+"]), digits,
                     st.one_of(st.just(""), digits.map(lambda d: "." + d)),
                     st.one_of(st.just(""), exponent))


DIGITS = st.text(alphabet="0123456789", max_size=42)
DECIMALS = mostly(
    decimal_text(st.text(alphabet="0123456789", min_size=1, max_size=40), st.integers(-40, 40)),
    st.one_of(decimal_text(DIGITS, st.integers(-10**12, 10**12)), st.sampled_from([
        '" 1.5"', '"1_000"', '"NaN"', '"-Infinity"', '"."', '"5."', '".5"', '"١٢"',
        '"1e999999999"', '"0e999999999"', '"0E+5"', '"-0.00"', '"12.50"', "12.5", '"1e-7"',
        '"1E+27"', '"1E+28"', '"9999999999999999999999999999E1"', '""', '"-"', '"1e"',
        '"e5"'])))
TIMESTAMPS = mostly(
    st.one_of(st.integers(-62135596800000, 253402300799999),
              st.sampled_from([-62135596800001, 253402300800000, *BOUNDS])).map(str),
    st.sampled_from(["1.0", '"1"', "1e3"]))
VALUES = {"amount": DECIMALS, "big": INTS, "flag": BOOLS, "note": TEXTS,
          "placed_at": TIMESTAMPS, "score": FLOATS}


def cells_of(column: str) -> st.SearchStrategy[str | None]:
    """A column's cell: absent, null, set to null, a value (of another column's type at
    times), or no cell at all."""
    value = mostly(VALUES[column], st.one_of(*VALUES.values(), st.just('{"a":1}')))
    return mostly(
        st.one_of(st.none(), st.just("null"), st.just('{"value":null}'),
                  value.map(lambda v: f'{{"value":{v}}}'), value.map(lambda v: f'{{"value":{v}}}'),
                  value.map(lambda v: f'{{"extra":[1,{{"a":null}}],"value":{v}}}')),
        st.sampled_from(["5", '"x"', "[]", "{}", '{"other":1}', '{"value":1,"value":2}']))


KEY_INTS = mostly(st.integers(-2**31, 2**31 - 1).map(str), st.one_of(INTS, st.just("null")))
KEYS_ = mostly(
    st.builds(lambda a, b: f'{{"customer_id":{a},"order_id":{b}}}', KEY_INTS, KEY_INTS),
    st.sampled_from(['{"order_id":2,"customer_id":1}', '{"customer_id":1}', "{}", "null",
                     '{"customer_id":1,"order_id":2,"x":3}', '{"customer_id":1,"order_id":"2"}',
                     '{"customer_id":1,"customer_id":1,"order_id":2}', "[1,2]"]))
SOURCES = st.builds(
    lambda ts, snapshot, connector: members([
        *[(k, json_text(v)) for k, v in SOURCE.items()
          if k not in ("ts_us", "snapshot", "connector")],
        ("connector", connector), ("snapshot", snapshot), ("ts_us", ts)]),
    mostly(st.integers(-2**63, 2**63 - 1).map(str),
           st.sampled_from([str(2**63), str(-2**63 - 1), "1.5", '"1"', "null", None])),
    mostly(st.sampled_from(['"false"', "false", "null", None]),
           st.sampled_from(['"true"', '"last"', "true", "0"])),
    mostly(st.just('"scylla"'), st.sampled_from(['"cassandra"', '"postgresql"', "null", None])))
MESSAGES = st.builds(
    compose,
    op=mostly(st.sampled_from(['"c"', '"u"', '"d"', '"\\u0063"']),
              st.sampled_from(['"r"', '"t"', "null", "1", '"C"', None])),
    cells=st.fixed_dictionaries({c: cells_of(c) for c in VALUES}),
    key=mostly(st.one_of(st.none(), KEYS_), st.sampled_from(["null", "[]", '"x"'])),
    source=mostly(st.one_of(st.none(), SOURCES), st.sampled_from(['"x"', "null", "[]"])),
    before=mostly(st.sampled_from(["null", None, '{"customer_id":1,"note":null}']),
                  st.sampled_from(["{}", "5", '"x"', '{"a":1e400}'])),
    extra=mostly(st.just([]), odds=3, odd=st.lists(st.sampled_from([
        ("w", "1e400"), ("ts_ms", "12"), ("ddl", "null"), ("x", '"\\ud800"'),
        ("op", '"u"'), ("tableChanges", "[]"), ("x", "[1,{\"a\":[1e308]}]"), ("y", "-1e-400"),
        ("y", "[1,{\"a\":[-1e400]}]"), ("z", '"\\u0000"')]), min_size=1, max_size=2)))
_DECODER = taught()


@settings(max_examples=600, deadline=None)
@given(MESSAGES)
def test_any_message_is_decoded_natively_as_python_decodes_it_or_declined(
        msg: RawMessage) -> None:
    assert_equal_or_declined(_DECODER, msg)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({c: VALUES[c] for c in VALUES}))
def test_each_value_converts_natively_as_python_converts_it_or_is_declined(
        values: dict[str, str]) -> None:
    msg = compose('"u"', {c: f'{{"value":{v}}}' for c, v in values.items()})
    assert_equal_or_declined(_DECODER, msg)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_malformed_json_is_declined(data: st.DataObject) -> None:
    """A message cut, or with a byte changed, inside its payload."""
    msg = compose()
    at = data.draw(st.integers(len(VALUE_PREFIX), len(msg.value) - 1))
    byte = data.draw(st.sampled_from([b"", b"\x00", b"{", b"}", b'"', b",", b"\\", b"\xff", b"]",
                                      b" ", b"9", b"e"]))
    value = msg.value[:at] + byte + msg.value[at + data.draw(st.integers(0, 2)):]
    assert_equal_or_declined(_DECODER, msg._replace(value=value))


@pytest.mark.parametrize("extra", [
    ("w", "1e400"), ("w", "-1e400"), ("w", "1.7976931348623159e308"), ("w", '"\\ud800"'),
    ("w", '"\\udc00"'), ("w", '[1,{"a":[1e999]}]'), ("source", '{"connector":"scylla"}'),
    ("after", "null"), ("before", "[]"), ("after", "[]"), ("op", "null")])
def test_json_orjson_refuses_and_repeated_names_are_declined(extra: tuple[str, str]) -> None:
    msg = compose(extra=[extra])
    assert type(decode_scylla(msg, TABLE, CQL)) is DlqRecord or extra[0] in ("after", "op")
    assert native_decode(taught(), msg) is None


def _repeated(where: str) -> RawMessage:
    """A message with one member name twice, each time with a valid value."""
    cells = {c: f'{{"value":{v}}}' for c, v in VALID_CELLS.items()}
    if where == "payload":
        return compose(extra=[("ts_ms", "2")])
    if where == "source":
        source = orjson.dumps(SOURCE).decode()
        return compose(source=source[:-1] + ',"ts_us":1718022896789002}')
    if where == "after":  # the column's second member follows its first in the text
        return compose(cells={**cells, "big": '{"value":1},"big":{"value":2}'})
    return compose(cells={**cells, "big": '{"value":1,"value":2}'})


@pytest.mark.parametrize("where", ["payload", "source", "after", "cell"])
def test_a_repeated_member_name_is_declined_though_python_takes_the_last(where: str) -> None:
    """Decline, never guess: JSON leaves repeated names to the reader (orjson keeps the last)."""
    msg = _repeated(where)
    assert type(decode_scylla(msg, TABLE, CQL)) is CellChange
    assert native_decode(taught(), msg) is None


_TEXT_KEY_DECODER = taught(key='{"customer_id":"c","order_id":2}', prefixes=TEXT_KEYED)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_text_keys_make_the_state_key_python_makes(customer: str) -> None:
    msg = compose(key=f'{{"customer_id":{json_text(customer)},"order_id":2}}',
                  prefixes=TEXT_KEYED)
    got = assert_equal_or_declined(_TEXT_KEY_DECODER, msg)
    assert (got is not None) is ("\x00" not in customer)  # a NUL has no COPY text


@pytest.mark.parametrize("flag", ['"true"', '"last"', "true", '"incremental"'])
def test_snapshot_changes_are_left_to_python(flag: str) -> None:
    """A record does not carry `CellChange.snapshot`: Python decodes those changes."""
    msg = compose(source=orjson.dumps({**SOURCE, "snapshot": orjson.Fragment(flag)}).decode())
    assert decode_scylla(msg, TABLE, CQL).snapshot
    assert native_decode(taught(), msg) is None


def test_tombstones_and_null_keys_are_left_to_python() -> None:
    decoder = taught()
    for msg in (compose()._replace(value=None), compose()._replace(key=None)):
        assert native_decode(decoder, msg) is None


def test_a_run_since_a_committed_offset_keeps_the_later_records_and_their_changes() -> None:
    decoder = taught()
    msgs = [compose('"u"', {"note": f'{{"value":"n{offset}"}}'}, offset=offset)
            for offset in range(10, 16)]
    batch = Fetched(TOPIC, 1, [(m.offset, m.key, m.value) for m in msgs])
    _, runs = decoder.decode_runs([batch], 1)
    [[run]] = runs
    assert run.since({}) is run and run.since({(TOPIC, 1): 16}) is None
    kept = run.since({(TOPIC, 1): 13})
    assert [r[:3] for r in kept.records()] == [(p, 1, 10 + p) for p in (3, 4, 5)]
    assert kept.changes() == [(p, decode_scylla(msgs[p], TABLE, CQL)) for p in (3, 4, 5)]
