"""Cassandra's cell versions of one row, and how changes merge into them: pure logic, no I/O.

A Cassandra-model row (formats/cells.py) is kept as its *meta*: the version of every cell, of
the row marker and of the newest deletion covering the row. The shard keeps it in RocksDB and the
target table in `_cdc_cells` (jsonb, the same form); a write lands only on the meta it was
decided against (`operators/cell_writer.py`).

The form is JSON lists, compared element by element (Python lists and jsonb arrays order alike):

    {"m": [ts, expiry], "d": ts, "c": {column: [ts, kind, expiry, tie]}}

- `m`: the row marker (an INSERT's), absent without one; `d`: the newest row, partition or range
  deletion covering the row, absent without one;
- `c`: per written column, its cell's rank: write time (µs), `kind` (0 a value, 1 a value with a
  TTL, 2 set to null), expiry (µs since the epoch, 0 for none) and `tie`, the hex of the value's
  Cassandra serialization (`tie_break`). Of two versions of a cell the greater rank is the one
  Cassandra keeps: the later write; at equal write times a null beats a TTL value beats a plain
  value, the later expiry wins, then the greater serialized value.
- Everything written at or before `d` is dropped: it can never be seen again, since `d` only
  grows. So a merge that changes nothing tells a stale or duplicate change.

`merge` is commutative, associative and idempotent: the row's meta depends neither on the order
changes arrive in nor on how often each arrives.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import orjson

Meta = dict[str, Any]
VALUE, EXPIRING, NULL = 0, 1, 2
MAX_TIE_BYTES = 32

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DATE = date(1970, 1, 1)


def serialized(value: Any) -> bytes:
    """The bytes Cassandra compares when two values of a cell tie on write time (its types'
    serializations; integers as 8 bytes, which orders the values of one integer column as their
    narrower forms do). Collections, tuples and UDTs (jsonb here) compare by their JSON."""
    if isinstance(value, bool):
        return bytes([value])
    if isinstance(value, int):
        return value.to_bytes(8, "big", signed=True)
    if isinstance(value, float):
        return struct.pack(">d", value)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, Decimal):
        return _decimal_bytes(value)
    if isinstance(value, datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=UTC)
        millis = (stamp - _EPOCH) // timedelta(milliseconds=1)
        return millis.to_bytes(8, "big", signed=True)
    if isinstance(value, date):
        return ((value - _EPOCH_DATE).days + (1 << 31)).to_bytes(4, "big")
    if isinstance(value, time):
        nanos = (((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000
                 + value.microsecond) * 1000
        return nanos.to_bytes(8, "big", signed=True)
    if isinstance(value, uuid.UUID):
        return value.bytes
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value.packed
    return orjson.dumps(value, default=str, option=orjson.OPT_SORT_KEYS)


def _decimal_bytes(value: Decimal) -> bytes:
    """DecimalType: the scale (4 bytes) then the unscaled value, shortest two's complement."""
    sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):  # NaN, infinity: no Cassandra decimal has them
        return str(value).encode()
    unscaled = int("".join(map(str, digits)) or "0")
    if sign:
        unscaled = -unscaled
    size = (unscaled + (unscaled < 0)).bit_length() // 8 + 1
    return (-exponent).to_bytes(4, "big", signed=True) + unscaled.to_bytes(size, "big",
                                                                          signed=True)


def tie_break(value: Any) -> str:
    """A value's tie-break key: the hex of its serialization, which orders as the bytes do. A
    value over `MAX_TIE_BYTES` keeps that many bytes and a digest of the rest, so ties stay
    independent of arrival order; two such values sharing their first 32 bytes are then
    ordered by digest rather than as Cassandra would."""
    raw = serialized(value)
    if len(raw) <= MAX_TIE_BYTES:
        return raw.hex()
    return raw[:MAX_TIE_BYTES].hex() + hashlib.blake2b(raw, digest_size=8).hexdigest()


def cell_rank(ts_us: int, value: Any, expires_us: int | None) -> list[Any]:
    """The rank of a cell written at `ts_us` with `value` (None: set to null)."""
    if value is None:
        return [ts_us, NULL, 0, ""]
    if expires_us:
        return [ts_us, EXPIRING, expires_us, tie_break(value)]
    return [ts_us, VALUE, 0, tie_break(value)]


def write_delta(ts_us: int, marker: bool, cells: dict[str, Any],
                expires_us: dict[str, int], marker_expires_us: int | None = None) -> Meta:
    """The meta of one write: its marker (an INSERT, which expires with an INSERT's TTL) and its
    cells."""
    delta: Meta = {"c": {col: cell_rank(ts_us, v, expires_us.get(col))
                         for col, v in cells.items()}}
    if marker:
        delta["m"] = [ts_us, marker_expires_us or 0]
    return delta


def deletion_delta(ts_us: int) -> Meta:
    """The meta of a deletion at `ts_us` covering a row."""
    return {"d": ts_us, "c": {}}


def merge(a: Meta | None, b: Meta | None) -> Meta:
    """The meta holding both: per item the greater version, less what the deletion covers."""
    if a is None:
        return _shadowed(b or {"c": {}})
    if b is None:
        return _shadowed(a)
    out: Meta = {"c": {}}
    deleted = max(a.get("d", -1), b.get("d", -1))
    if deleted >= 0:
        out["d"] = deleted
    marker = max(a.get("m", [-1]), b.get("m", [-1]))
    if marker[0] > deleted:
        out["m"] = marker
    cells, other = a["c"], b["c"]
    merged = out["c"]
    for col in cells.keys() | other.keys():
        rank = max(cells.get(col, [-1]), other.get(col, [-1]))
        if rank[0] > deleted:
            merged[col] = rank
    return out


def _shadowed(meta: Meta) -> Meta:
    deleted = meta.get("d", -1)
    out: Meta = {"c": {col: r for col, r in meta["c"].items() if r[0] > deleted}}
    if deleted >= 0:
        out["d"] = deleted
    if meta.get("m", [-1])[0] > deleted:
        out["m"] = meta["m"]
    return out


def with_deletion(meta: Meta | None, ts_us: int | None) -> Meta | None:
    """`meta` under a deletion at `ts_us` too (None: no deletion)."""
    if ts_us is None:
        return meta
    return merge(meta, deletion_delta(ts_us))


def contains(meta: Meta, delta: Meta) -> bool:
    """Whether every item of `delta` is in `meta` as it is: the change was applied before."""
    if "d" in delta and meta.get("d") != delta["d"]:
        return False
    if "m" in delta and meta.get("m") != delta["m"]:
        return False
    cells = meta["c"]
    return all(cells.get(col) == rank for col, rank in delta["c"].items())


def cell_live(meta: Meta, column: str, now_us: int) -> bool:
    """Whether `column` reads as a value at `now_us` (not null, shadowed or expired)."""
    rank = meta["c"].get(column)
    return rank is not None and rank[1] != NULL and (rank[2] == 0 or now_us < rank[2])


def row_alive(meta: Meta, now_us: int) -> bool:
    """Whether the row exists at `now_us`: a live marker or a live non-null cell."""
    marker = meta.get("m")
    if marker is not None and (marker[1] == 0 or now_us < marker[1]):
        return True
    return any(cell_live(meta, col, now_us) for col in meta["c"])


def next_expiry(meta: Meta, now_us: int) -> int | None:
    """The earliest expiry after `now_us` of a live cell or marker: when the row next changes
    on its own (`_cdc_expires_at`)."""
    found = [r[2] for r in meta["c"].values() if r[1] == EXPIRING and r[2] > now_us]
    marker = meta.get("m")
    if marker is not None and marker[1] > now_us:
        found.append(marker[1])
    return min(found, default=None)


def newest_write(meta: Meta) -> int:
    """The latest write time the meta holds (its deletion's included): `_cdc_version`'s time."""
    times = [meta.get("d", 0), meta.get("m", [0])[0]]
    times += (r[0] for r in meta["c"].values())
    return max(times)
