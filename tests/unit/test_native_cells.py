"""The native cell step (`cdc_native.CellBatch`, native/src/cell_decide.rs) decides a shard's
cell runs as `operators.cell_rows.decide_cells` decides their changes, and stages each decided
row as `CellWriter._copy` writes it: the same outcomes, states, stale events and stage rows, or
a decline (None) that leaves the batch to Python."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import psycopg
import pytest
from cdc_native import CellBatch, CellRun
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg._copy_base import TextFormatter
from psycopg.adapt import AdaptersMap, Dumper, Transformer

from formats.cells import CellChange, CellKind, table_schema
from operators.cell_meta import tie_break
from operators.cell_rows import (
    STALE_CELLS,
    CellWrite,
    Deletions,
    Place,
    decide_cells,
    decode_cell_state,
    encode_cell_state,
)
from operators.cell_writer import CellWriter, data_columns
from operators.events import TableName
from operators.native_cells import decide_cell_runs
from operators.target_tables import (
    CELLS_COLUMN,
    EXPIRES_AT_COLUMN,
    UPDATED_AT_COLUMN,
    VERSION_COLUMN,
    TargetTable,
)

NOW_US = 1_718_107_200_000_000  # 2024-06-11 12:00 UTC
TS0 = NOW_US - 10_000_000
KEY = ("id", "ck")
TYPES = {"i": "bigint", "f": "double precision", "b": "boolean", "s": "text", "x": "bytea",
         "n": "numeric", "ts": "timestamp", "tz": "timestamptz", "d": "date", "t": "time",
         # names JSON and SQL identifiers must escape or quote
         "NULL": "text", "a b,{c}": "text", "x\u3000": "text"}
TABLES = (TableName("ks", "items"), TableName("ks", "other"))
SCHEMAS = {t: table_schema(t, (("id", "bigint"), ("ck", "text"), *TYPES.items()), KEY)
           for t in TABLES}


def target(table: TableName, types: dict[str, str]) -> TargetTable:
    """The table as the writer finds it: its key in another order than the changes', and a
    column no change writes."""
    return TargetTable(table, {"ck": "text", "id": "bigint", **types, "extra": "text",
                               CELLS_COLUMN: "jsonb", VERSION_COLUMN: "bytea",
                               EXPIRES_AT_COLUMN: "timestamptz",
                               UPDATED_AT_COLUMN: "timestamptz"}, ("ck", "id"))


TARGETS = [target(t, TYPES) for t in TABLES]

_text = (st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                 max_size=40)
         | st.sampled_from(["a\tb", "line\nbreak", "back\\slash", "é€😀", "x" * 40]))
VALUES = {
    "i": st.sampled_from([0, 1, -1]) | st.integers(-(2**63), 2**63 - 1),
    "f": st.sampled_from([0.5, -1.0]) | st.floats(allow_nan=False, allow_infinity=False),
    "b": st.booleans(),
    "s": st.sampled_from(["a", "b"]) | _text,
    "x": st.binary(max_size=40),
    "n": st.builds(lambda u, e: Decimal(u).scaleb(e), st.integers(-(10**20), 10**20),
                   st.integers(-10, 5)),
    "ts": st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
    "tz": st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1),
                       timezones=st.just(UTC)),
    "d": st.dates(),
    "t": st.times(),
    "NULL": _text,
    "a b,{c}": _text,
    "x\u3000": _text,
}
_ts = st.integers(0, 6).map(lambda d: TS0 + d)
# expiries around now: long past, just past, now (already expired), just ahead, far ahead
_expiry = st.sampled_from([-5_000_000, -1, 0, 1, 3_600_000_000]).map(lambda d: NOW_US + d)


@st.composite
def changes(draw: st.DrawFn, table: TableName) -> CellChange:
    key = (draw(st.integers(1, 2)), draw(st.sampled_from(["a", "b\tc"])))
    ts = draw(_ts)
    if draw(st.integers(0, 4)) == 0:
        return CellChange(table, KEY, key, None, CellKind.ROW_DELETE, ts, False, {}, "top", 0, 0,
                          schema=SCHEMAS[table])
    cells = {c: draw(st.none() | VALUES[c]) for c in draw(st.sets(st.sampled_from(list(TYPES))))}
    ttl = draw(st.sets(st.sampled_from(sorted(cells)))) if cells else set()
    expires = {c: draw(_expiry) for c in sorted(ttl)}
    marker = draw(st.booleans())
    marker_expiry = draw(st.none() | _expiry) if marker else None
    return CellChange(table, KEY, key, None, CellKind.WRITE, ts, marker, cells, "top", 0, 0,
                      expires_us=expires, marker_expires_us=marker_expiry, schema=SCHEMAS[table])


@st.composite
def stored_metas(draw: st.DrawFn) -> dict[str, Any]:
    """A row's versions as a earlier batch may have left them (cells of a column gone from the
    schema too)."""
    meta: dict[str, Any] = {"c": {}}
    if draw(st.booleans()):
        meta["m"] = [draw(_ts), draw(st.just(0) | _expiry)]
    if draw(st.booleans()):
        meta["d"] = draw(_ts)
    for col in sorted(draw(st.sets(st.sampled_from([*TYPES, "gone"])))):
        kind = draw(st.sampled_from([0, 1, 2]))
        tie = "" if kind == 2 else tie_break(draw(VALUES.get(col, st.just("old"))))
        meta["c"][col] = [draw(_ts), kind, draw(_expiry) if kind == 1 else 0, tie]
    return meta


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[list[CellChange]], dict[bytes, bytes | None]]:
    """Per table, its changes in arrival order (re-deliveries included); the stored states."""
    tables = TABLES[: draw(st.integers(1, 2))]
    runs = []
    for table in tables:
        drawn = draw(st.lists(changes(table), min_size=1, max_size=12))
        again = draw(st.lists(st.sampled_from(drawn), max_size=4))
        order = draw(st.permutations([*drawn, *again]))
        runs.append([dataclasses.replace(c, offset=i) for i, c in enumerate(order)])
    stored = {}
    for run in runs:
        for change in run:
            if change.row_id not in stored:
                place = draw(st.sampled_from([None, Place.TABLE, Place.TOMBSTONES]))
                stored[change.row_id] = (None if place is None
                                         else encode_cell_state(place, draw(stored_metas())))
    return runs, stored


# --- the reference: what the writer copies for Python's writes -------------------------------


class _BytesHex(Dumper):
    """bytea as psycopg writes it on a connection (hex; without one it writes the escape
    format)."""

    oid = psycopg.adapters.types["bytea"].oid

    def dump(self, obj: bytes) -> bytes:
        return b"\\x" + bytes(obj).hex().encode()


_ADAPTERS = AdaptersMap(psycopg.adapters)
_ADAPTERS.register_dumper(bytes, _BytesHex)


class _Capture:
    """A connection whose `COPY` keeps the rows written to it."""

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []

    def cursor(self) -> _Capture:
        return self

    def copy(self, statement: object) -> _Capture:
        return self

    def __enter__(self) -> _Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def write_row(self, row: tuple[Any, ...]) -> None:
        self.rows.append(row)


def python_lines(table: TargetTable, writes: list[CellWrite]) -> list[bytes]:
    capture = _Capture()
    writer = CellWriter(capture)  # type: ignore[arg-type]
    writer._copy(sql.Identifier("stage"), table, data_columns(table), writes, [])
    formatter = TextFormatter(Transformer(_ADAPTERS))
    for row in capture.rows:
        formatter.write_row(row)
    return bytes(formatter.end()).split(b"\n")[:-1]


_UNESCAPED = {b"b": b"\b", b"t": b"\t", b"n": b"\n", b"v": b"\v", b"f": b"\f", b"r": b"\r",
              b"\\": b"\\"}


def fields(line: bytes) -> list[str | None]:
    """A COPY text row's fields, unescaped (None for `\\N`)."""
    return [None if f == b"\\N" else
            re.sub(rb"\\([btnvfr\\])", lambda m: _UNESCAPED[m[1]], f).decode()
            for f in line.split(b"\t")]


def assert_same_line(native: bytes, python: bytes, table: TargetTable) -> None:
    """Field by field: texts equal, but JSON by value and floats by value (the shortest digits
    of a tie round differently)."""
    columns = [*table.key, *data_columns(table), "_cdc_set", "_cdc_key", "_cdc_expected",
               "_cdc_place", "_cdc_alive", CELLS_COLUMN, VERSION_COLUMN, EXPIRES_AT_COLUMN]
    raw_native, raw_python = native.split(b"\t"), python.split(b"\t")
    assert len(raw_native) == len(raw_python) == len(columns)
    for name, n_raw, p_raw, n, p in zip(columns, raw_native, raw_python, fields(native),
                                        fields(python), strict=True):
        if name in ("_cdc_expected", CELLS_COLUMN):
            assert (n and orjson.loads(n)) == (p and orjson.loads(p)), name
        elif table.columns.get(name) == "double precision" and n is not None and p is not None:
            assert float(n) == float(p), name
        else:
            assert n_raw == p_raw, name


# --- the comparison ----------------------------------------------------------------------------


def decide_native(runs: list[list[CellChange]], stored: dict[bytes, bytes | None],
                  targets: Sequence[TargetTable] = TARGETS) -> tuple | None:
    """`CellBatch.decide` on the runs, each staged to its table's target."""
    native_runs = [CellRun.from_changes(run) for run in runs]
    assert None not in native_runs
    batch = CellBatch(native_runs)
    keys = batch.keys()
    assert keys == list(dict.fromkeys(c.row_id for run in runs for c in run))
    index = {t.name: i for i, t in enumerate(targets)}
    run_targets = []
    for run in runs:
        i = index[run[0].table]
        run_targets.append((i, [run[0].key_columns.index(k) for k in targets[i].key],
                            list(data_columns(targets[i]))))
    return batch.decide([stored[k] for k in keys], run_targets, NOW_US)


def decide_python(runs: list[list[CellChange]], stored: dict[bytes, bytes | None]) -> Any:
    return decide_cells([c for run in runs for c in run], [],
                        lambda ids: [stored[i] for i in ids], Deletions(), NOW_US)


def assert_same(runs: list[list[CellChange]], stored: dict[bytes, bytes | None]) -> None:
    native, python = decide_native(runs, stored), decide_python(runs, stored)
    assert native is not None
    applied, duplicates, counts, states, replaced, staged, stale = native
    assert (applied, duplicates) == (python.applied, python.duplicates)
    native_counts: Counter[tuple[str, str, str]] = Counter()
    for run, op, outcome, n in counts:
        native_counts[(str(runs[run][0].table), op, outcome)] += n
    assert native_counts == python.counts
    assert [(k, decode_cell_state(v)) for k, v in states] == [
        (k, decode_cell_state(v)) for k, v in python.states]
    assert replaced == python.replaced
    assert [(runs[run][0].topic, partition, offset, runs[run][0].table, row_id, version,
             newest, STALE_CELLS)
            for run, partition, offset, row_id, version, newest in stale] == [
        dataclasses.astuple(s) for s in python.stale]
    by_target: dict[int, list[CellWrite]] = {}
    for w in python.writes:
        by_target.setdefault(TABLES.index(w.table), []).append(w)
    assert sorted(t for t, _, _ in staged) == sorted(by_target)
    for t, text, moves in staged:
        writes = by_target[t]
        assert moves == Counter((w.place.value, w.alive) for w in writes)
        lines = bytes(text).split(b"\n")[:-1]
        expected = python_lines(TARGETS[t], writes)
        assert len(lines) == len(expected)
        for native_line, python_line in zip(lines, expected, strict=True):
            assert_same_line(native_line, python_line, TARGETS[t])


@settings(max_examples=400, deadline=None)
@given(batches())
def test_a_batch_decides_and_stages_as_python_does(batch):
    assert_same(*batch)


# --- examples --------------------------------------------------------------------------------

ITEMS = TABLES[0]


def write(ts_us: int, cells: dict[str, Any], offset: int = 0, **more: Any) -> CellChange:
    return CellChange(ITEMS, KEY, (1, "a"), None, CellKind.WRITE, ts_us, True, cells, "top", 0,
                      offset, schema=SCHEMAS[ITEMS], **more)


def test_a_stored_state_that_is_not_a_cell_state_is_declined():
    change = write(TS0, {"s": "x"})
    stored = {change.row_id: b"L\x03" + bytes(8)}  # a row source's state
    assert decide_native([[change]], stored) is None
    with pytest.raises(ValueError, match="not a cell row's state"):
        decide_python([[change]], stored)


def test_a_written_column_the_stage_has_not_is_declined():
    change = write(TS0, {"s": "x", "i": 1})
    narrow = [target(ITEMS, {c: t for c, t in TYPES.items() if c != "i"}), TARGETS[1]]
    assert decide_native([[change]], {change.row_id: None}, narrow) is None


def test_a_row_in_the_table_past_an_expiry_is_rewritten_without_a_change():
    stored_meta = {"m": [TS0, 0], "c": {"s": [TS0, 1, NOW_US - 1, tie_break("x")],
                                        "i": [TS0, 0, 0, tie_break(7)]}}
    change = write(TS0, {"i": 7})  # a re-delivery: a duplicate
    stored = {change.row_id: encode_cell_state(Place.TABLE, stored_meta)}
    native = decide_native([[change]], stored)
    assert native is not None and native[:2] == (0, 1)
    assert [w.values for w in decide_python([[change]], stored).writes] == [{"s": None}]
    assert [decode_cell_state(state)[0] for _, state in native[3]] == [Place.TABLE]
    assert_same([[change]], stored)


def test_ties_on_write_time_go_to_the_greater_rank():
    # at one write time a null beats a TTL value beats a plain value; among values, the greater
    # serialization
    runs = [[write(TS0, {"i": 2}, 0), write(TS0, {"i": 1}, 1), write(TS0, {"i": 3}, 2,
                                                                      marker_expires_us=None)]]
    stored = {runs[0][0].row_id: None}
    native = decide_native(runs, stored)
    assert native is not None
    assert decode_cell_state(native[3][0][1])[1]["c"]["i"][3] == tie_break(3)
    assert_same(runs, stored)


def test_a_column_name_json_escapes_is_staged_as_python_does():
    table = TableName("ks", "odd")
    name = 'q"u\\ote\t'
    schema = table_schema(table, (("id", "bigint"), ("ck", "text"), (name, "text")), KEY)
    change = CellChange(table, KEY, (1, "a"), None, CellKind.WRITE, TS0, True, {name: "v"},
                        "top", 0, 0, schema=schema)
    odd = target(table, {name: "text"})
    native = decide_native([[change]], {change.row_id: None}, [odd])
    assert native is not None
    python = decide_python([[change]], {change.row_id: None})
    assert [decode_cell_state(v) for _, v in native[3]] == [
        decode_cell_state(v) for _, v in python.states]
    [(_, text, _)] = native[5]
    [line] = python_lines(odd, python.writes)
    assert_same_line(bytes(text).rstrip(b"\n"), line, odd)


def test_a_float_that_is_not_finite_leaves_the_run_to_python():
    for value in (float("nan"), float("inf"), float("-inf")):
        assert CellRun.from_changes([write(TS0, {"f": value})]) is None


def test_a_table_with_a_json_column_is_left_to_python():
    """Its values are written as `Jsonb` (JSON text), which the native stage rows do not do."""
    run = CellRun.from_changes([write(TS0, {"s": "x"})])
    plain = target(ITEMS, TYPES)
    with_json = target(ITEMS, {**TYPES, "doc": "jsonb"})
    stored = lambda keys: [None] * len(keys)  # noqa: E731
    assert decide_cell_runs([run], [plain], stored, NOW_US) is not None
    assert decide_cell_runs([run], [with_json], stored, NOW_US) is None
