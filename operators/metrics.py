"""Prometheus metrics of the replicator, served on `REPLICATE_METRICS_PORT` (`operators/health.py`).

Counts are made per commit, never per event: the shard step tallies its decided batch by
(table, op, outcome) (`ShardBatch.counts`) and the committer adds them once Postgres confirmed
the transaction. What each metric means and which alert reads it: docs/operations.md "Metrics
and alerts".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from operators.pg_writer import ShardBatch

# Label values where a count has no table or op (documented in docs/operations.md).
NO_TABLE = ""  # a DLQ row (it never decoded to a table), or a native batch not split by table
NO_OP = ""  # a DLQ row, or an event decided natively (the native step does not count by op)
OUTCOMES = ("applied", "duplicate", "stale", "dlq")

EVENTS = Counter(
    "replicate_events_total", "Change events committed, by table, op and outcome",
    ["table", "op", "outcome"])
COMMITS = Counter("replicate_commits_total", "Postgres transactions committed by shards")
COMMIT_SECONDS = Histogram(
    "replicate_commit_seconds", "Duration of one commit (LWW, RocksDB and the Postgres "
    "transaction)", buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
BATCH_EVENTS = Histogram(
    "replicate_batch_events", "Events (and DLQ rows) in one commit",
    buckets=(1, 10, 50, 100, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000))
END_TO_END_SECONDS = Histogram(
    "replicate_end_to_end_seconds", "Source change time to Postgres commit, of sampled changes "
    "(the first message of a source batch, at most one per partition per 0.1 s)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800))
LAG = Gauge(
    "replicate_lag_messages", "Kafka end offset minus the flow's committed offset, per partition "
    "this process reads", ["topic", "partition"])
RETRIES = Counter("replicate_retries_total", "Transient failures retried", ["what"])
DLQ_ROWS = Gauge("replicate_dlq_rows", "Rows of the flow in cdc.dlq (the same in every process)")
SCHEMA_CHANGES = Counter(
    "replicate_schema_changes_total", "Target tables this process created or altered", ["table"])
RESTARTS = Counter("replicate_restarts_total", "Cluster restarts by the supervisor")
# Set by `replicate run` (flows/supervisor.py) for the processes it starts: its restarts so far.
RESTARTS_ENV = "REPLICATE_RESTARTS"

# `replicate_retries_total{what}`: the system whose failure was retried.
POSTGRES, KAFKA, SCHEMA_REGISTRY, OTHER = "postgres", "kafka", "schema_registry", "other"


def count_commit(batches: list[ShardBatch]) -> None:
    """Add one committed transaction: its shard batches' tallies and DLQ rows."""
    total = 0
    for batch in batches:
        for labels, events in batch.counts.items():
            if events:
                EVENTS.labels(*labels).inc(events)
                total += events
        if batch.dlq:
            EVENTS.labels(NO_TABLE, NO_OP, "dlq").inc(len(batch.dlq))
            total += len(batch.dlq)
    COMMITS.inc()
    BATCH_EVENTS.observe(total)


def count_restarts(environ: Mapping[str, str]) -> None:
    """Start `replicate_restarts_total` at the supervisor's count: every restart starts new
    processes, so the count outlives them only in their environment."""
    value = environ.get(RESTARTS_ENV, "")
    if value.isdigit():
        RESTARTS.inc(int(value))


def retried_system(exc: BaseException) -> str:
    """The `what` label of a retried failure: the system that failed, by the exception's
    package (a handful of values, whatever the operation)."""
    package = type(exc).__module__
    if package.startswith("psycopg"):
        return POSTGRES
    if package.startswith(("httpx", "confluent_kafka.schema_registry")):
        return SCHEMA_REGISTRY
    if package.startswith(("confluent_kafka", "cimpl")):
        return KAFKA
    return OTHER
