"""Workload generator for the `scylla` scenario and the mixed-source tests: ScyllaDB CDC source
connector messages (legacy or advanced format) and Debezium Cassandra connector messages, JSON
with schemas or Avro, and the rows Cassandra's cell semantics make of them
(`benchmarks/cell_oracle.py`).

Independent of the replicator (imports nothing from `operators/`, `formats/` or `schemas/`).

Tables (keyspace `spec.keyspace`), both with the same six regular columns, typed like the
fixtures' columns of those names (`REGULAR`):
    orders (customer_id int, order_id int, ..., PRIMARY KEY (customer_id, order_id))
    carts (cart_id int PRIMARY KEY, ...)
Each table has its encoding (`ScyllaSpec.encodings`), and each encoding carries only what its
connector can express, so that a message says exactly what its statement did:
- `legacy` (ScyllaDB, `cdc.output.format=legacy`; `tests/fixtures/scylla/legacy_*.json`, connector
  v2.0.3): key struct, `after` cells `{"value": x}` (set), `{"value": null}` (set to NULL), `null`
  (untouched), a delete's `before` holding the key and null cells, `source.ts_us` = the write
  time, and a Kafka tombstone after every delete.
- `advanced` (ScyllaDB, `cdc.output.format=advanced`, `cdc.include.before=full`,
  `cdc.include.after=full`; `tests/fixtures/scylla/advanced_full_*.json`): plain values in full
  pre- and post-images of the row as the source held it when the statement ran (an insert has no
  `before`, nor has an update of an absent row; a partition delete neither image), a Kafka
  tombstone after every delete. An image shows a cell as written only when its value changed
  (`formats/scylla.py`), so in this encoding an UPDATE writes values that differ from the row's,
  sets to NULL only cells that hold a value, and on an absent row writes no NULL; an INSERT
  writes a value to every column that holds one (its post-image shows them all as written) and no
  NULL; and no statement ties another's write time.
- `cassandra` (Debezium Cassandra connector 3.6.1; `tests/fixtures/cassandra/*.json`): ops
  `i`/`u`/`d`/`r`, every column a cell `{value, deletion_ts, set}` (key columns too; `null` =
  untouched), decimal as a double (`decimal.handling.mode=double`), a row delete's regular cells
  `{null, <deletion µs>, true}`, partition deletes of `orders` as `d` with a null clustering
  value, range deletes of `orders` as `r` with `_range_start`/`_range_end`, no Kafka tombstones
  (`tombstones.on.delete=false`). At `ttl_pct` an UPDATE writes its values `USING TTL`: each such
  cell's `deletion_ts` is its expiry, whole seconds from `spec.clock_us` (the wall clock the
  workload is produced at): a quarter long past, half within `ttl_window_s` (they expire while a
  test runs: `ScyllaSpec.expiring_by_us`), a quarter a day ahead. An INSERT has no TTL (the
  message cannot carry the row marker's).
Statements: INSERT (a row marker, most columns, some NULL), partial UPDATE (1-3 columns, some
set to NULL; on an absent row it creates the row without a marker), row DELETE on `orders`,
partition DELETE on `carts`, and in the `cassandra` encoding also partition and range DELETEs on
`orders` (ScyllaDB's connector drops partition deletes of tables with a clustering key and every
range delete, so none is generated there). At `ties_pct` a statement has the same write time as
the row's previous one (USING TIMESTAMP), which Cassandra breaks as the oracle does: a delete
wins, else the greater serialized value. A tie never writes `amount`: a decimal arrives as a
string or a double, so its serialized order (scale first) cannot be told from the message.

Avro (`registry_url`): the messages' Connect schemas as AvroConverter maps them
(`benchmarks/workload_avro.py`), registered under `<topic>-key` and `<topic>-value`, and the
payloads as its records. Only the ScyllaDB encodings: the Cassandra connector names every cell
struct `cell_value`, which one Avro schema cannot hold with different value types.

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
A message lives in the Kafka partition of its key (crc32 of the key payload, as
`benchmarks/workload.py` does); the rows of one Scylla partition spread over Kafka partitions, as
the connectors' per-row keys make them.

`ScyllaWorkload` offers what `benchmarks.workload.produce` uses, so it produces it unchanged.
"""

from __future__ import annotations

import gc
import random
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any, Literal

import orjson

from benchmarks.cell_oracle import Bound, Event, Key, Reconciled, Rows, reconcile
from benchmarks.workload import BASE_TS_US, EPOCH
from benchmarks.workload_avro import AvroSubjectWriter

Encoding = Literal["legacy", "advanced", "cassandra"]
ENCODINGS: tuple[Encoding, ...] = ("legacy", "advanced", "cassandra")
CONNECTOR_VERSION = "2.0.3"
CASSANDRA_CONNECTOR_VERSION = "3.6.1.Final"
CASSANDRA_NAMESPACE = "io.debezium.connector.cassandra"
PROCESSING_DELAY_US = 20_000  # connector time after the write: the top-level ts_ms
# Regular columns: name -> CQL type; the names and types of the fixtures' `orders` columns.
REGULAR = {"amount": "decimal", "big": "bigint", "flag": "boolean", "note": "text",
           "placed_at": "timestamp", "score": "double"}
KEYS = {"orders": ("customer_id", "order_id"), "carts": ("cart_id",)}
PARTITION_KEY_LEN = 1  # both tables: customer_id / cart_id
_TIMESTAMP = {"type": "int64", "name": "org.apache.kafka.connect.data.Timestamp", "version": 1}
# A column's value schema per connector: ScyllaDB (both formats) and Cassandra.
_SCYLLA_TYPE: dict[str, dict[str, Any]] = {
    "decimal": {"type": "string"},
    "bigint": {"type": "int64"},
    "boolean": {"type": "boolean"},
    "text": {"type": "string"},
    "timestamp": _TIMESTAMP,
    "double": {"type": "double"},
}
_CASSANDRA_TYPE: dict[str, dict[str, Any]] = {
    **_SCYLLA_TYPE,
    "decimal": {"type": "double"},
    "timestamp": {"type": "int64", "name": "io.debezium.time.Timestamp", "version": 1},
}
_INT32_MARSHAL = "org.apache.cassandra.db.marshal.Int32Type"
_DAY_US = 86_400_000_000


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
    encodings: tuple[tuple[str, Encoding], ...] = ()  # (table, encoding) where not `legacy`
    # `cassandra` encoding: of the deletes of `orders`, partition and range deletes
    partition_delete_pct: float = 20.0
    range_delete_pct: float = 20.0
    ttl_pct: float = 0.0  # `cassandra` encoding: of UPDATEs, written USING TTL
    ttl_window_s: int = 20  # the expiries that fall while a test runs: within this of clock_us
    clock_us: int = BASE_TS_US + _DAY_US  # wall clock (µs) of production: TTLs count from it
    registry_url: str = ""  # Avro through this schema registry; JSON when empty

    def topic(self, table: str) -> str:
        """The connector's topic `<prefix>.<keyspace>.<table>`."""
        return f"{self.topic_prefix}.{self.keyspace}.{table}"

    def encoding(self, table: str) -> Encoding:
        return dict(self.encodings).get(table, "legacy")

    @property
    def expiring_by_us(self) -> int:
        """Every expiry is before this or a day after it: from then on no row changes by
        itself for a day."""
        return (self.clock_us // 10**6 + self.ttl_window_s + 1) * 10**6


Images = tuple[dict[str, Any] | None, dict[str, Any] | None]  # (before, after): column -> value
Unit = tuple[Event, int]  # a statement and the connector's processing time (µs) of its message
Entry = tuple[Event, bool, int]  # one Kafka message: (statement, is_tombstone, processing µs)


@dataclass
class ScyllaWorkload:
    """Messages per (topic, partition) in production order (offset = index), the statements
    they carry, and what the oracle makes of them.

    rows: table -> key -> {column: value} of the rows visible at `spec.clock_us`, key and all
        regular columns (str, int, Decimal, bool, naive UTC datetime, float, or None);
        `rows_at` reads them at another time (TTLs).
    state: the reconciled cells, markers and deletions (winning write time of every cell).
    images: the advanced encoding's row images of its statements, by (table, key, write time).
    """

    spec: ScyllaSpec
    arrivals: dict[tuple[str, int], list[Entry]]
    statements: list[Event]
    rows: Rows
    state: Reconciled
    stats: dict[str, int]
    images: dict[tuple[str, Key, int], Images] = field(default_factory=dict)

    @property
    def topics(self) -> list[str]:
        return [self.spec.topic(t) for t in KEYS]

    @property
    def message_count(self) -> int:
        return sum(len(v) for v in self.arrivals.values())

    def rows_at(self, now_us: int) -> Rows:
        """The oracle's rows visible at `now_us` (µs since the epoch), completed with the key
        and every regular column."""
        out: Rows = {t: {} for t in KEYS}
        for table, rows in self.state.visible_rows(now_us).items():
            for key, cells in rows.items():
                row: dict[str, Any] = dict(zip(KEYS[table], key, strict=True))
                row.update({c: cells.get(c) for c in REGULAR})
                out[table][key] = row
        return out

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
            images = self.images.get((ev.table, ev.key, ev.ts_us))
            yield enc.key(ev), (None if tomb else enc.value(ev, processing_us, images))


# --------------------------------------------------------------------------- encoding


def key_document(table: str, key: Key) -> dict[str, Any]:
    """The message key's payload; a partition or range delete's clustering values are null."""
    names = KEYS[table]
    return dict(zip(names, (*key, *(None,) * (len(names) - len(key))), strict=True))


def key_payload(table: str, key: Key) -> bytes:
    """The message key's payload JSON, e.g. `{"customer_id":1,"order_id":1}`."""
    return orjson.dumps(key_document(table, key))


def partition_of(spec: ScyllaSpec, table: str, key: Key) -> int:
    """crc32 of the key payload mod partitions (`benchmarks.workload.partition_of`'s rule)."""
    return zlib.crc32(key_payload(table, key)) % spec.partitions


def wire_value(cql_type: str, value: Any, encoding: Encoding = "legacy") -> Any:
    """A cell value as the connector writes it in JSON: decimal as BigDecimal.toString
    (ScyllaDB) or a double (Cassandra), timestamp as epoch ms."""
    if value is None:
        return None
    if cql_type == "decimal":
        return float(value) if encoding == "cassandra" else str(value)
    if cql_type == "timestamp":
        return (value - EPOCH) // timedelta(milliseconds=1)
    return value


def _field(schema: Mapping[str, Any], name: str, optional: bool = True) -> dict[str, Any]:
    """A struct field in JsonConverter's key order."""
    return {"type": schema["type"], "optional": optional,
            **{k: schema[k] for k in ("name", "version", "parameters", "default") if k in schema},
            "field": name}


def _snapshot_field(allowed: str) -> dict[str, Any]:
    return {"type": "string", "optional": True, "name": "io.debezium.data.Enum", "version": 1,
            "parameters": {"allowed": allowed}, "default": "false", "field": "snapshot"}


def _scylla_source_schema() -> dict[str, Any]:
    def f(name: str, typ: str, optional: bool) -> dict[str, Any]:
        return {"type": typ, "optional": optional, "field": name}

    return {"type": "struct", "fields": [
        f("version", "string", False), f("connector", "string", False),
        f("name", "string", False), f("ts_ms", "int64", False),
        _snapshot_field("true,last,false,incremental"),
        f("db", "string", False), f("sequence", "string", True), f("ts_us", "int64", True),
        f("ts_ns", "int64", True), f("keyspace_name", "string", False),
        f("table_name", "string", False),
    ], "optional": False, "name": "com.scylladb.cdc.debezium.connector", "field": "source"}


def _cassandra_source_schema() -> dict[str, Any]:
    def f(name: str, typ: str, optional: bool = False) -> dict[str, Any]:
        return {"type": typ, "optional": optional, "field": name}

    return {"type": "struct", "fields": [
        f("version", "string"), f("connector", "string"), f("name", "string"),
        f("ts_ms", "int64"),
        _snapshot_field("true,first,first_in_data_collection,last_in_data_collection,last,"
                        "false,incremental"),
        f("db", "string"), f("sequence", "string", True), f("ts_us", "int64", True),
        f("ts_ns", "int64", True), f("cluster", "string"), f("file", "string"),
        f("pos", "int32"), f("keyspace", "string"), f("table", "string"),
    ], "optional": False, "name": "source", "version": 1, "field": "source"}


def schemas(spec: ScyllaSpec, table: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(key schema, value schema) of a table in its encoding, as JsonConverter writes them."""
    if spec.encoding(table) == "cassandra":
        return _cassandra_schemas(spec, table)
    base = spec.topic(table)
    legacy = spec.encoding(table) == "legacy"
    key_fields = [{"type": "int32", "optional": True, "field": k} for k in KEYS[table]]
    by_name = {f["field"]: f for f in key_fields}
    for col, cql_type in REGULAR.items():
        by_name[col] = ({"type": "struct",
                         "fields": [_field(_SCYLLA_TYPE[cql_type], "value")],
                         "optional": True, "name": f"{base}.{col}.Cell", "field": col}
                        if legacy else _field(_SCYLLA_TYPE[cql_type], col))
    row_fields = [by_name[n] for n in sorted(by_name)]  # the CDC log's order: alphabetical

    def image(name: str) -> dict[str, Any]:
        return {"type": "struct", "fields": row_fields, "optional": True,
                "name": f"{base}.{name.capitalize()}", "field": name}

    key = {"type": "struct", "fields": key_fields, "optional": False, "name": f"{base}.Key"}
    value = {"type": "struct", "fields": [
        _scylla_source_schema(), image("before"), image("after"),
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


def _cassandra_schemas(spec: ScyllaSpec, table: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """`KeyValueSchema`: key columns plain; `after` one `cell_value` struct per column (key
    columns first, then the regular ones), then the range bounds."""
    base = f"{CASSANDRA_NAMESPACE}.{spec.topic(table)}"
    key = {"type": "struct",
           "fields": [{"type": "int32", "optional": True, "field": k} for k in KEYS[table]],
           "optional": False, "name": f"{base}.Key"}

    def cell(col: str, value_schema: Mapping[str, Any]) -> dict[str, Any]:
        return {"type": "struct", "fields": [
            _field(value_schema, "value"),
            {"type": "int64", "optional": True, "field": "deletion_ts"},
            {"type": "boolean", "optional": False, "field": "set"},
        ], "optional": True, "name": "cell_value", "version": 1, "field": col}

    def bound(name: str) -> dict[str, Any]:
        value = {"type": "struct", "fields": [
            {"type": "string", "optional": False, "field": f} for f in ("name", "value", "type")
        ], "optional": False, "name": "clustering_value", "version": 1}
        return {"type": "struct", "fields": [
            {"type": "string", "optional": False, "field": "method"},
            {"type": "array", "items": value, "optional": False, "name": "clustering_values",
             "version": 1, "field": "values"},
        ], "optional": True, "name": name, "version": 1, "field": name}

    cells = [cell(k, {"type": "int32"}) for k in KEYS[table]]
    cells += [cell(c, _CASSANDRA_TYPE[REGULAR[c]]) for c in sorted(REGULAR)]
    after = {"type": "struct", "fields": [*cells, bound("_range_start"), bound("_range_end")],
             "optional": False, "name": "after", "version": 1, "field": "after"}
    value = {"type": "struct", "fields": [
        {"type": "int64", "optional": False, "field": "ts_ms"},
        {"type": "string", "optional": False, "field": "op"},
        _cassandra_source_schema(), after,
    ], "optional": False, "name": f"{base}.Envelope"}
    return key, value


def _cell(value: Any, deletion_ts: int | None = None) -> dict[str, Any]:
    """A Cassandra connector cell (`CellData`); `set` is always true."""
    return {"value": value, "deletion_ts": deletion_ts, "set": True}


def _bound(table: str, bound: Bound | None, side: str) -> dict[str, Any]:
    """A range tombstone's bound (`ClusteringBound`): an open side is Cassandra's BOTTOM or TOP,
    an inclusive bound without values."""
    if bound is None:
        return {"method": f"INCL_{side}_BOUND", "values": []}
    names = KEYS[table][PARTITION_KEY_LEN:]
    return {"method": f"{'INCL' if bound.inclusive else 'EXCL'}_{side}_BOUND",
            "values": [{"name": n, "value": str(v), "type": _INT32_MARSHAL}
                       for n, v in zip(names, bound.prefix, strict=False)]}


class _Encoder:
    """Serializes statements to messages of their table's encoding; schemas are serialized (or
    registered) once."""

    def __init__(self, spec: ScyllaSpec) -> None:
        self.spec = spec
        self.schema_json: dict[str, tuple[bytes, bytes]] = {}
        self.avro: dict[str, tuple[AvroSubjectWriter, AvroSubjectWriter]] = {}
        for table in KEYS:
            key_s, value_s = schemas(spec, table)
            self.schema_json[table] = (orjson.dumps(key_s), orjson.dumps(value_s))
            if spec.registry_url:
                topic = spec.topic(table)
                self.avro[table] = (
                    AvroSubjectWriter(spec.registry_url, f"{topic}-key", key_s),
                    AvroSubjectWriter(spec.registry_url, f"{topic}-value", value_s))
        self.columns = {t: sorted((*KEYS[t], *REGULAR)) for t in KEYS}

    def _frame(self, table: str, which: int, payload: dict[str, Any]) -> bytes:
        if self.avro:
            return self.avro[table][which].frame(payload)
        return (b'{"schema":' + self.schema_json[table][which] + b',"payload":'
                + orjson.dumps(payload) + b"}")

    def key(self, ev: Event) -> bytes:
        return self._frame(ev.table, 0, key_document(ev.table, ev.key))

    def value(self, ev: Event, processing_us: int, images: Images | None) -> bytes:
        encoding = self.spec.encoding(ev.table)
        if encoding == "cassandra":
            payload = self._cassandra(ev, processing_us)
        else:
            payload = self._scylla(ev, processing_us, encoding, images)
        return self._frame(ev.table, 1, payload)

    def _scylla(self, ev: Event, processing_us: int, encoding: Encoding,
                images: Images | None) -> dict[str, Any]:
        spec, table = self.spec, ev.table
        ms = ev.ts_us // 1000
        source = {"version": CONNECTOR_VERSION, "connector": "scylla", "name": spec.topic_prefix,
                  "ts_ms": ms, "snapshot": "false", "db": spec.keyspace, "sequence": None,
                  "ts_us": ev.ts_us, "ts_ns": ms * 1_000_000, "keyspace_name": spec.keyspace,
                  "table_name": table}
        if encoding == "advanced":
            if images is None:
                raise ValueError(f"{table} {ev.key} @{ev.ts_us}: no row images")
            before, after = (None if image is None else
                             {c: wire_value(REGULAR[c], v) if c in REGULAR else v
                              for c, v in sorted(image.items())} for image in images)
        elif ev.kind == "write":
            key = key_document(table, ev.key)
            before = None
            after = {c: key[c] if c in key else
                     ({"value": wire_value(REGULAR[c], ev.cells[c])} if c in ev.cells else None)
                     for c in self.columns[table]}
        else:
            key = key_document(table, ev.key)
            before, after = {c: key.get(c) for c in self.columns[table]}, None
        processing_ms = processing_us // 1000
        legacy = encoding == "legacy"  # advanced sets only the top-level ts_ms
        return {"source": source, "before": before, "after": after,
                "op": ("c" if ev.marker else "u") if ev.kind == "write" else "d",
                "ts_ms": processing_ms, "transaction": None,
                "ts_us": processing_ms * 1000 if legacy else None,
                "ts_ns": processing_ms * 1_000_000 if legacy else None}

    def _cassandra(self, ev: Event, processing_us: int) -> dict[str, Any]:
        spec, table = self.spec, ev.table
        source = {"version": CASSANDRA_CONNECTOR_VERSION, "connector": "cassandra",
                  "name": spec.topic_prefix, "ts_ms": ev.ts_us // 1000, "snapshot": "false",
                  "db": "NULL", "sequence": None, "ts_us": ev.ts_us, "ts_ns": ev.ts_us * 1000,
                  "cluster": "Test Cluster", "file": "CommitLog-8-1718020800000.log",
                  "pos": ev.ts_us % 2**31, "keyspace": spec.keyspace, "table": table}
        after: dict[str, Any] = {}
        for i, col in enumerate(KEYS[table]):  # a delete's missing clustering values are null
            given = i < len(ev.key)
            after[col] = (_cell(ev.key[i]) if given else
                          None if ev.kind == "range_delete" else _cell(None, ev.ts_us))
        for col in sorted(REGULAR):
            if ev.kind == "write":
                after[col] = (_cell(wire_value(REGULAR[col], ev.cells[col], "cassandra"),
                                    ev.expiries.get(col)) if col in ev.cells else None)
            else:
                after[col] = None if ev.kind == "range_delete" else _cell(None, ev.ts_us)
        ranged = ev.kind == "range_delete"
        after["_range_start"] = _bound(table, ev.range_start, "START") if ranged else None
        after["_range_end"] = _bound(table, ev.range_end, "END") if ranged else None
        op = {"write": "i" if ev.marker else "u", "range_delete": "r"}.get(ev.kind, "d")
        return {"ts_ms": processing_us // 1000, "op": op, "source": source, "after": after}


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


def _other_value(cql_type: str, held: Any, rng: random.Random) -> Any:
    """A value that differs from the one the cell holds (an advanced image shows no rewrite)."""
    while True:
        value = _value(cql_type, rng)
        if value != held:
            return value


@dataclass
class _SourceRow:
    marker: bool = False
    cells: dict[str, Any] = field(default_factory=dict)  # the non-null values


class _Source:
    """The rows as the source holds them while its statements run, in write order: whether a
    row is live, and the advanced encoding's images. TTLs and write-time ties are not applied
    (the advanced encoding has neither; elsewhere only liveness is asked, as a likelihood)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, Key], _SourceRow] = {}
        self.partitions: dict[tuple[str, Key], set[Key]] = {}

    def row(self, ref: tuple[str, Key]) -> _SourceRow | None:
        row = self.rows.get(ref)
        return row if row is not None and (row.marker or row.cells) else None

    def image(self, ref: tuple[str, Key]) -> dict[str, Any] | None:
        """The row's full image (key and every column), None when it has no live data."""
        row = self.row(ref)
        if row is None:
            return None
        table, key = ref
        return {**dict(zip(KEYS[table], key, strict=True)),
                **{c: row.cells.get(c) for c in REGULAR}}

    def apply(self, ev: Event) -> None:
        if ev.kind == "write":
            ref = (ev.table, ev.key)
            row = self.rows.setdefault(ref, _SourceRow())
            self.partitions.setdefault((ev.table, ev.key[:PARTITION_KEY_LEN]), set()).add(ev.key)
            row.marker |= ev.marker
            for col, value in ev.cells.items():
                if value is None:
                    row.cells.pop(col, None)
                else:
                    row.cells[col] = value
            return
        partition = ev.key[:PARTITION_KEY_LEN]
        gone = reconcile([ev])
        for key in self.partitions.get((ev.table, partition), ()):
            if gone.deletion_us(ev.table, key) is not None:
                self.rows.pop((ev.table, key), None)


def _delete(spec: ScyllaSpec, table: str, key: Key, ts: int, rng: random.Random) -> Event:
    """A delete of a live row: of the row, its partition, or a range of its partition that
    covers it (`cassandra` encoding only, see the module doc)."""
    partition = key[:PARTITION_KEY_LEN]
    if table == "carts":
        return Event(table, partition, PARTITION_KEY_LEN, "partition_delete", ts)
    if spec.encoding(table) == "cassandra":
        r = rng.random() * 100
        if r < spec.partition_delete_pct:
            return Event(table, partition, PARTITION_KEY_LEN, "partition_delete", ts)
        if r < spec.partition_delete_pct + spec.range_delete_pct:
            return _range_delete(table, key, ts, rng)
    return Event(table, key, PARTITION_KEY_LEN, "row_delete", ts)


def _range_delete(table: str, key: Key, ts: int, rng: random.Random) -> Event:
    """Rows of the partition around the row's clustering value `c` (an open side at 10%)."""
    c = key[PARTITION_KEY_LEN]
    low, high = rng.randint(c - 2, c), rng.randint(c, c + 2)
    start = None if rng.random() < 0.1 else Bound((low,), low == c or rng.random() < 0.5)
    end = None if rng.random() < 0.1 else Bound((high,), high == c or rng.random() < 0.5)
    return Event(table, key[:PARTITION_KEY_LEN], PARTITION_KEY_LEN, "range_delete", ts,
                 range_start=start, range_end=end)


def _expiry(spec: ScyllaSpec, rng: random.Random) -> int:
    """A TTL'd cell's expiry (µs, whole seconds as Cassandra keeps them): a quarter past, half
    within the window, a quarter a day ahead."""
    now_s, r = spec.clock_us // 10**6, rng.random()
    if r < 0.25:
        return (now_s - rng.randint(60, 3_600)) * 10**6
    if r < 0.75:
        return (now_s + rng.randint(1, spec.ttl_window_s)) * 10**6
    return (now_s + 86_400 + rng.randint(0, 3_600)) * 10**6


def _write(spec: ScyllaSpec, rng: random.Random, source: _Source, table: str, key: Key,
           ts: int, insert: bool, cols: list[str]) -> Event:
    """An INSERT or UPDATE of what its encoding can express (module doc)."""
    null_p = spec.null_pct / 100
    encoding = spec.encoding(table)
    expiries: dict[str, int] = {}
    if encoding == "advanced":
        row = source.row((table, key)) or _SourceRow()
        held = row.cells
        if insert:
            chosen = {c for c in cols if rng.random() * 100 < spec.insert_column_pct} | set(held)
            cells = {c: _value(REGULAR[c], rng) for c in REGULAR if c in chosen}
        else:  # NULL only where a value shows it, and never the last value of a markerless row
            cells = {c: None if c in held and row.marker and rng.random() < null_p
                     else _other_value(REGULAR[c], held.get(c), rng)
                     for c in rng.sample(cols, rng.randint(1, 3))}
    else:
        if insert:
            chosen = [c for c in cols if rng.random() * 100 < spec.insert_column_pct]
        else:
            chosen = rng.sample(cols, rng.randint(1, 3))
        cells = {c: None if rng.random() < null_p else _value(REGULAR[c], rng) for c in chosen}
        if encoding == "cassandra" and not insert and rng.random() * 100 < spec.ttl_pct:
            expiries = {c: _expiry(spec, rng) for c, v in cells.items() if v is not None}
    return Event(table, key, PARTITION_KEY_LEN, "write", ts, marker=insert, cells=cells,
                 expiries=expiries)


def _statements(spec: ScyllaSpec, rng: random.Random, stats: dict[str, int],
                ) -> tuple[list[Event], dict[tuple[str, Key, int], Images]]:
    """The source's statements in write order, each an oracle event, and the row images of
    those in the advanced encoding."""
    source, last_ts = _Source(), {}
    images: dict[tuple[str, Key, int], Images] = {}
    ts_us = BASE_TS_US
    out: list[Event] = []
    for _ in range(spec.events):
        table, key = _row_of(spec, int(rng.random() * spec.keys))
        ref = (table, key)
        advanced = spec.encoding(table) == "advanced"
        tie = not advanced and ref in last_ts and rng.random() < spec.ties_pct / 100
        if tie:
            stats["ties"] += 1
        else:
            ts_us += 1 + int(rng.random() * 100)
        ts = last_ts[ref] if tie else ts_us
        last_ts[ref] = ts
        cols = [c for c in REGULAR if not (tie and c == "amount")]
        r = rng.random() * 100
        live = source.row(ref) is not None
        before = source.image(ref)
        if live and r < spec.deletes_pct:
            ev = _delete(spec, table, key, ts, rng)
            stats[ev.kind + "s"] += 1
        else:
            insert = (r < spec.deletes_pct + spec.reinsert_pct if live
                      else r >= spec.upsert_pct)
            ev = _write(spec, rng, source, table, key, ts, insert, cols)
            stats["inserts" if insert else "updates"] += 1
            stats["ttl_cells"] += len(ev.expiries)
        source.apply(ev)
        if advanced:
            whole_partition = ev.kind == "partition_delete"
            images[(table, ev.key, ts)] = (
                None if ev.marker or whole_partition else before,
                None if ev.kind != "write" else source.image(ref))
        out.append(ev)
    return out, images


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


def _check(spec: ScyllaSpec) -> None:
    if spec.keys < 1 or spec.partitions < 1 or spec.orders_per_customer < 1:
        raise ValueError("keys, partitions and orders_per_customer must be positive")
    for table, encoding in spec.encodings:
        if table not in KEYS or encoding not in ENCODINGS:
            raise ValueError(f"encoding {encoding!r} of table {table!r}: tables are "
                             f"{sorted(KEYS)}, encodings {ENCODINGS}")
    if spec.registry_url and any(spec.encoding(t) == "cassandra" for t in KEYS):
        raise ValueError("the cassandra encoding has no Avro form: every cell struct is named "
                         "cell_value, whatever its value type")


def _generate(spec: ScyllaSpec) -> ScyllaWorkload:
    _check(spec)
    rng = random.Random(spec.seed)
    stats = dict.fromkeys(("inserts", "updates", "row_deletes", "partition_deletes",
                           "range_deletes", "ttl_cells", "ties", "out_of_order", "replayed"), 0)
    statements, images = _statements(spec, rng, stats)
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
        arrivals[tp] = [
            (ev, tomb, t) for ev, t in _deliver(ordered, spec, rng, stats)
            for tomb in ((False, True) if ev.kind != "write"
                         and spec.encoding(ev.table) != "cassandra" else (False,))]
    stats["messages"] = sum(len(v) for v in arrivals.values())
    stats["tombstones"] = sum(tomb for entries in arrivals.values() for _, tomb, _ in entries)
    workload = ScyllaWorkload(spec, arrivals, statements, {}, reconcile(statements), stats,
                              images)
    workload.rows = workload.rows_at(spec.clock_us)
    return workload
