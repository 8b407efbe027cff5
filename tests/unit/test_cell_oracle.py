"""Tests of the independent Cassandra cell-semantics oracle (benchmarks/cell_oracle.py)."""

from __future__ import annotations

import uuid
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.cell_oracle import (
    Bound,
    CellVersion,
    Event,
    cell_wins,
    reconcile,
    value_bytes,
    visible_rows,
)

NOW = 1_000


def write(key: tuple[Any, ...], ts: int, insert: bool = False, table: str = "t",
          expiries: dict[str, int] | None = None, marker_expiry: int | None = None,
          **cells: Any) -> Event:
    return Event(table, key, 1, "write", ts, marker=insert, cells=cells,
                 expiries=expiries or {}, marker_expiry_us=marker_expiry)


def row_delete(key: tuple[Any, ...], ts: int) -> Event:
    return Event("t", key, 1, "row_delete", ts)


def partition_delete(pk: int, ts: int) -> Event:
    return Event("t", (pk,), 1, "partition_delete", ts)


def range_delete(pk: int, ts: int, start: Bound | None, end: Bound | None) -> Event:
    return Event("t", (pk,), 1, "range_delete", ts, range_start=start, range_end=end)


def rows(*events: Event, now: int = NOW) -> dict[tuple[Any, ...], dict[str, Any]]:
    return visible_rows(events, now).get("t", {})


# --------------------------------------------------------------------------- order independence

_VALUES = {"a": st.integers(-3, 3), "b": st.sampled_from(["", "x", "y", "é"])}


@st.composite
def events(draw: st.DrawFn) -> Event:
    pk = draw(st.integers(1, 2))
    ts = draw(st.integers(1, 6))  # a narrow range: many ties
    kind = draw(st.sampled_from(["write", "write", "write", "row_delete", "partition_delete",
                                 "range_delete"]))
    if kind == "partition_delete":
        return partition_delete(pk, ts)
    if kind == "range_delete":
        bound = st.none() | st.builds(Bound, st.tuples(st.integers(1, 3)), st.booleans())
        return range_delete(pk, ts, draw(bound), draw(bound))
    key = (pk, draw(st.integers(1, 3)))
    if kind == "row_delete":
        return row_delete(key, ts)
    cols = draw(st.lists(st.sampled_from(sorted(_VALUES)), unique=True))
    cells = {c: draw(st.none() | _VALUES[c]) for c in cols}
    expiries = {c: ts + draw(st.integers(1, 5)) for c in cols if draw(st.booleans())}
    marker_expiry = draw(st.none() | st.integers(ts + 1, ts + 5))
    return write(key, ts, draw(st.booleans()), expiries=expiries, marker_expiry=marker_expiry,
                 **cells)


@settings(max_examples=300, deadline=None)
@given(st.lists(events(), max_size=25), st.data(), st.integers(0, 12))
def test_the_visible_rows_do_not_depend_on_arrival_order_or_repeats(
        evs: list[Event], data: st.DataObject, now: int) -> None:
    shuffled = data.draw(st.permutations(evs))
    repeats = data.draw(st.lists(st.sampled_from(evs), max_size=10)) if evs else []
    at = data.draw(st.integers(0, len(shuffled)))
    rearranged = shuffled[:at] + repeats + shuffled[at:]
    assert visible_rows(rearranged, now) == visible_rows(evs, now)


# --------------------------------------------------------------------------- the rules


def test_a_partial_update_changes_only_the_columns_it_writes() -> None:
    got = rows(write((1, 1), 10, insert=True, a=1, b="x"), write((1, 1), 20, a=2))
    assert got == {(1, 1): {"a": 2, "b": "x"}}


def test_a_late_update_of_one_column_does_not_undo_a_newer_write_of_another() -> None:
    got = rows(write((1, 1), 10, insert=True, a=1, b="x"), write((1, 1), 30, b="new"),
               write((1, 1), 20, a=2, b="late"))
    assert got == {(1, 1): {"a": 2, "b": "new"}}


def test_a_late_write_older_than_a_row_delete_stays_deleted() -> None:
    got = rows(write((1, 1), 10, insert=True, a=1), row_delete((1, 1), 30),
               write((1, 1), 20, a=2, b="late"))
    assert got == {}


def test_a_write_newer_than_a_row_delete_brings_the_row_back_with_only_that_cell() -> None:
    got = rows(write((1, 1), 10, insert=True, a=1, b="x"), row_delete((1, 1), 20),
               write((1, 1), 30, b="y"))
    assert got == {(1, 1): {"b": "y"}}


def test_a_partition_delete_hides_every_row_of_the_partition_at_or_before_its_time() -> None:
    got = rows(write((1, 1), 10, insert=True, a=1), write((1, 2), 20, insert=True, a=2),
               write((1, 3), 30, insert=True, a=3), write((2, 1), 10, insert=True, a=4),
               partition_delete(1, 20))
    assert got == {(1, 3): {"a": 3}, (2, 1): {"a": 4}}


def test_a_range_delete_hides_the_rows_within_its_bounds() -> None:
    ins = [write((1, c), 10, insert=True, a=c) for c in range(1, 6)]
    assert set(rows(*ins, range_delete(1, 20, Bound((2,)), Bound((4,), inclusive=False)))) == {
        (1, 1), (1, 4), (1, 5)}
    assert set(rows(*ins, range_delete(1, 20, Bound((2,), inclusive=False), None))) == {
        (1, 1), (1, 2)}
    assert set(rows(*ins, range_delete(1, 5, None, None))) == {(1, c) for c in range(1, 6)}


def test_a_delete_wins_a_tie_with_a_write() -> None:
    assert rows(write((1, 1), 10, insert=True, a=1), row_delete((1, 1), 10)) == {}
    assert rows(write((1, 1), 10, insert=True, a=1), partition_delete(1, 10)) == {}


def test_a_cell_set_to_null_wins_a_tie_with_a_value() -> None:
    assert rows(write((1, 1), 10, insert=True, a=5), write((1, 1), 10, a=None)) == {(1, 1): {}}


@pytest.mark.parametrize(("low", "high"), [
    ("a", "b"),
    ("b", "é"),  # UTF-8 bytes: 0x62 < 0xc3
    (1, -1),  # unsigned bytes: two's complement 0xff.. is the greater
    (Decimal("9.99"), Decimal("1.000")),  # the scale comes first: 2 < 3
    (False, True),
])
def test_the_greater_serialized_value_wins_a_tie_between_two_values(low: Any, high: Any) -> None:
    for first, second in ((low, high), (high, low)):
        assert rows(write((1, 1), 10, a=first), write((1, 1), 10, a=second)) == {
            (1, 1): {"a": high}}
    assert cell_wins(CellVersion(10, high), CellVersion(10, low))
    assert not cell_wins(CellVersion(10, low), CellVersion(10, high))


def test_an_expiring_cell_wins_a_tie_with_a_plain_value_whatever_the_values() -> None:
    evs = [write((1, 1), 10, insert=True, a=9), write((1, 1), 10, expiries={"a": 50}, a=1)]
    assert rows(*evs, now=49) == {(1, 1): {"a": 1}}
    assert rows(*evs, now=50) == {(1, 1): {}}


def test_an_expired_cell_reads_as_null_and_an_expired_marker_keeps_no_row() -> None:
    evs = [write((1, 1), 10, insert=True, marker_expiry=100, expiries={"a": 100}, a=1, b="x"),
           write((1, 2), 10, insert=True, marker_expiry=100, expiries={"a": 100}, a=2)]
    assert rows(*evs, now=99) == {(1, 1): {"a": 1, "b": "x"}, (1, 2): {"a": 2}}
    assert rows(*evs, now=100) == {(1, 1): {"b": "x"}}


def test_an_expired_cell_still_shadows_an_older_value() -> None:
    assert rows(write((1, 1), 10, a=1, b="x"), write((1, 1), 20, expiries={"a": 30}, a=2),
                now=40) == {(1, 1): {"b": "x"}}


def test_a_row_made_by_an_update_lives_only_while_it_has_a_value() -> None:
    upserted = [write((1, 1), 10, a=1), write((1, 1), 20, a=None)]
    inserted = [write((1, 1), 10, insert=True, a=1), write((1, 1), 20, a=None)]
    assert rows(*upserted) == {}
    assert rows(*inserted) == {(1, 1): {}}


def test_the_row_deletion_covering_a_row_is_the_newest_of_its_deletions() -> None:
    state = reconcile([row_delete((1, 1), 10), partition_delete(1, 30), row_delete((1, 1), 20),
                       range_delete(1, 25, Bound((1,)), Bound((1,))),
                       range_delete(1, 40, Bound((2,)), None)])
    assert state.deletion_us("t", (1, 1)) == 30
    assert state.deletion_us("t", (1, 2)) == 40
    assert state.deletion_us("t", (2, 1)) is None


@pytest.mark.parametrize(("value", "serialized"), [
    (True, "01"),
    (1, "0000000000000001"),
    (-2, "fffffffffffffffe"),
    (1.5, "3ff8000000000000"),
    ("é", "c3a9"),
    (b"\x00\xff", "00ff"),
    (Decimal("12.34"), "0000000204d2"),
    (Decimal("-1.00"), "000000029c"),
    (Decimal("1E+3"), "fffffffd01"),
    (datetime(1970, 1, 1, 0, 0, 1), "00000000000003e8"),
    (date(1970, 1, 2), "80000001"),
    (time(0, 0, 1), "000000003b9aca00"),
    (uuid.UUID(int=5), "00000000000000000000000000000005"),
])
def test_value_bytes_is_cassandras_serialization(value: Any, serialized: str) -> None:
    assert value_bytes(value).hex() == serialized


def test_events_that_contradict_their_kind_are_rejected() -> None:
    with pytest.raises(ValueError):
        Event("t", (1,), 2, "row_delete", 1)  # a row's key holds its partition key
    with pytest.raises(ValueError):
        Event("t", (1, 2), 1, "partition_delete", 1)
    with pytest.raises(ValueError):
        Event("t", (1, 2), 1, "write", 1, cells={"a": 1}, expiries={"b": 5})
    with pytest.raises(ValueError):
        reconcile([write((1, 1), 1, a=1), Event("t", (1, 1), 2, "write", 1, cells={"a": 2})])
