"""Workload generator and LWW oracle for Debezium CDC topics.

Independent of the replicator (imports nothing from `operators/` or `flows/`): it writes
Debezium-shaped messages itself (JSON, or Avro in the Confluent wire format with a schema
registry: `benchmarks/workload_avro.py`) and computes the expected outcome of every message
itself.

Model: one global, strictly increasing source version. Each true change picks a key, and is an
insert if the key is absent, else an update or (at `deletes_pct`) a delete followed by a tombstone.
A key lives in one topic (its table) and one partition (crc32 of its key JSON). The per-partition
emission order is then perturbed: out-of-order swaps with a later event of the same key (some of
them chosen so that an older event arrives after a delete), and duplicates re-emitted later.
The oracle walks every partition in arrival order and applies the LWW rule per key.

CLI: `python -m benchmarks.workload --events 100000 --bootstrap 127.0.0.1:9092`.
"""

from __future__ import annotations

import argparse
import base64
import gc
import itertools
import random
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import orjson

from benchmarks.workload_avro import AvroSubjectWriter

# postgresql: (the commit LSN the change's transaction follows, else its own LSN; source.lsn);
# sqlserver: (commit_lsn, change_lsn, event_serial_no). LWW compares them as tuples.
Version = Any
Key = tuple[int, ...]

DEBEZIUM_VERSION = "2.7.3.Final"
EPOCH = datetime(1970, 1, 1)
BASE_TS_US = 1_718_020_800_000_000  # 2024-06-10 12:00:00 UTC: source.ts of the first change
DECIMAL_SCALE = 2
DECIMAL_PRECISION = 12

# Non-key column kinds, in the order the first columns take them.
_KINDS = ("text", "int32", "decimal", "micro_ts", "bool", "int64")
_NAMES = ("name", "qty", "price", "created_at", "active", "score")


@dataclass(frozen=True)
class WorkloadSpec:
    """What to generate. Percentages are of `events` (true changes), except where noted."""

    events: int = 10_000  # true changes (c/u/d); duplicates and tombstones come on top
    keys: int = 1_000  # distinct keys across all tables (key space; untouched keys stay absent)
    tables: tuple[str, ...] = ("customers", "orders")
    partitions: int = 4
    columns: int = 6  # non-key columns: text, int32, Decimal(12,2), MicroTimestamp, bool, int64
    duplicates_pct: float = 2.0
    out_of_order_pct: float = 2.0
    deletes_pct: float = 5.0  # chance that a change to a live key is a delete
    late_after_delete_pct: float = 20.0  # % of deletes whose previous event arrives after them
    null_pct: float = 2.0  # chance that a non-key value is null
    dup_window: int = 1_000  # a duplicate lands 1..dup_window messages after its original
    seed: int = 1
    topic_prefix: str = "bench"
    schema: str = "inventory"
    database: str = "inventory"
    connector: Literal["postgresql", "sqlserver"] = "postgresql"
    schemas_enable: bool = True  # JSON only: Connect schemas in every message
    encoding: Literal["json", "avro"] = "json"
    registry_url: str = ""  # avro: Confluent-compatible schema registry to register schemas in
    composite_key: bool = False  # key (tenant int32, id int64) instead of (id int64)
    tenants: int = 8
    key_dist: Literal["uniform", "zipf", "sequential"] = "uniform"  # sequential: 0, 1, 2, ...
    zipf_s: float = 1.1
    tombstones: bool = True
    max_tx_size: int = 3  # changes per source transaction: 1..max_tx_size

    def topic(self, table: str) -> str:
        """Debezium topic name `<prefix>.<schema>.<table>`."""
        return f"{self.topic_prefix}.{self.schema}.{table}"

    @property
    def key_columns(self) -> tuple[str, ...]:
        return ("tenant", "id") if self.composite_key else ("id",)

    @property
    def value_columns(self) -> tuple[tuple[str, str], ...]:
        """(name, kind) of the non-key columns."""
        out = []
        for i in range(self.columns):
            kind = _KINDS[i % len(_KINDS)]
            out.append((_NAMES[i] if i < len(_NAMES) else f"c{i}_{kind}", kind))
        return tuple(out)


@dataclass(slots=True)
class Change:
    """One true source change. Rows are wire-level tuples in `value_columns` order
    (decimal as unscaled int, timestamp as µs); `before` is the previous row image."""

    table: str
    key: Key
    op: str  # "c" | "u" | "d"
    version: Version
    row: tuple[Any, ...] | None = None
    before: tuple[Any, ...] | None = None
    ts_us: int = 0
    tx_id: int = 0
    last_commit_lsn: int | None = None  # postgresql `source.sequence[0]` (None: the first tx)


Entry = tuple[Change, bool]  # (change, is_tombstone); one Kafka message


@dataclass(frozen=True, slots=True)
class StaleEvent:
    """A message the replicator must reject as older, with one audit row."""

    topic: str
    partition: int
    offset: int
    table: str
    key: Key
    version: Version
    applied_version: Version


@dataclass
class Oracle:
    """The expected result of replicating a workload exactly once with per-key LWW.

    rows: table -> key tuple -> {column: Python value} for the live rows (key columns included;
        int, str, Decimal, naive datetime, bool, None); deleted keys are absent.
    stale: (topic, partition, offset) -> StaleEvent, one per expected `cdc.stale_events` row.
    versions: (table, key) -> highest version seen (deleted keys included: their delete version).
    deleted: (table, key) whose highest version is a delete.
    applied / duplicates / tombstones: message counts per outcome (stale count = len(stale));
        applied + duplicates + len(stale) + tombstones == number of messages.
    """

    rows: dict[str, dict[Key, dict[str, Any]]] = field(default_factory=dict)
    stale: dict[tuple[str, int, int], StaleEvent] = field(default_factory=dict)
    versions: dict[tuple[str, Key], Version] = field(default_factory=dict)
    deleted: set[tuple[str, Key]] = field(default_factory=set)
    applied: int = 0
    duplicates: int = 0
    tombstones: int = 0

    @property
    def stale_positions(self) -> set[tuple[str, int, int]]:
        return set(self.stale)

    @property
    def counts(self) -> dict[str, int]:
        return {
            "applied": self.applied,
            "duplicates": self.duplicates,
            "stale": len(self.stale),
            "tombstones": self.tombstones,
        }


@dataclass
class Workload:
    """Generated messages per (topic, partition), in the order they must be produced
    (offset = index), the oracle and the generator's own counts of what it injected."""

    spec: WorkloadSpec
    arrivals: dict[tuple[str, int], list[Entry]]
    oracle: Oracle
    stats: dict[str, int]

    @property
    def topics(self) -> list[str]:
        return [self.spec.topic(t) for t in self.spec.tables]

    @property
    def message_count(self) -> int:
        return sum(len(v) for v in self.arrivals.values())

    def messages(self, topic: str, partition: int) -> list[tuple[bytes, bytes | None]]:
        """(key, value) bytes of one topic partition; the value is None for tombstones."""
        return list(self.iter_partition(topic, partition))

    def iter_partition(self, topic: str, partition: int,
                       source_time: Callable[[], int] | None = None,
                       ) -> Iterator[tuple[bytes, bytes | None]]:
        """`source_time`: µs since the epoch to write as each change's source time when it is
        encoded (a live source), instead of the generated one."""
        enc = _encoder(self.spec)
        for change, tomb in self.arrivals.get((topic, partition), ()):
            ts_us = None if source_time is None else source_time()
            yield enc.key(change), (None if tomb else enc.value(change, ts_us))

    def iter_messages(self) -> Iterator[tuple[str, int, int, bytes, bytes | None]]:
        """(topic, partition, offset, key, value) of every message, partition by partition."""
        for topic, partition in sorted(self.arrivals):
            for off, (k, v) in enumerate(self.iter_partition(topic, partition)):
                yield topic, partition, off, k, v


def now_us() -> int:
    return time.time_ns() // 1000


# --------------------------------------------------------------------------- partitioning


def key_payload(spec: WorkloadSpec, key: Key) -> bytes:
    """The key's Debezium payload JSON, e.g. `{"id":5}`."""
    return orjson.dumps(dict(zip(spec.key_columns, key, strict=True)))


def partition_of(spec: WorkloadSpec, key: Key) -> int:
    """Stable partition: crc32 of the key payload JSON (envelope-independent) mod partitions."""
    return zlib.crc32(key_payload(spec, key)) % spec.partitions


# --------------------------------------------------------------------------- versions


def _lsn_str(n: int) -> str:
    """SQL Server LSN `%08x:%08x:%04x` from an 80-bit integer (fixed width: compares as n)."""
    return f"{n >> 48:08x}:{(n >> 16) & 0xFFFFFFFF:08x}:{n & 0xFFFF:04x}"


class _Versions:
    """Global strictly increasing versions, grouped into source transactions."""

    def __init__(self, spec: WorkloadSpec, rng: random.Random) -> None:
        self.flavor = spec.connector
        self.rng = rng
        self.max_tx = max(1, spec.max_tx_size)
        self.lsn = 0x2_4A3B_1C28 if self.flavor == "postgresql" else (0x27 << 48) | (0x758 << 16)
        self.tx_id = 780
        self.tx_left = 0
        self.last_commit: int | None = None
        self.commit: int = 0

    def next(self) -> tuple[Version, int, int | None]:
        """(version, tx_id, last_commit_lsn) of the next change."""
        rng = self.rng
        if self.tx_left == 0:
            self.tx_left = rng.randint(1, self.max_tx)
            self.tx_id += 1
            self.last_commit = self.commit or None
            # The tx's commit LSN lies after all of its changes (SQL Server commit_lsn).
            self.commit = self.lsn + self.tx_left * 512 + 1
        self.tx_left -= 1
        if self.flavor == "postgresql":
            self.lsn += 40 + int(rng.random() * 360)
            # commit order, then change order: a tx ranks after the commit it follows; the first
            # one (no commit before it, no snapshot) after its own LSN
            version: Version = (self.lsn if self.last_commit is None else self.last_commit,
                                self.lsn)
        else:
            self.lsn += 1 + int(rng.random() * 3)
            version = (_lsn_str(self.commit), _lsn_str(self.lsn), 1)
        if self.tx_left == 0:
            self.lsn = self.commit + 1
        return version, self.tx_id, self.last_commit


# --------------------------------------------------------------------------- encoding


def encode_decimal(unscaled: int) -> str:
    """Kafka Connect Decimal in JSON: `decimal_bytes`, base64."""
    return base64.b64encode(decimal_bytes(unscaled)).decode()


def _py_value(kind: str, v: Any) -> Any:
    if v is None:
        return None
    if kind == "decimal":
        return Decimal(v).scaleb(-DECIMAL_SCALE)
    if kind == "micro_ts":
        return EPOCH + timedelta(microseconds=v)
    return v


def _field_schema(name: str, kind: str, optional: bool = True) -> dict[str, Any]:
    base: dict[str, Any] = {
        "text": {"type": "string"},
        "int32": {"type": "int32"},
        "int64": {"type": "int64"},
        "bool": {"type": "boolean"},
        "decimal": {
            "type": "bytes",
            "name": "org.apache.kafka.connect.data.Decimal",
            "version": 1,
            "parameters": {
                "scale": str(DECIMAL_SCALE),
                "connect.decimal.precision": str(DECIMAL_PRECISION),
            },
        },
        "micro_ts": {"type": "int64", "name": "io.debezium.time.MicroTimestamp", "version": 1},
    }[kind]
    return {**base, "optional": optional, "field": name}


def _source_schema(flavor: str) -> dict[str, Any]:
    def f(name: str, typ: str, optional: bool = False) -> dict[str, Any]:
        return {"type": typ, "optional": optional, "field": name}

    fields = [
        f("version", "string"),
        f("connector", "string"),
        f("name", "string"),
        f("ts_ms", "int64"),
        {
            "type": "string",
            "optional": True,
            "name": "io.debezium.data.Enum",
            "version": 1,
            "parameters": {"allowed": "true,first,first_in_data_collection,last_in_data_collection,"
                           "last,false,incremental"},
            "default": "false",
            "field": "snapshot",
        },
        f("db", "string"),
        f("sequence", "string", True),
        f("ts_us", "int64", True),
        f("ts_ns", "int64", True),
        f("schema", "string"),
        f("table", "string"),
    ]
    if flavor == "postgresql":
        fields += [f("txId", "int64", True), f("lsn", "int64", True), f("xmin", "int64", True)]
        name = "io.debezium.connector.postgresql.Source"
    else:
        fields += [
            f("change_lsn", "string", True),
            f("commit_lsn", "string", True),
            f("event_serial_no", "int64", True),
        ]
        name = "io.debezium.connector.sqlserver.Source"
    return {"type": "struct", "fields": fields, "optional": False, "name": name, "field": "source"}


def decimal_bytes(unscaled: int) -> bytes:
    """Kafka Connect Decimal: big-endian two's-complement unscaled integer."""
    length = (unscaled + (unscaled < 0)).bit_length() // 8 + 1
    return unscaled.to_bytes(length, "big", signed=True)


class _Encoder:
    """Serializes changes to Debezium JSON or Avro; schemas are prepared once per table."""

    def __init__(self, spec: WorkloadSpec) -> None:
        self.spec = spec
        self.flavor = spec.connector
        self.kcols = spec.key_columns
        self.vcols = tuple(n for n, _ in spec.value_columns)
        self.dec_idx = tuple(i for i, (_, k) in enumerate(spec.value_columns) if k == "decimal")
        key_kinds = ("int32", "int64") if spec.composite_key else ("int64",)
        self.key_fields = [
            _field_schema(n, k, optional=False) for n, k in zip(self.kcols, key_kinds, strict=True)
        ]
        self.key_schema: dict[str, bytes] = {}
        self.value_schema: dict[str, bytes] = {}
        self.avro_key: dict[str, AvroSubjectWriter] = {}
        self.avro_value: dict[str, AvroSubjectWriter] = {}
        self.decimal = decimal_bytes if spec.encoding == "avro" else encode_decimal
        if spec.encoding == "avro" and not spec.registry_url:
            raise ValueError("encoding='avro' needs registry_url")
        for t in spec.tables:
            base = spec.topic(t)
            key_s = {"type": "struct", "fields": self.key_fields, "optional": False,
                     "name": f"{base}.Key"}
            row_fields = self.key_fields + [_field_schema(n, k) for n, k in spec.value_columns]
            row_s = {"type": "struct", "fields": row_fields, "optional": True,
                     "name": f"{base}.Value"}
            val_s = {
                "type": "struct",
                "fields": [
                    {**row_s, "field": "before"},
                    {**row_s, "field": "after"},
                    _source_schema(self.flavor),
                    {"type": "struct", "optional": True, "name": "event.block", "version": 1,
                     "field": "transaction", "fields": [
                         {"type": "string", "optional": False, "field": "id"},
                         {"type": "int64", "optional": False, "field": "total_order"},
                         {"type": "int64", "optional": False, "field": "data_collection_order"},
                     ]},
                    {"type": "string", "optional": False, "field": "op"},
                    {"type": "int64", "optional": True, "field": "ts_ms"},
                    {"type": "int64", "optional": True, "field": "ts_us"},
                    {"type": "int64", "optional": True, "field": "ts_ns"},
                ],
                "optional": False,
                "name": f"{base}.Envelope",
                "version": 2,
            }
            self.key_schema[t] = orjson.dumps(key_s)
            self.value_schema[t] = orjson.dumps(val_s)
            if spec.encoding == "avro":
                self.avro_key[t] = AvroSubjectWriter(spec.registry_url, f"{base}-key", key_s)
                self.avro_value[t] = AvroSubjectWriter(spec.registry_url, f"{base}-value", val_s)

    def _wrap(self, schema: bytes, payload: bytes) -> bytes:
        if not self.spec.schemas_enable:
            return payload
        return b'{"schema":' + schema + b',"payload":' + payload + b"}"

    def key(self, ch: Change) -> bytes:
        if self.avro_key:
            return self.avro_key[ch.table].frame(dict(zip(self.kcols, ch.key, strict=True)))
        return self._wrap(self.key_schema[ch.table], key_payload(self.spec, ch.key))

    def _row(self, key: Key, row: tuple[Any, ...] | None) -> dict[str, Any] | None:
        if row is None:
            return None
        if self.dec_idx:
            vals = list(row)
            for i in self.dec_idx:
                if vals[i] is not None:
                    vals[i] = self.decimal(vals[i])
            row = tuple(vals)
        d = dict(zip(self.kcols, key, strict=True))
        d.update(zip(self.vcols, row, strict=True))
        return d

    def value(self, ch: Change, ts_us: int | None = None) -> bytes:
        """`ts_us`: the source time to write (default: the change's generated one)."""
        spec = self.spec
        change_us = ch.ts_us if ts_us is None else ts_us
        source: dict[str, Any] = {
            "version": DEBEZIUM_VERSION,
            "connector": self.flavor,
            "name": spec.topic_prefix,
            "ts_ms": change_us // 1000,
            "snapshot": "false",
            "db": spec.database,
            "sequence": None,
            "ts_us": change_us,
            "ts_ns": change_us * 1000,
            "schema": spec.schema,
            "table": ch.table,
        }
        if self.flavor == "postgresql":
            last = None if ch.last_commit_lsn is None else str(ch.last_commit_lsn)
            _, lsn = ch.version
            source["sequence"] = orjson.dumps([last, str(lsn)]).decode()
            source.update(txId=ch.tx_id, lsn=lsn, xmin=None)
        else:
            commit_lsn, change_lsn, serial = ch.version
            source.update(change_lsn=change_lsn, commit_lsn=commit_lsn, event_serial_no=serial)
        # connector processing time: a little after a generated change, none for a live one
        ts_us = change_us + (20_000 if ts_us is None else 0)
        payload = {
            "before": self._row(ch.key, ch.before),
            "after": self._row(ch.key, ch.row),
            "source": source,
            "transaction": None,
            "op": ch.op,
            "ts_ms": ts_us // 1000,
            "ts_us": ts_us,
            "ts_ns": ts_us * 1000,
        }
        if self.avro_value:
            return self.avro_value[ch.table].frame(payload)
        return self._wrap(self.value_schema[ch.table], orjson.dumps(payload))


_ENCODERS: dict[WorkloadSpec, _Encoder] = {}


def _encoder(spec: WorkloadSpec) -> _Encoder:
    enc = _ENCODERS.get(spec)
    if enc is None:
        enc = _ENCODERS[spec] = _Encoder(spec)
    return enc


def encode(spec: WorkloadSpec, entry: Entry) -> tuple[bytes, bytes | None]:
    """Kafka (key, value) bytes of one entry; the value is None for a tombstone."""
    ch, tomb = entry
    enc = _encoder(spec)
    return enc.key(ch), (None if tomb else enc.value(ch))


# --------------------------------------------------------------------------- generation


def _new_row(kinds: Sequence[str], rng: random.Random, null_p: float) -> tuple[Any, ...]:
    out: list[Any] = []
    for kind in kinds:
        if null_p and rng.random() < null_p:
            out.append(None)
        elif kind == "text":
            out.append(f"item-{rng.getrandbits(32):08x}")
        elif kind == "int32":
            out.append(rng.getrandbits(32) - 2**31)
        elif kind == "int64":
            out.append(rng.getrandbits(63) - 2**62)
        elif kind == "decimal":
            out.append(int(rng.random() * 10_000_099_999) - 99_999)  # fits numeric(12,2)
        elif kind == "micro_ts":
            out.append(BASE_TS_US - int(rng.random() * 5 * 365 * 86_400_000_000))
        else:
            out.append(rng.random() < 0.5)
    return tuple(out)


def _key_of(spec: WorkloadSpec, k: int) -> tuple[str, Key]:
    """Key index -> (table, key tuple). Keys are spread over tables round-robin."""
    n = len(spec.tables)
    table, ident = spec.tables[k % n], k // n + 1
    if spec.composite_key:
        return table, (ident % spec.tenants + 1, ident)
    return table, (ident,)


def _pick_keys(spec: WorkloadSpec, rng: random.Random) -> list[int]:
    if spec.key_dist == "sequential":  # every key once before any key twice
        return [i % spec.keys for i in range(spec.events)]
    if spec.key_dist == "uniform":
        rnd, n = rng.random, spec.keys
        return [int(rnd() * n) for _ in range(spec.events)]
    cum = list(itertools.accumulate(1.0 / (r**spec.zipf_s) for r in range(1, spec.keys + 1)))
    return rng.choices(range(spec.keys), cum_weights=cum, k=spec.events)


def _perturb(
    units: list[Change], spec: WorkloadSpec, rng: random.Random, stats: dict[str, int]
) -> list[Change]:
    """Apply swaps (out-of-order, late-after-delete) and duplicates to one partition's units."""
    n = len(units)
    nxt = [-1] * n  # position of the next unit of the same key
    last: dict[tuple[str, Key], int] = {}
    for i in range(n - 1, -1, -1):
        k = (units[i].table, units[i].key)
        nxt[i] = last.get(k, -1)
        last[k] = i
    order = list(range(n))
    used = bytearray(n)

    def swap(i: int) -> bool:
        j = nxt[i]
        if j < 0 or used[i] or used[j]:
            return False
        used[i] = used[j] = 1
        order[i], order[j] = order[j], order[i]
        return True

    # Late events after a delete: swap a delete's predecessor (same key) with the delete.
    prev_of_delete = [i for i in range(n) if nxt[i] >= 0 and units[nxt[i]].op == "d"]
    rng.shuffle(prev_of_delete)
    n_dels = sum(1 for u in units if u.op == "d")
    want = round(n_dels * spec.late_after_delete_pct / 100)
    for i in prev_of_delete[:want]:
        stats["late_after_delete"] += swap(i)
    # Plain out-of-order: swap an event with the next event of the same key.
    want = round(n * spec.out_of_order_pct / 100)
    candidates = [i for i in range(n) if nxt[i] >= 0]
    done = 0
    for _ in range(want * 20):
        if done >= want or not candidates:
            break
        done += swap(candidates[rng.randrange(len(candidates))])
    stats["out_of_order"] += done
    # Duplicates: re-emit a unit up to dup_window positions later, but before the next unit of
    # the same key, so that it arrives while its version is still the key's current one.
    after = [-1] * n  # next position of the same key, in the swapped order
    last.clear()
    for p in range(n - 1, -1, -1):
        k = (units[order[p]].table, units[order[p]].key)
        after[p] = last.get(k, -1)
        last[k] = p
    placed: list[tuple[float, int]] = [(float(p), u) for p, u in enumerate(order)]
    n_dup = round(n * spec.duplicates_pct / 100) if n else 0
    window = max(1, spec.dup_window)
    for _ in range(n_dup):
        p = int(rng.random() * n)
        room = window if after[p] < 0 else min(window, after[p] - p)
        placed.append((p + 0.5 + int(rng.random() * room), order[p]))
    stats["duplicates_injected"] += n_dup
    placed.sort(key=lambda t: t[0])
    return [units[u] for _, u in placed]


def generate(spec: WorkloadSpec) -> Workload:
    """Generate a workload deterministically from `spec.seed`, and its oracle."""
    enabled = gc.isenabled()
    gc.disable()  # millions of small objects and no cycles: the collector only costs time
    try:
        return _generate(spec)
    finally:
        if enabled:
            gc.enable()


def _generate(spec: WorkloadSpec) -> Workload:
    if spec.keys < 1 or spec.partitions < 1 or not spec.tables:
        raise ValueError("keys, partitions and tables must be non-empty")
    rng = random.Random(spec.seed)
    kinds = [k for _, k in spec.value_columns]
    null_p = spec.null_pct / 100
    del_p = spec.deletes_pct / 100
    versions = _Versions(spec, rng)
    stats = dict.fromkeys(
        ("inserts", "updates", "deletes", "out_of_order", "late_after_delete",
         "duplicates_injected"), 0)
    state: dict[int, tuple[Any, ...]] = {}  # live row per key index
    ts_us = BASE_TS_US
    units: dict[tuple[str, int], list[Change]] = {
        (spec.topic(t), p): [] for t in spec.tables for p in range(spec.partitions)
    }
    part_cache: dict[int, tuple[str, Key, tuple[str, int]]] = {}
    for k in _pick_keys(spec, rng):
        ref = part_cache.get(k)
        if ref is None:
            table, key = _key_of(spec, k)
            ref = part_cache[k] = (table, key, (spec.topic(table), partition_of(spec, key)))
        table, key, tp = ref
        cur = state.get(k)
        ts_us += 1 + int(rng.random() * 100)
        version, tx_id, last_commit = versions.next()
        if cur is None:
            row = state[k] = _new_row(kinds, rng, null_p)
            ch = Change(table, key, "c", version, row, None, ts_us, tx_id, last_commit)
            stats["inserts"] += 1
        elif rng.random() < del_p:
            del state[k]
            ch = Change(table, key, "d", version, None, cur, ts_us, tx_id, last_commit)
            stats["deletes"] += 1
        else:
            row = state[k] = _new_row(kinds, rng, null_p)
            ch = Change(table, key, "u", version, row, cur, ts_us, tx_id, last_commit)
            stats["updates"] += 1
        units[tp].append(ch)
    del part_cache, state  # per-key bookkeeping: gone before the oracle's own per-key maps

    arrivals: dict[tuple[str, int], list[Entry]] = {}
    for tp in sorted(units):
        out: list[Entry] = []
        for ch in _perturb(units[tp], spec, rng, stats):
            out.append((ch, False))
            if ch.op == "d" and spec.tombstones:
                out.append((ch, True))  # the tombstone travels with its delete
        arrivals[tp] = out
    oracle = simulate(arrivals, spec)
    stats["messages"] = sum(len(v) for v in arrivals.values())
    return Workload(spec, arrivals, oracle, stats)


# --------------------------------------------------------------------------- oracle


def simulate(arrivals: Mapping[tuple[str, int], Sequence[Entry]], spec: WorkloadSpec) -> Oracle:
    """LWW in arrival order: per key, a higher version applies, an equal one is a duplicate,
    a lower one is stale (audit row with the version applied at that time). Tombstones have no
    outcome. Assumes each key lives in one partition (per-key order = partition order)."""
    kinds = {n: k for n, k in spec.value_columns}
    cols = [n for n, _ in spec.value_columns]
    oracle = Oracle()
    current: dict[tuple[str, Key], Change] = {}
    for (topic, partition), entries in arrivals.items():
        for offset, (ch, tomb) in enumerate(entries):
            if tomb:
                oracle.tombstones += 1
                continue
            k = (ch.table, ch.key)
            cur = current.get(k)
            if cur is None or ch.version > cur.version:
                current[k] = ch
                oracle.applied += 1
            elif ch.version == cur.version:
                oracle.duplicates += 1
            else:
                oracle.stale[(topic, partition, offset)] = StaleEvent(
                    topic, partition, offset, ch.table, ch.key, ch.version, cur.version
                )
    for t in spec.tables:
        oracle.rows[t] = {}
    for (table, key), ch in current.items():
        oracle.versions[(table, key)] = ch.version
        if ch.op == "d" or ch.row is None:
            oracle.deleted.add((table, key))
            continue
        row = dict(zip(spec.key_columns, key, strict=True))
        for n, v in zip(cols, ch.row, strict=True):
            row[n] = _py_value(kinds[n], v)
        oracle.rows.setdefault(table, {})[key] = row
    return oracle


# --------------------------------------------------------------------------- producing


def produce(
    workload: Workload,
    bootstrap: str,
    create_topics: bool = True,
    rate: float | None = None,
    timeout_s: float = 300.0,
    extra_config: Mapping[str, Any] | None = None,
    live_source_time: bool = False,
) -> int:
    """Write every message to Kafka in order; return the message count.
    `live_source_time`: stamp each change's source time (`source.ts_ms`) as it is sent.

    Topics must be new or empty: offsets must equal list indices for the oracle to hold, and
    this is verified from the delivery reports. `rate` caps messages per second (None: no cap).
    Raises RuntimeError on any delivery error or timeout.
    """
    from confluent_kafka import Producer

    deadline = time.monotonic() + timeout_s
    if create_topics:
        create_workload_topics(workload, bootstrap)

    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 500_000,
        "queue.buffering.max.kbytes": 1_048_576,
    }
    conf.update(extra_config or {})
    producer = Producer(conf)
    errors: list[str] = []
    delivered: dict[tuple[str, int], list[int]] = {}  # tp -> [count, max offset]

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")
            return
        d = delivered.setdefault((msg.topic(), msg.partition()), [0, -1])
        d[0] += 1
        d[1] = max(d[1], msg.offset())

    total = workload.message_count
    streams = [
        (tp, workload.iter_partition(*tp, source_time=now_us if live_source_time else None))
        for tp in sorted(workload.arrivals)
        if workload.arrivals[tp]
    ]
    sent = 0
    started = time.monotonic()
    while streams:  # round-robin over partitions, one message at a time
        alive = []
        for (topic, partition), it in streams:
            msg = next(it, None)
            if msg is None:
                continue
            alive.append(((topic, partition), it))
            while True:
                try:
                    producer.produce(topic, value=msg[1], key=msg[0], partition=partition,
                                     on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)
                    if time.monotonic() > deadline:
                        raise RuntimeError("produce: timed out waiting for queue space") from None
            sent += 1
            if errors:
                raise RuntimeError(f"produce: delivery failed: {errors[0]}")
            if sent % 100_000 == 0:
                producer.poll(0)
                el = time.monotonic() - started
                print(f"produced {sent}/{total} ({sent / el:,.0f} msg/s)", file=sys.stderr)
            if rate and sent % max(1, int(rate // 100)) == 0:
                producer.poll(0)
                ahead = started + sent / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        streams = alive
    remaining = producer.flush(max(0.0, deadline - time.monotonic()))
    if remaining:
        raise RuntimeError(f"produce: {remaining} messages still undelivered at timeout")
    if errors:
        raise RuntimeError(f"produce: {len(errors)} delivery errors, first: {errors[0]}")
    for tp, entries in workload.arrivals.items():
        if entries and delivered.get(tp) != [len(entries), len(entries) - 1]:
            raise RuntimeError(f"produce: {tp} offsets {delivered.get(tp)} != [{len(entries)}, "
                               f"{len(entries) - 1}]; was the topic empty?")
    return sent


def create_workload_topics(workload: Workload, bootstrap: str) -> None:
    """The workload's topics, with its partition count; existing ones must be empty."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    partitions = workload.spec.partitions
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in workload.topics]
    for topic, fut in admin.create_topics(new, operation_timeout=30).items():
        try:
            fut.result(timeout=60)
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
            _check_empty(bootstrap, topic, partitions)


def _check_empty(bootstrap: str, topic: str, partitions: int) -> None:
    """Raise unless an existing topic has `partitions` partitions, all with high watermark 0."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "workload-check",
                  "enable.auto.commit": False})
    try:
        meta = c.list_topics(topic, timeout=30).topics[topic]
        if len(meta.partitions) != partitions:
            raise RuntimeError(f"{topic} has {len(meta.partitions)} partitions, want {partitions}")
        for p in range(partitions):
            _, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            if high != 0:
                raise RuntimeError(f"{topic}[{p}] is not empty (high watermark {high})")
    finally:
        c.close()


# --------------------------------------------------------------------------- CLI


def _main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--tables", default="customers,orders")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--duplicates-pct", type=float, default=2.0)
    ap.add_argument("--out-of-order-pct", type=float, default=2.0)
    ap.add_argument("--deletes-pct", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--topic-prefix", default="bench")
    ap.add_argument("--connector", choices=["postgresql", "sqlserver"], default="postgresql")
    ap.add_argument("--no-schemas", action="store_true")
    ap.add_argument("--bootstrap", help="produce to this Kafka; omit to only generate")
    ap.add_argument("--rate", type=float)
    a = ap.parse_args(argv)
    spec = WorkloadSpec(
        events=a.events, keys=a.keys, tables=tuple(a.tables.split(",")), partitions=a.partitions,
        duplicates_pct=a.duplicates_pct, out_of_order_pct=a.out_of_order_pct,
        deletes_pct=a.deletes_pct, seed=a.seed, topic_prefix=a.topic_prefix,
        connector=a.connector, schemas_enable=not a.no_schemas,
    )
    t0 = time.monotonic()
    wl = generate(spec)
    print(f"generated {wl.message_count} messages in {time.monotonic() - t0:.2f}s: "
          f"{wl.stats} oracle {wl.oracle.counts}", file=sys.stderr)
    if a.bootstrap:
        t0 = time.monotonic()
        produce(wl, a.bootstrap, rate=a.rate)
        print(f"produced in {time.monotonic() - t0:.2f}s", file=sys.stderr)


if __name__ == "__main__":
    _main()
