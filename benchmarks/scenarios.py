"""Benchmark scenarios: what data, which systems, what is measured."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmarks.stats import TARGET_VS_CEILING

ALL_SYSTEMS = ("replicator", "replicator-py", "kafka-read", "ceiling", "naive", "jdbc")


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    kind: str  # "backlog" | "latency" | "memory" | "scylla"
    spec: dict[str, Any] = field(default_factory=dict)  # WorkloadSpec (ScyllaSpec) fields
    systems: tuple[str, ...] = ALL_SYSTEMS
    profile: bool = True
    rate: float | None = None  # latency: produce rate, messages/s
    memory_keys: tuple[int, ...] = ()  # memory: distinct-key counts
    events_per_key: float = 1.2  # memory: true changes per key of the key space
    target_vs_ceiling: float = TARGET_VS_CEILING  # the target for replicator / ceiling


REFERENCE_SPEC: dict[str, Any] = dict(
    events=300_000, keys=100_000, tables=("customers", "orders", "products"), columns=6,
    partitions=4, duplicates_pct=2.0, out_of_order_pct=2.0, deletes_pct=5.0,
    connector="postgresql", schemas_enable=True, seed=7,
)

SCYLLA_SPEC: dict[str, Any] = dict(
    events=300_000, keys=100_000, partitions=4, deletes_pct=8.0, ties_pct=1.0, replay_pct=2.0,
    out_of_order_pct=1.0, seed=7,
)
SCYLLA_SYSTEMS = ("replicator", "kafka-read", "ceiling")
SCYLLA_TARGET_VS_CEILING = 0.4  # issue 18

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "reference",
            "Backlog of ~320k Debezium JSON messages (with schemas): 3 tables × 6 columns, 100k "
            "keys, 2% duplicates, 2% out-of-order, 5% deletes (+ tombstones), 4 partitions. "
            "Every system reads the same topics (the ceiling gets the same events pre-decoded).",
            "backlog", REFERENCE_SPEC,
        ),
        Scenario(
            "reference-avro",
            "The reference backlog with Avro keys and values (Confluent wire format, schemas in "
            "the local registry, as Debezium's AvroConverter writes them) instead of JSON with "
            "schemas. `naive` and `jdbc` are not run: the hand-written loop reads JSON only, and "
            "Kafka Connect needs Confluent's AvroConverter, which is not on Maven Central.",
            "backlog", {**REFERENCE_SPEC, "encoding": "avro"},
            systems=("replicator", "kafka-read", "ceiling"),
        ),
        Scenario(
            "smoke",
            "Tiny backlog for CI: the reference shape with 3k changes and 500 keys.",
            "backlog", {**REFERENCE_SPEC, "events": 3_000, "keys": 500},
            systems=("replicator", "kafka-read", "ceiling", "naive"),
        ),
        Scenario(
            "smoke-avro",
            "Tiny Avro backlog for CI: the smoke shape in the Confluent wire format.",
            "backlog", {**REFERENCE_SPEC, "events": 3_000, "keys": 500, "encoding": "avro"},
            systems=("replicator", "kafka-read", "ceiling"),
        ),
        Scenario(
            "scylla",
            "Backlog of ScyllaDB CDC changes in the connector's legacy format (JSON with "
            "schemas; benchmarks/workload_scylla.py): 300k CQL statements on 100k rows of two "
            "tables (`orders` with a clustering key, `carts` without), inserts with a row marker, "
            "partial updates of 1-3 columns, cells set to NULL, row and partition deletes (each "
            "with a Kafka tombstone), 1% write-time ties, 2% re-delivered runs, 1% swapped "
            "changes of a row, 4 partitions. Checked against the independent cell oracle "
            "(benchmarks/cell_oracle.py). The ceiling stages, per batch, the rows as the oracle "
            "reconciles them, with their cell versions (docs/performance.md, \"ScyllaDB\").",
            "scylla", SCYLLA_SPEC, systems=SCYLLA_SYSTEMS, profile=False,
            target_vs_ceiling=SCYLLA_TARGET_VS_CEILING,
        ),
        Scenario(
            "scylla-smoke",
            "Tiny ScyllaDB backlog for CI: the scylla shape with 3k statements and 500 rows.",
            "scylla", {**SCYLLA_SPEC, "events": 3_000, "keys": 500}, systems=SCYLLA_SYSTEMS,
            profile=False, target_vs_ceiling=SCYLLA_TARGET_VS_CEILING,
        ),
        Scenario(
            "latency",
            "Steady input at 10k messages/s for ~30 s into an already running replicator; "
            "end-to-end latency of each row's last applied event, source time (`source.ts_ms`, "
            "stamped as the change is sent) → Postgres commit. 1M-key space, so most events are "
            "the last of their key and get measured.",
            "latency", {**REFERENCE_SPEC, "events": 290_000, "keys": 1_000_000},
            systems=("replicator",), profile=False, rate=10_000,
        ),
        Scenario(
            "memory",
            "Distinct-key scaling: peak RSS of the replicator process for a backlog that puts "
            "100k, 1M and 10M distinct keys in state: every key inserted once, in key order "
            "(plus 2% duplicate deliveries), Debezium JSON with schemas. Rows have one non-key "
            "column so that the harness's own oracle of 10M rows fits this machine's RAM; a "
            "key's state in the replicator does not depend on the row's width.",
            "memory", {**REFERENCE_SPEC, "key_dist": "sequential", "columns": 1},
            systems=("replicator",), profile=False, events_per_key=1.0,
            memory_keys=(100_000, 1_000_000, 10_000_000),
        ),
    )
}
