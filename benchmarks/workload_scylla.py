"""Workload generator for the `scylla` scenario: ScyllaDB CDC source connector messages in the
legacy format, JSON with schemas, and the rows Cassandra's cell semantics make of them
(`benchmarks/cell_oracle.py`).

Independent of the replicator (imports nothing from `operators/`, `formats/` or `schemas/`).
Messages have exactly the shape of `tests/fixtures/scylla/legacy_*.json` (connector v2.0.3):
key struct, `after` cells `{"value": x}` (set), `{"value": null}` (set to NULL), `null`
(untouched), a delete's `before` holding the key and null cells, `source.ts_us` = the write
time, and a Kafka tombstone after every delete.

Tables (keyspace `spec.keyspace`), both with the same six regular columns, typed like the
fixtures' columns of those names (`REGULAR`):
    orders (customer_id int, order_id int, ..., PRIMARY KEY (customer_id, order_id))
    carts (cart_id int PRIMARY KEY, ...)
Statements: INSERT (a row marker, most columns, some NULL), partial UPDATE (1-3 columns, some
set to NULL; on an absent row it creates the row without a marker), row DELETE on `orders`,
partition DELETE on `carts` (the connector drops partition deletes of tables with a clustering
key and every range delete, so none is generated), and, at `ties_pct`, a statement with the same
write time as the row's previous one (USING TIMESTAMP), which Cassandra breaks as the oracle
does: a delete wins, else the greater serialized value. A tie never writes `amount`: the
legacy message gives a decimal as a plain string, so its serialized order (scale first) cannot
be told from the message.

Delivery. The connector reads each vnode's CDC streams in `cdc$time` order in one task per
vnode, and saves its position only every `offset.flush.interval.ms` (at-least-once). So:
- a row's changes keep their write-time order within one read, while the rows of different
  streams interleave freely (modelled by a random delivery lag per partition key, up to
  `stream_lag_us`);
- a restart re-delivers every change since the saved position: `replay_pct` of the messages
  are sent again, in runs of up to `replay_run` consecutive messages of a Kafka partition, up
  to `replay_window` messages later, with a later processing time (top-level `ts_ms`);
- `out_of_order_pct` further swaps a change with the next change of the same row, which the
  connector itself does not do: the oracle's result does not depend on order, so the
  replicator must not either.
A row lives in one Kafka partition (crc32 of its key payload, as `benchmarks/workload.py`
does); the rows of one Scylla partition spread over Kafka partitions, as the connector's
per-row keys make them. TTLs are not generated: the legacy message carries none.

`ScyllaWorkload` offers what `benchmarks.workload.produce` uses, so it produces it unchanged.
"""

from __future__ import annotations

import gc
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import orjson

from benchmarks.cell_oracle import Event, Key, Reconciled, Rows, reconcile
from benchmarks.workload import BASE_TS_US, EPOCH

CONNECTOR_VERSION = "2.0.3"
PROCESSING_DELAY_US = 20_000  # connector time after the write: the top-level ts_ms
# Regular columns: name -> CQL type; the names and types of the fixtures' `orders` columns.
REGULAR = {"amount": "decimal", "big": "bigint", "flag": "boolean", "note": "text",
           "placed_at": "timestamp", "score": "double"}
KEYS = {"orders": ("customer_id", "order_id"), "carts": ("cart_id",)}
PARTITION_KEY_LEN = 1  # both tables: customer_id / cart_id
_CELL_TYPE: dict[str, dict[str, Any]] = {
    "decimal": {"type": "string"},
    "bigint": {"type": "int64"},
    "boolean": {"type": "boolean"},
    "text": {"type": "string"},
    "timestamp": {"type": "int64", "name": "org.apache.kafka.connect.data.Timestamp",
                  "version": 1},
    "double": {"type": "double"},
}


@dataclass(frozen=True)
class ScyllaSpec:
    """What to generate. Percentages are of statements, except where noted."""

    events: int = 10_000  # CQL statements, one message each (plus tombstones and replays)
    keys: int = 1_000  # rows: two in three in `orders`, one in three in `carts`
    orders_per_customer: int = 4  # rows per `orders` partition
    partitions: int = 4
    deletes_pct: float = 8.0  # of statements on a live row
    reinsert_pct: float = 5.0  # of statements on a live row: INSERT again
    upsert_pct: float = 10.0  # of statements on an absent row: UPDATE instead of INSERT
    insert_column_pct: float = 85.0  # chance that an INSERT names a column
    null_pct: float = 5.0  # chance that a written column is set to NULL
    ties_pct: float = 1.0
    stream_lag_us: int = 5_000
    replay_pct: float = 2.0  # of messages
    replay_run: int = 8
    replay_window: int = 1_000
    out_of_order_pct: float = 1.0
    seed: int = 1
    topic_prefix: str = "bench"
    keyspace: str = "shop"

    def topic(self, table: str) -> str:
        """The connector's topic `<prefix>.<keyspace>.<table>`."""
        return f"{self.topic_prefix}.{self.keyspace}.{table}"


Unit = tuple[Event, int]  # a statement and the connector's processing time (µs) of its message
Entry = tuple[Event, bool, int]  # one Kafka message: (statement, is_tombstone, processing µs)


@dataclass
class ScyllaWorkload:
    """Messages per (topic, partition) in production order (offset = index), the statements
    they carry, and what the oracle makes of them.

    rows: table -> key -> {column: value} of the visible rows, key and all regular columns
        (str, int, Decimal, bool, naive UTC datetime, float, or None).
    state: the reconciled cells, markers and deletions (winning write time of every cell).
    """

    spec: ScyllaSpec
    arrivals: dict[tuple[str, int], list[Entry]]
    statements: list[Event]
    rows: Rows
    state: Reconciled
    stats: dict[str, int]

    @property
    def topics(self) -> list[str]:
        return [self.spec.topic(t) for t in KEYS]

    @property
    def message_count(self) -> int:
        return sum(len(v) for v in self.arrivals.values())

    def messages(self, topic: str, partition: int) -> list[tuple[bytes, bytes | None]]:
        """(key, value) bytes of one topic partition; the value is None for tombstones."""
        return list(self.iter_partition(topic, partition))

    def iter_partition(self, topic: str, partition: int, source_time: Any = None,
                       ) -> Iterator[tuple[bytes, bytes | None]]:
        """`source_time` must be None: the write times are the cells' versions the oracle
        reconciled, so they cannot be restamped as a live source's."""
        if source_time is not None:
            raise ValueError("scylla workloads carry their own write times")
        enc = _encoder(self.spec)
        for ev, tomb, processing_us in self.arrivals.get((topic, partition), ()):
            yield enc.key(ev), (None if tomb else enc.value(ev, processing_us))


# --------------------------------------------------------------------------- encoding


def key_payload(table: str, key: Key) -> bytes:
    """The message key's payload JSON, e.g. `{"customer_id":1,"order_id":1}`."""
    return orjson.dumps(dict(zip(KEYS[table], key, strict=True)))


def partition_of(spec: ScyllaSpec, table: str, key: Key) -> int:
    """crc32 of the key payload mod partitions (`benchmarks.workload.partition_of`'s rule)."""
    return zlib.crc32(key_payload(table, key)) % spec.partitions


def wire_value(cql_type: str, value: Any) -> Any:
    """A cell value as the connector writes it in JSON (decimal as BigDecimal.toString,
    timestamp as epoch ms)."""
    if value is None:
        return None
    if cql_type == "decimal":
        return str(value)
    if cql_type == "timestamp":
        return (value - EPOCH) // timedelta(milliseconds=1)
    return value


def _source_schema() -> dict[str, Any]:
    def f(name: str, typ: str, optional: bool) -> dict[str, Any]:
        return {"type": typ, "optional": optional, "field": name}

    return {"type": "struct", "fields": [
        f("version", "string", False), f("connector", "string", False),
        f("name", "string", False), f("ts_ms", "int64", False),
        {"type": "string", "optional": True, "name": "io.debezium.data.Enum", "version": 1,
         "parameters": {"allowed": "true,last,false,incremental"}, "default": "false",
         "field": "snapshot"},
        f("db", "string", False), f("sequence", "string", True), f("ts_us", "int64", True),
        f("ts_ns", "int64", True), f("keyspace_name", "string", False),
        f("table_name", "string", False),
    ], "optional": False, "name": "com.scylladb.cdc.debezium.connector", "field": "source"}


def schemas(spec: ScyllaSpec, table: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(key schema, value schema) of a table, as the connector's JsonConverter writes them."""
    base = spec.topic(table)
    key_fields = [{"type": "int32", "optional": True, "field": k} for k in KEYS[table]]
    by_name = {f["field"]: f for f in key_fields}
    for col, cql_type in REGULAR.items():
        by_name[col] = {"type": "struct",
                        "fields": [{**_CELL_TYPE[cql_type], "optional": True, "field": "value"}],
                        "optional": True, "name": f"{base}.{col}.Cell", "field": col}
    row_fields = [by_name[n] for n in sorted(by_name)]  # the CDC log's order: alphabetical

    def image(name: str) -> dict[str, Any]:
        return {"type": "struct", "fields": row_fields, "optional": True,
                "name": f"{base}.{name.capitalize()}", "field": name}

    key = {"type": "struct", "fields": key_fields, "optional": False, "name": f"{base}.Key"}
    value = {"type": "struct", "fields": [
        _source_schema(), image("before"), image("after"),
        {"type": "string", "optional": True, "field": "op"},
        {"type": "int64", "optional": True, "field": "ts_ms"},
        {"type": "struct", "fields": [
            {"type": "string", "optional": False, "field": "id"},
            {"type": "int64", "optional": False, "field": "total_order"},
            {"type": "int64", "optional": False, "field": "data_collection_order"},
        ], "optional": True, "name": "event.block", "version": 1, "field": "transaction"},
        {"type": "int64", "optional": True, "field": "ts_us"},
        {"type": "int64", "optional": True, "field": "ts_ns"},
    ], "optional": False, "name": f"{base}.Envelope"}
    return key, value


class _Encoder:
    """Serializes statements to legacy-format messages; schemas are serialized once."""

    def __init__(self, spec: ScyllaSpec) -> None:
        self.spec = spec
        self.schema_json: dict[str, tuple[bytes, bytes]] = {}
        for table in KEYS:
            key_s, value_s = schemas(spec, table)
            self.schema_json[table] = (orjson.dumps(key_s), orjson.dumps(value_s))
        self.columns = {t: sorted((*KEYS[t], *REGULAR)) for t in KEYS}

    @staticmethod
    def _wrap(schema: bytes, payload: bytes) -> bytes:
        return b'{"schema":' + schema + b',"payload":' + payload + b"}"

    def key(self, ev: Event) -> bytes:
        return self._wrap(self.schema_json[ev.table][0], key_payload(ev.table, ev.key))

    def value(self, ev: Event, processing_us: int) -> bytes:
        spec, table = self.spec, ev.table
        key = dict(zip(KEYS[table], ev.key, strict=True))
        ms = ev.ts_us // 1000
        source = {"version": CONNECTOR_VERSION, "connector": "scylla", "name": spec.topic_prefix,
                  "ts_ms": ms, "snapshot": "false", "db": spec.keyspace, "sequence": None,
                  "ts_us": ev.ts_us, "ts_ns": ms * 1_000_000, "keyspace_name": spec.keyspace,
                  "table_name": table}
        before: dict[str, Any] | None = None
        after: dict[str, Any] | None = None
        if ev.kind == "write":
            after = {c: key[c] if c in key else
                     ({"value": wire_value(REGULAR[c], ev.cells[c])} if c in ev.cells else None)
                     for c in self.columns[table]}
        else:
            before = {c: key.get(c) for c in self.columns[table]}
        processing_ms = processing_us // 1000
        payload = {"source": source, "before": before, "after": after,
                   "op": ("c" if ev.marker else "u") if ev.kind == "write" else "d",
                   "ts_ms": processing_ms, "transaction": None, "ts_us": processing_ms * 1000,
                   "ts_ns": processing_ms * 1_000_000}
        return self._wrap(self.schema_json[table][1], orjson.dumps(payload))


_ENCODERS: dict[ScyllaSpec, _Encoder] = {}


def _encoder(spec: ScyllaSpec) -> _Encoder:
    enc = _ENCODERS.get(spec)
    if enc is None:
        enc = _ENCODERS[spec] = _Encoder(spec)
    return enc


# --------------------------------------------------------------------------- generation


def _row_of(spec: ScyllaSpec, k: int) -> tuple[str, Key]:
    """Row index -> (table, key): every third row is a cart, the others orders."""
    if k % 3 == 2:
        return "carts", (k // 3 + 1,)
    r = k // 3 * 2 + k % 3
    return "orders", (r // spec.orders_per_customer + 1, r % spec.orders_per_customer + 1)


def _value(cql_type: str, rng: random.Random) -> Any:
    if cql_type == "decimal":
        return Decimal(rng.randrange(-10**9, 10**9)).scaleb(-2)
    if cql_type == "bigint":
        return rng.getrandbits(63) - 2**62
    if cql_type == "boolean":
        return rng.random() < 0.5
    if cql_type == "text":
        return f"note-{rng.getrandbits(32):08x}"
    if cql_type == "timestamp":
        return EPOCH + timedelta(milliseconds=BASE_TS_US // 1000 - rng.randrange(10**11))
    return rng.uniform(-1e6, 1e6)


def _statements(spec: ScyllaSpec, rng: random.Random, stats: dict[str, int]) -> list[Event]:
    """The source's statements in write order, each an oracle event."""
    null_p, live, last_ts = spec.null_pct / 100, set(), {}
    ts_us = BASE_TS_US
    out: list[Event] = []
    for _ in range(spec.events):
        table, key = _row_of(spec, int(rng.random() * spec.keys))
        ref = (table, key)
        tie = ref in last_ts and rng.random() < spec.ties_pct / 100
        if tie:
            stats["ties"] += 1
        else:
            ts_us += 1 + int(rng.random() * 100)
        ts = last_ts[ref] if tie else ts_us
        last_ts[ref] = ts
        cols = [c for c in REGULAR if not (tie and c == "amount")]
        r = rng.random() * 100
        if ref in live and r < spec.deletes_pct:
            kind = "row_delete" if table == "orders" else "partition_delete"
            stats[kind + "s"] += 1
            live.discard(ref)
            out.append(Event(table, key[:PARTITION_KEY_LEN] if kind == "partition_delete"
                             else key, PARTITION_KEY_LEN, kind, ts))
            continue
        insert = (r < spec.deletes_pct + spec.reinsert_pct if ref in live
                  else r >= spec.upsert_pct)
        if insert:
            chosen = [c for c in cols if rng.random() * 100 < spec.insert_column_pct]
        else:
            chosen = rng.sample(cols, rng.randint(1, 3))
        cells = {c: None if rng.random() < null_p else _value(REGULAR[c], rng) for c in chosen}
        stats["inserts" if insert else "updates"] += 1
        if insert or any(v is not None for v in cells.values()):
            live.add(ref)
        out.append(Event(table, key, PARTITION_KEY_LEN, "write", ts, marker=insert, cells=cells))
    return out


def _deliver(units: list[Unit], spec: ScyllaSpec, rng: random.Random,
             stats: dict[str, int]) -> list[Unit]:
    """One Kafka partition's delivery: per-row swaps, then replayed runs."""
    n = len(units)
    nxt, last = [-1] * n, {}
    for i in range(n - 1, -1, -1):
        ref = (units[i][0].table, units[i][0].key)
        nxt[i], last[ref] = last.get(ref, -1), i
    used = bytearray(n)
    for i in rng.sample(range(n), round(n * spec.out_of_order_pct / 100)):
        j = nxt[i]
        if j >= 0 and not used[i] and not used[j]:
            used[i] = used[j] = 1
            units[i], units[j] = units[j], units[i]
            stats["out_of_order"] += 1
    placed = [(p, 0, 0, u) for p, u in enumerate(units)]
    replayed = 0
    while n and replayed < n * spec.replay_pct / 100:
        start = rng.randrange(n)
        run = units[start:start + rng.randint(1, max(1, spec.replay_run))]
        dst = start + len(run) - 1 + rng.randint(0, spec.replay_window)
        delay = (dst - start + 1) * 1000  # re-read later: a later processing time
        placed += [(dst, 1 + i, len(placed), (ev, t + delay)) for i, (ev, t) in enumerate(run)]
        replayed += len(run)
    stats["replayed"] += replayed
    placed.sort(key=lambda p: p[:3])
    return [p[3] for p in placed]


def generate(spec: ScyllaSpec) -> ScyllaWorkload:
    """Generate a workload deterministically from `spec.seed`, and its oracle."""
    enabled = gc.isenabled()
    gc.disable()  # many small objects and no cycles: the collector only costs time
    try:
        return _generate(spec)
    finally:
        if enabled:
            gc.enable()


def _generate(spec: ScyllaSpec) -> ScyllaWorkload:
    if spec.keys < 1 or spec.partitions < 1 or spec.orders_per_customer < 1:
        raise ValueError("keys, partitions and orders_per_customer must be positive")
    rng = random.Random(spec.seed)
    stats = dict.fromkeys(("inserts", "updates", "row_deletes", "partition_deletes", "ties",
                           "out_of_order", "replayed"), 0)
    statements = _statements(spec, rng, stats)
    lag: dict[tuple[str, Key], int] = {}
    topic_partition: dict[tuple[str, Key], tuple[str, int]] = {}
    units: dict[tuple[str, int], list[tuple[int, int, Unit]]] = {}
    for i, ev in enumerate(statements):
        stream = (ev.table, ev.key[:PARTITION_KEY_LEN])
        if stream not in lag:
            lag[stream] = rng.randint(0, spec.stream_lag_us)
        tp = topic_partition.get((ev.table, ev.key))
        if tp is None:
            tp = topic_partition[(ev.table, ev.key)] = (
                spec.topic(ev.table), partition_of(spec, ev.table, ev.key))
        units.setdefault(tp, []).append(
            (ev.ts_us + lag[stream], i, (ev, ev.ts_us + PROCESSING_DELAY_US + lag[stream])))
    arrivals: dict[tuple[str, int], list[Entry]] = {}
    for tp in sorted(units):
        ordered = [u for _, _, u in sorted(units[tp], key=lambda t: t[:2])]
        arrivals[tp] = [(ev, tomb, t) for ev, t in _deliver(ordered, spec, rng, stats)
                        for tomb in ((False, True) if ev.kind != "write" else (False,))]
    state = reconcile(statements)
    stats["messages"] = sum(len(v) for v in arrivals.values())
    stats["tombstones"] = sum(tomb for entries in arrivals.values() for _, tomb, _ in entries)
    return ScyllaWorkload(spec, arrivals, statements, expected_rows(state, statements),
                          state, stats)


def expected_rows(state: Reconciled, statements: list[Event]) -> Rows:
    """The oracle's visible rows, completed with the key and every regular column."""
    now_us = max((ev.ts_us for ev in statements), default=BASE_TS_US) + 1
    out: Rows = {t: {} for t in KEYS}
    for table, rows in state.visible_rows(now_us).items():
        for key, cells in rows.items():
            row: dict[str, Any] = dict(zip(KEYS[table], key, strict=True))
            row.update({c: cells.get(c) for c in REGULAR})
            out[table][key] = row
    return out

