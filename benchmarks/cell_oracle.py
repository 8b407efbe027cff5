"""Cassandra's cell reconciliation, written independently of the replicator, as the benchmarks'
and tests' oracle for ScyllaDB and Cassandra sources: a set of change events -> the visible rows.

Imports nothing from `operators/`, `formats/` or `schemas/` (standard library only), so the
product can be checked against it instead of against itself.

Rules, as Apache Cassandra 5.0 applies them (ScyllaDB applies the same since scylladb#14182):

- Every written cell carries its write time (`ts_us`). Of two versions of one cell the higher
  write time wins (`Cells.resolveRegular`). At equal write times a tombstone (a cell set to NULL)
  beats an expiring cell, which beats a plain live cell (CASSANDRA-14592: an expiring cell is a
  future tombstone); two expiring cells: the later expiry wins; then the greater value wins,
  comparing the serialized values as unsigned bytes (`Cells.compareValues` ->
  `ByteBufferAccessor.compareByteBufferTo` -> `ByteBufferUtil.compareUnsigned`). `cell_rank`
  orders versions by exactly these rules and `value_bytes` is the serialization they compare.
- An INSERT also writes a row marker (the row's primary-key `LivenessInfo`); an UPDATE does not.
  Markers reconcile like cells without a value (`LivenessInfo.supersedes`: write time, then an
  expiring marker over a plain one, then the later expiry): `marker_rank`.
- A row delete, a partition delete and a range delete are deletion times; each shadows every
  cell and marker it covers whose write time is at or before it (`DeletionTime.deletes`:
  `timestamp <= markedForDeleteAt`), so a delete wins a tie. A row is covered by its own row
  deletion, its partition's deletion and every range tombstone whose bounds contain its
  clustering; the newest of them applies.
- A row is visible while its marker or any of its non-null cells survives that deletion and has
  not expired (`Row.hasLiveData`: the primary-key liveness or any live cell); a shadowed,
  tombstoned or expired cell reads as NULL. An expiring cell or marker is dead at and after its
  expiry (`isLive(now)` is `now < localDeletionTime`).

Reconciliation picks, per cell, marker and deletion, the maximum under a total order, so the
result depends neither on the order events arrive in nor on how often each arrives.

Simplifications, stated so that callers stay inside them: expiries are given in µs (Cassandra
keeps seconds); a tombstone's own local deletion time is not modelled (it decides nothing
visible); counters, collections, static columns and materialized views are out of scope;
clustering values compare by Python's order, which is Cassandra's for ascending int, bigint,
text, blob and timestamp clustering columns (a caller with DESC or other clustering types
passes values whose Python order is the table's).
"""

from __future__ import annotations

import ipaddress
import struct
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal

Key = tuple[Any, ...]
Kind = Literal["write", "row_delete", "partition_delete", "range_delete"]
Rows = dict[str, dict[Key, dict[str, Any]]]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DATE = date(1970, 1, 1)


@dataclass(frozen=True, slots=True)
class Bound:
    """One end of a range delete: a clustering prefix, inclusive or not."""

    prefix: Key
    inclusive: bool = True


@dataclass(frozen=True, slots=True)
class Event:
    """One change as the source applied it.

    key: partition key then clustering values (none in a table without clustering columns);
        for `partition_delete` and `range_delete` the partition key alone.
        `partition_key_len` says where the partition key ends.
    write: `marker` (an INSERT) and `cells` {column: value, or None = set to NULL}; `expiries`
        {column: expiry µs} for cells written with a TTL, `marker_expiry_us` for the marker's.
    range_delete: rows of the partition whose clustering lies within `range_start`..`range_end`
        (None = unbounded on that side).
    """

    table: str
    key: Key
    partition_key_len: int
    kind: Kind
    ts_us: int
    marker: bool = False
    cells: Mapping[str, Any] = field(default_factory=dict)
    expiries: Mapping[str, int] = field(default_factory=dict)
    marker_expiry_us: int | None = None
    range_start: Bound | None = None
    range_end: Bound | None = None

    def __post_init__(self) -> None:
        whole_partition = self.kind in ("partition_delete", "range_delete")
        if len(self.key) < self.partition_key_len or (
                whole_partition and len(self.key) != self.partition_key_len):
            raise ValueError(f"{self.kind}: key {self.key!r} vs partition key length "
                             f"{self.partition_key_len}")
        if self.kind != "write" and (self.cells or self.marker):
            raise ValueError(f"{self.kind} carries no cells or marker")
        if self.expiries and set(self.expiries) - set(self.cells):
            raise ValueError("an expiry for a column the event does not write")


@dataclass(frozen=True, slots=True)
class CellVersion:
    """One written version of a cell; `value` None is a tombstone (it never expires)."""

    ts_us: int
    value: Any
    expiry_us: int | None = None


@dataclass(frozen=True, slots=True)
class MarkerVersion:
    """One written row marker."""

    ts_us: int
    expiry_us: int | None = None


# --------------------------------------------------------------------------- the order rules


def value_bytes(value: Any) -> bytes:
    """Cassandra's serialization of a value, the bytes a write-time tie is decided on.

    bool -> BooleanType (1 byte); int -> 8-byte two's complement (bigint; for two values of one
    int/smallint/tinyint column it orders the same as their narrower form, sign extension keeping
    the unsigned byte order); float -> IEEE 754 double (same order as a float column's 4 bytes);
    str -> UTF-8 (text/ascii/varchar); bytes -> as is (blob); Decimal -> DecimalType (4-byte
    scale, then the unscaled value's minimal two's complement); datetime -> timestamp (8-byte ms
    since the epoch, naive = UTC); date -> SimpleDateType (days + 2**31, unsigned 4 bytes);
    time -> TimeType (8-byte ns of day); UUID -> its 16 bytes; IP address -> packed.
    """
    if isinstance(value, bool):
        return b"\x01" if value else b"\x00"
    if isinstance(value, int):
        return value.to_bytes(8, "big", signed=True)
    if isinstance(value, float):
        return struct.pack(">d", value)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return value
    if isinstance(value, Decimal):
        sign, digits, exponent = value.as_tuple()
        if not isinstance(exponent, int):
            raise ValueError(f"{value} has no Cassandra serialization")
        unscaled = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
        length = (unscaled + (unscaled < 0)).bit_length() // 8 + 1
        return (-exponent).to_bytes(4, "big", signed=True) + unscaled.to_bytes(
            length, "big", signed=True)
    if isinstance(value, datetime):
        if value.microsecond % 1000:
            raise ValueError(f"{value}: a timestamp holds milliseconds")
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return ((aware - _EPOCH) // timedelta(milliseconds=1)).to_bytes(8, "big", signed=True)
    if isinstance(value, date):
        return ((value - _EPOCH_DATE).days + 2**31).to_bytes(4, "big")
    if isinstance(value, time):
        micros = ((value.hour * 60 + value.minute) * 60 + value.second) * 10**6
        return ((micros + value.microsecond) * 1000).to_bytes(8, "big", signed=True)
    if isinstance(value, uuid.UUID):
        return value.bytes
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value.packed
    raise TypeError(f"no Cassandra serialization for {type(value).__name__}")


def cell_rank(cell: CellVersion) -> tuple[int, int, int, bytes]:
    """Sort key of cell versions: the higher one is what Cassandra keeps (see module doc)."""
    if cell.value is None:
        return (cell.ts_us, 2, 0, b"")
    if cell.expiry_us is not None:
        return (cell.ts_us, 1, cell.expiry_us, value_bytes(cell.value))
    return (cell.ts_us, 0, 0, value_bytes(cell.value))


def cell_wins(a: CellVersion, b: CellVersion) -> bool:
    """Whether `a` is kept over `b` (True for equal versions)."""
    return cell_rank(a) >= cell_rank(b)


def marker_rank(marker: MarkerVersion) -> tuple[int, int, int]:
    """Sort key of row markers (`LivenessInfo.supersedes`)."""
    if marker.expiry_us is None:
        return (marker.ts_us, 0, 0)
    return (marker.ts_us, 1, marker.expiry_us)


def _covers(bound: Bound | None, clustering: Key, start: bool) -> bool:
    if bound is None:
        return True
    head = clustering[: len(bound.prefix)]
    if head == bound.prefix:
        return bound.inclusive
    return head > bound.prefix if start else head < bound.prefix


# --------------------------------------------------------------------------- reconciliation


@dataclass
class Reconciled:
    """The reconciled state of a set of events: the winning version of every cell, marker and
    deletion. `add` is commutative and idempotent."""

    cells: dict[tuple[str, Key, str], CellVersion] = field(default_factory=dict)
    markers: dict[tuple[str, Key], MarkerVersion] = field(default_factory=dict)
    row_deletes: dict[tuple[str, Key], int] = field(default_factory=dict)
    partition_deletes: dict[tuple[str, Key], int] = field(default_factory=dict)
    range_deletes: dict[tuple[str, Key], dict[tuple[Bound | None, Bound | None], int]] = field(
        default_factory=dict)
    partition_key_len: dict[str, int] = field(default_factory=dict)

    def add(self, ev: Event) -> None:
        known = self.partition_key_len.setdefault(ev.table, ev.partition_key_len)
        if known != ev.partition_key_len:
            raise ValueError(f"{ev.table}: partition key length {ev.partition_key_len} after "
                             f"{known}")
        ref = (ev.table, ev.key)
        if ev.kind == "write":
            if ev.marker:
                new = MarkerVersion(ev.ts_us, ev.marker_expiry_us)
                old = self.markers.get(ref)
                if old is None or marker_rank(new) > marker_rank(old):
                    self.markers[ref] = new
            for col, value in ev.cells.items():
                cell = CellVersion(ev.ts_us, value, None if value is None else
                                   ev.expiries.get(col))
                prev = self.cells.get((ev.table, ev.key, col))
                if prev is None or prev.ts_us < cell.ts_us or (
                        prev.ts_us == cell.ts_us and not cell_wins(prev, cell)):
                    self.cells[(ev.table, ev.key, col)] = cell
        elif ev.kind == "row_delete":
            self.row_deletes[ref] = max(ev.ts_us, self.row_deletes.get(ref, ev.ts_us))
        elif ev.kind == "partition_delete":
            self.partition_deletes[ref] = max(ev.ts_us, self.partition_deletes.get(ref, ev.ts_us))
        else:
            ranges = self.range_deletes.setdefault(ref, {})
            bounds = (ev.range_start, ev.range_end)
            ranges[bounds] = max(ev.ts_us, ranges.get(bounds, ev.ts_us))

    def deletion_us(self, table: str, key: Key) -> int | None:
        """Write time of the newest deletion covering a row (None: none covers it)."""
        pk_len = self.partition_key_len[table]
        partition, clustering = key[:pk_len], key[pk_len:]
        found = [self.row_deletes.get((table, key)),
                 self.partition_deletes.get((table, partition))]
        for (start, end), ts in self.range_deletes.get((table, partition), {}).items():
            if _covers(start, clustering, True) and _covers(end, clustering, False):
                found.append(ts)
        return max((t for t in found if t is not None), default=None)

    def visible_rows(self, now_us: int) -> Rows:
        """{table: {key: {column: value}}} of the rows visible at `now_us`; each row holds its
        live non-null cells (a column it lacks reads as NULL; a row of only a marker is {})."""
        columns: dict[tuple[str, Key], dict[str, CellVersion]] = {}
        for (table, key, col), cell in self.cells.items():
            columns.setdefault((table, key), {})[col] = cell
        out: Rows = {}
        for ref in columns.keys() | self.markers.keys():
            deleted = self.deletion_us(*ref)

            def alive(ts_us: int, expiry_us: int | None, deleted: int | None = deleted) -> bool:
                return ((deleted is None or ts_us > deleted)
                        and (expiry_us is None or now_us < expiry_us))

            row = {col: c.value for col, c in columns.get(ref, {}).items()
                   if c.value is not None and alive(c.ts_us, c.expiry_us)}
            marker = self.markers.get(ref)
            if row or (marker is not None and alive(marker.ts_us, marker.expiry_us)):
                out.setdefault(ref[0], {})[ref[1]] = row
        return out


def reconcile(events: Iterable[Event]) -> Reconciled:
    """The reconciled state of `events`, whatever their order and repetitions."""
    state = Reconciled()
    for ev in events:
        state.add(ev)
    return state


def visible_rows(events: Iterable[Event], now_us: int) -> Rows:
    """The rows a read at `now_us` returns after `events` (see `Reconciled.visible_rows`)."""
    return reconcile(events).visible_rows(now_us)
