"""The shard's decisions for Cassandra-model tables (formats/cells.py): cell changes, partition
and range deletes and expiries → one write per row, with outcomes. Pure logic, no I/O.

Each row's cell versions (`operators/cell_meta.py`) are merged with the batch's changes. A row
then is written where it belongs: in the target table while it is alive, else its versions go to
`cdc.cell_tombstones`, where they keep fencing late writes. Every write names the versions it was
decided against (`expected`, and where they are: `Place`), and lands only on them
(`operators/cell_writer.py`).

Outcomes, per change: applied when it changed the row's versions; duplicate when every version
it carries is already there; stale otherwise (every cell it wrote lost to a newer version or a
deletion).
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any

import orjson

from formats.cells import CellChange, CellKind, RangeBound
from operators import cell_meta
from operators.cell_meta import Meta
from operators.events import TableName
from operators.keys import state_key
from operators.lww import StaleEvent
from operators.versions import writetime_version

STALE_CELLS = "older than the row's cell versions or a deletion covering it"
STALE_DELETION = "older than a deletion already applied"


class Place(Enum):
    """Where a row's versions are in Postgres."""

    NONE = "N"  # nowhere: the row was never seen
    TABLE = "L"  # in the target table (`_cdc_cells`): the row was alive when last written
    TOMBSTONES = "T"  # in `cdc.cell_tombstones`: the row was dead when last written


_STATE = b"C"


def encode_cell_state(place: Place, meta: Meta) -> bytes:
    """A cell row's RocksDB value: a marker byte, its place, its versions."""
    return _STATE + place.value.encode() + orjson.dumps(meta)


def decode_cell_state(raw: bytes | None) -> tuple[Place, Meta | None]:
    if raw is None:
        return Place.NONE, None
    if raw[:1] != _STATE:
        raise ValueError("not a cell row's state (is the table also written by a row source?)")
    return Place(raw[1:2].decode()), orjson.loads(raw[2:])


@dataclass(frozen=True, slots=True)
class RangeDelete:
    """A partition deletion (`start` and `end` None) or a range deletion of one partition."""

    table: TableName
    partition: tuple[Any, ...]
    start: RangeBound | None
    end: RangeBound | None
    ts_us: int

    @classmethod
    def of(cls, change: CellChange) -> RangeDelete:
        return cls(change.table, change.partition_key, change.range_start, change.range_end,
                   change.ts_us)

    @property
    def bounds(self) -> tuple[Any, ...]:
        """What tells two deletions apart, less their time."""
        return (self.partition, self.start, self.end)

    def to_json(self) -> bytes:
        """The deletion less its time, as `cdc.cell_range_deletes.bounds` keeps it: values
        tagged with their type, so that they read back as they were (equal deletions give equal
        bytes)."""
        def bound(b: RangeBound | None) -> Any:
            return None if b is None else [[tagged(v) for v in b.values], b.inclusive]

        return orjson.dumps([list(self.table), [tagged(v) for v in self.partition],
                             bound(self.start), bound(self.end)])

    @classmethod
    def from_json(cls, raw: bytes, ts_us: int) -> RangeDelete:
        table, partition, start, end = orjson.loads(raw)

        def bound(b: Any) -> RangeBound | None:
            return None if b is None else RangeBound(tuple(untagged(v) for v in b[0]), b[1])

        return cls(TableName(*table), tuple(untagged(v) for v in partition), bound(start),
                   bound(end), ts_us)

    def covers(self, key: tuple[Any, ...]) -> bool:
        """Whether the row of primary key `key` lies in this deletion."""
        size = len(self.partition)
        if key[:size] != self.partition:
            return False
        clustering = key[size:]
        return _within(self.start, clustering, True) and _within(self.end, clustering, False)


_TAGS: dict[type, tuple[str, Callable[[Any], Any]]] = {
    bool: ("b", bool), int: ("i", int), float: ("f", float), str: ("s", str),
    bytes: ("x", bytes.hex), Decimal: ("d", str), datetime: ("t", datetime.isoformat),
    date: ("D", date.isoformat), time: ("T", time.isoformat), uuid.UUID: ("u", str),
    timedelta: ("td", lambda v: v // timedelta(microseconds=1)),
    ipaddress.IPv4Address: ("ip", str), ipaddress.IPv6Address: ("ip", str),
}
_UNTAG: dict[str, Callable[[Any], Any]] = {
    "b": bool, "i": int, "f": float, "s": str, "x": bytes.fromhex, "d": Decimal,
    "t": datetime.fromisoformat, "D": date.fromisoformat, "T": time.fromisoformat,
    "u": uuid.UUID, "td": lambda v: timedelta(microseconds=v), "ip": ipaddress.ip_address,
}


def tagged(value: Any) -> list[Any]:
    """A key value as `[type tag, JSON value]`; other types (frozen collections) as JSON."""
    tag, plain = _TAGS.get(type(value), ("j", lambda v: v))
    return [tag, plain(value)]


def untagged(item: list[Any]) -> Any:
    tag, value = item
    return value if tag == "j" else _UNTAG[tag](value)


class Deletions:
    """Partition and range deletions, found by the table and partition they delete: a row's
    lookup costs the deletions of its own partition only."""

    def __init__(self, deletes: Iterable[RangeDelete] = ()) -> None:
        self._by_table: dict[str, dict[int, dict[tuple[Any, ...], list[RangeDelete]]]] = {}
        for delete in deletes:
            self.add(delete)

    def add(self, delete: RangeDelete) -> None:
        sizes = self._by_table.setdefault(str(delete.table), {})
        sizes.setdefault(len(delete.partition), {}).setdefault(delete.partition, []).append(delete)

    def holds(self, table: TableName) -> bool:
        """Whether a deletion of `table` is kept."""
        return bool(self._by_table.get(str(table)))

    def _of_partition(self, table: str, key: tuple[Any, ...]) -> Iterator[RangeDelete]:
        for size, partitions in self._by_table.get(table, {}).items():
            yield from partitions.get(key[:size], ())

    def covering(self, table: TableName, key: tuple[Any, ...]) -> int | None:
        """The newest deletion's time that covers the row of `key`, if any."""
        return max((d.ts_us for d in self._of_partition(str(table), key) if d.covers(key)),
                   default=None)

    def same_bounds(self, delete: RangeDelete) -> list[int]:
        """The times of the deletions of exactly `delete`'s rows."""
        return [d.ts_us for d in self._of_partition(str(delete.table), delete.partition)
                if d.bounds == delete.bounds]


def _within(bound: RangeBound | None, clustering: tuple[Any, ...], start: bool) -> bool:
    if bound is None:
        return True
    head = clustering[: len(bound.values)]
    if head == bound.values:
        return bound.inclusive
    try:
        return head > bound.values if start else head < bound.values
    except TypeError:  # a null clustering value (a row written without it): outside any range
        return False


@dataclass(slots=True)
class CellWrite:
    """The one write a batch makes for one row."""

    table: TableName
    key_columns: tuple[str, ...]
    key: tuple[Any, ...]
    row_id: bytes
    place: Place
    expected: Meta | None
    meta: Meta
    alive: bool
    values: dict[str, Any]
    """Columns to set: a winning cell's value, None for a cell that no longer reads."""
    expires_us: int | None


@dataclass(slots=True)
class CellDecision:
    writes: list[CellWrite] = field(default_factory=list)
    deletes: list[RangeDelete] = field(default_factory=list)
    stale: list[StaleEvent] = field(default_factory=list)
    states: list[tuple[bytes, bytes]] = field(default_factory=list)
    replaced: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0
    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)


@dataclass(slots=True)
class _Row:
    table: TableName
    key_columns: tuple[str, ...]
    key: tuple[Any, ...]
    place: Place
    stored: Meta | None
    meta: Meta | None
    won: dict[str, tuple[list[Any], Any]] = field(default_factory=dict)


def decide_cells(changes: list[CellChange], revisit: Iterable[tuple[TableName, tuple[str, ...],
                                                                     tuple[Any, ...], bytes]],
                 stored: Callable[[list[bytes]], list[bytes | None]],
                 known_deletes: Deletions, now_us: int,
                 counts_here: Callable[[CellChange], bool] = lambda change: True,
                 ) -> CellDecision:
    """Decide `changes` (in arrival order) and the rows of `revisit` (table, key columns, key,
    row id: rows a deletion of the batch covers, or with a cell past its expiry) for one shard.
    `stored(row ids)`: their RocksDB values; `known_deletes`: the partition and range deletions
    committed before; `counts_here(deletion)`: whether this shard counts and audits a partition
    or range deletion, which every shard receives (one of them does)."""
    decision = CellDecision()
    new_deletes = _new_deletes([c for c in changes if not c.row_id], known_deletes, decision,
                               counts_here)
    row_changes = [c for c in changes if c.row_id]
    ids = list(dict.fromkeys([*(c.row_id for c in row_changes), *(r[3] for r in revisit)]))
    rows: dict[bytes, _Row] = {}
    raw = dict(zip(ids, stored(ids), strict=True))

    def row_of(table: TableName, key_columns: tuple[str, ...], key: tuple[Any, ...],
               row_id: bytes) -> _Row:
        row = rows.get(row_id)
        if row is None:
            place, meta = decode_cell_state(raw[row_id])
            covered = max((t for t in (known_deletes.covering(table, key),
                                        new_deletes.covering(table, key)) if t is not None),
                          default=None)
            row = rows[row_id] = _Row(table, key_columns, key, place, meta,
                                      cell_meta.with_deletion(meta, covered))
        return row

    for table, key_columns, key, row_id in revisit:
        row_of(table, key_columns, key, row_id)
    for change in row_changes:
        row = row_of(change.table, change.key_columns, change.key, change.row_id)
        if change.kind is CellKind.ROW_DELETE:
            delta = cell_meta.deletion_delta(change.ts_us)
        else:
            delta = cell_meta.write_delta(change.ts_us, change.row_marker, change.cells,
                                          change.expires_us, change.marker_expires_us)
        before = row.meta
        merged = cell_meta.merge(before, delta)
        op = "delete" if change.kind is CellKind.ROW_DELETE else "write"
        if before is not None and merged == before:
            duplicate = cell_meta.contains(before, delta)
            _count(decision, change.table, op, "duplicate" if duplicate else "stale")
            if duplicate:
                decision.duplicates += 1
            else:
                decision.stale.append(_stale(change, before, STALE_CELLS))
            continue
        _count(decision, change.table, op, "applied")
        decision.applied += 1
        row.meta = merged
        for col, value in change.cells.items():
            rank = merged["c"].get(col)
            if rank is not None and rank == delta["c"][col]:
                row.won[col] = (rank, value)
    for row_id, row in rows.items():
        _settle(decision, row_id, row, raw[row_id], now_us)
    return decision


def _new_deletes(changes: list[CellChange], known: Deletions, decision: CellDecision,
                 counts_here: Callable[[CellChange], bool]) -> Deletions:
    """The batch's partition and range deletions that are newer than those known."""
    new = Deletions()
    for change in changes:
        delete = RangeDelete.of(change)
        op = change.kind.value
        same = [*known.same_bounds(delete), *new.same_bounds(delete)]
        newest = max(same, default=-1)
        counted = counts_here(change)
        if newest >= delete.ts_us:
            outcome = "duplicate" if delete.ts_us in same else "stale"
            if not counted:
                continue
            _count(decision, change.table, op, outcome)
            if outcome == "duplicate":
                decision.duplicates += 1
            else:
                decision.stale.append(StaleEvent(  # keyed by the partition it deletes
                    change.topic, change.partition, change.offset, change.table,
                    state_key(change.table, change.partition_key),
                    writetime_version(change.ts_us), writetime_version(newest),
                    STALE_DELETION))
            continue
        if counted:
            _count(decision, change.table, op, "applied")
            decision.applied += 1
        new.add(delete)
        decision.deletes.append(delete)
    return new


def _settle(decision: CellDecision, row_id: bytes, row: _Row, raw: bytes | None,
            now_us: int) -> None:
    """The write of one row whose versions the batch may have changed."""
    meta = row.meta
    if meta is None or (meta == row.stored and not _expired_in_table(row, now_us)):
        return
    alive = cell_meta.row_alive(meta, now_us)
    values: dict[str, Any] = {}
    stored_cells = row.stored["c"] if row.stored is not None else {}
    for col in stored_cells.keys() | row.won.keys():
        live = cell_meta.cell_live(meta, col, now_us)
        won = row.won.get(col)
        if won is not None and live and meta["c"][col] == won[0]:
            values[col] = won[1]
        elif not live:
            values[col] = None
    place = Place.TABLE if alive else Place.TOMBSTONES
    decision.writes.append(CellWrite(
        row.table, row.key_columns, row.key, row_id, row.place, row.stored, meta, alive, values,
        cell_meta.next_expiry(meta, now_us)))
    decision.states.append((row_id, encode_cell_state(place, meta)))
    decision.replaced.append((row_id, raw))


def _expired_in_table(row: _Row, now_us: int) -> bool:
    """A row in the target table with a cell (or the row) past its expiry: it is rewritten."""
    if row.place is not Place.TABLE or row.stored is None:
        return False
    expiry = cell_meta.next_expiry(row.stored, 0)
    return expiry is not None and expiry <= now_us


def _stale(change: CellChange, before: Meta, reason: str) -> StaleEvent:
    return StaleEvent(change.topic, change.partition, change.offset, change.table, change.row_id,
                      writetime_version(change.ts_us),
                      writetime_version(cell_meta.newest_write(before)), reason)


def _count(decision: CellDecision, table: TableName, op: str, outcome: str) -> None:
    key = (str(table), op, outcome)
    decision.counts[key] = decision.counts.get(key, 0) + 1
