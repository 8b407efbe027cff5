from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from operators.versions import (
    describe_version,
    pg_version,
    sqlserver_version,
    writetime_version,
)

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def lsn_text(n: int) -> str:
    """A SQL Server LSN string for a 80-bit number (8:8:4 hex digits)."""
    h = f"{n:020x}"
    return f"{h[:8]}:{h[8:16]}:{h[16:]}"


LSN_NUMBERS = st.one_of(st.none(), st.integers(min_value=0, max_value=2**80 - 1))


def test_pg_version_is_kind_byte_then_the_previous_commit_and_the_lsn_big_endian() -> None:
    assert pg_version(0x0102030405060708, 0x1112131415161718) == bytes(
        [1, 1, 2, 3, 4, 5, 6, 7, 8, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18])
    assert pg_version(5, 255) < pg_version(5, 256) < pg_version(6, 0)
    assert pg_version(2**64 - 1, 2**64 - 1) == b"\x01" + b"\xff" * 16


@pytest.mark.parametrize("bad", [-1, 2**64, "33842008", None, True, 1.5])
def test_pg_version_rejects_non_lsn(bad: object) -> None:
    with pytest.raises(ValueError, match="source.lsn"):
        pg_version(0, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"source.sequence\[0\]"):
        pg_version(bad, 0)  # type: ignore[arg-type]


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_a_version_written_before_the_previous_commit_was_added_compares_by_its_lsn(
        old_lsn: int, after: int, lsn: int) -> None:
    """Old rows hold `0x01 || lsn`. A change streamed after one ranks above it: its `after` is at
    least that change's commit, which lies beyond that change's LSN; a replay of the old change
    itself (`after` < its LSN) ranks below and is judged stale, not a duplicate."""
    old = b"\x01" + old_lsn.to_bytes(8, "big")
    new = pg_version(after, lsn)
    assert (old < new) == (old_lsn <= after)


def test_sqlserver_lsn_is_ten_fixed_width_bytes() -> None:
    v = sqlserver_version("00000027:00000758:0005", "00000027:00000758:0003", 2)
    assert v == (
        b"\x02"
        + b"\x01"
        + bytes.fromhex("00000027000007580005")
        + b"\x01"
        + bytes.fromhex("00000027000007580003")
        + b"\x01"
        + (2 + 2**63).to_bytes(8, "big")
    )


def test_sqlserver_snapshot_nulls_sort_lowest() -> None:
    snapshot = sqlserver_version("00000027:00000758:0005", None, None)
    streamed = sqlserver_version("00000027:00000758:0005", "00000000:00000000:0001", 1)
    assert snapshot == b"\x02\x01" + bytes.fromhex("00000027000007580005") + b"\x00\x00"
    assert snapshot < streamed
    assert sqlserver_version(None, None, None) < snapshot


def test_sqlserver_orders_by_commit_then_change_then_serial() -> None:
    ordered = [
        sqlserver_version("00000027:00000758:0005", "00000027:00000750:0001", 1),
        sqlserver_version("00000027:00000758:0005", "00000027:00000750:0001", 2),
        sqlserver_version("00000027:00000758:0005", "00000027:00000751:0001", 1),
        sqlserver_version("00000027:00000759:0001", "00000027:00000740:0001", 1),
        sqlserver_version("00000028:00000000:0000", "00000000:00000000:0000", -5),
    ]
    assert sorted(ordered) == ordered
    assert len(set(ordered)) == len(ordered)


def test_sqlserver_hex_case_does_not_matter() -> None:
    assert sqlserver_version("0000002A:00000758:000B", None, None) == sqlserver_version(
        "0000002a:00000758:000b", None, None
    )


@pytest.mark.parametrize(
    "bad",
    ["00000027:00000758", "0000027:00000758:0005", "00000027:00000758:000G", "", 12345],
)
def test_sqlserver_rejects_malformed_lsn(bad: object) -> None:
    with pytest.raises(ValueError, match="commit_lsn"):
        sqlserver_version(bad, None, None)  # type: ignore[arg-type]


def test_negative_serial_and_write_time_sort_below_positive() -> None:
    lsn = "00000001:00000001:0001"
    assert sqlserver_version(lsn, lsn, -1) < sqlserver_version(lsn, lsn, 0)
    assert writetime_version(-(2**63)) < writetime_version(-1) < writetime_version(0)
    assert writetime_version(0) < writetime_version(1) < writetime_version(2**63 - 1)
    assert writetime_version(0) == b"\x03\x80" + b"\x00" * 7
    with pytest.raises(ValueError, match="ts_us"):
        writetime_version(2**63)


@given(st.lists(st.tuples(LSN_NUMBERS, LSN_NUMBERS, st.one_of(st.none(), INT64)), min_size=2))
def test_sqlserver_encoded_order_equals_tuple_order(versions: list[tuple]) -> None:
    def tuple_key(t: tuple) -> tuple:  # None lowest, then the value
        return tuple((x is not None, x if x is not None else 0) for x in t)

    def encode(t: tuple) -> bytes:
        commit, change, serial = t
        return sqlserver_version(
            None if commit is None else lsn_text(commit),
            None if change is None else lsn_text(change),
            serial,
        )

    assert sorted(versions, key=encode) == sorted(versions, key=tuple_key)
    for a, b in zip(versions, versions[1:], strict=False):
        assert (encode(a) == encode(b)) == (a == b)


PG_PAIRS = st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))


@given(PG_PAIRS, PG_PAIRS)
def test_pg_encoded_order_equals_pair_order(a: tuple[int, int], b: tuple[int, int]) -> None:
    assert (pg_version(*a) < pg_version(*b)) == (a < b)


@given(INT64, INT64)
def test_writetime_encoded_order_equals_int_order(a: int, b: int) -> None:
    assert (writetime_version(a) < writetime_version(b)) == (a < b)


def test_describe_version() -> None:
    assert describe_version(pg_version(123000, 123456)) == "pg:after=123000,lsn=123456"
    assert describe_version(b"\x01" + (123456).to_bytes(8, "big")) == "pg:lsn=123456"
    assert (
        describe_version(sqlserver_version("00000027:00000758:0005", "00000027:00000758:0003", 2))
        == "sqlserver:commit=00000027:00000758:0005,change=00000027:00000758:0003,serial=2"
    )
    assert (
        describe_version(sqlserver_version("00000027:00000758:0005", None, None))
        == "sqlserver:commit=00000027:00000758:0005,change=null,serial=null"
    )
    assert describe_version(writetime_version(-7)) == "writetime:ts_us=-7"
    assert describe_version(b"\x09\xab") == "unknown:09ab"
    assert describe_version(pg_version(0, 1)[:5]) == "unknown:0100000000"
    assert describe_version(b"") == "unknown:"
