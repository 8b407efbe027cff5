"""What the metrics count: a decided batch by (table, op, outcome), DLQ rows, retries by system,
and the end-to-end latency samples from source change time to commit."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import psycopg
from confluent_kafka import KafkaError, KafkaException
from prometheus_client import REGISTRY

from operators import metrics
from operators.events import ChangeEvent, DlqRecord, Op, RawMessage, TableName
from operators.lww import KeyState, decide_batch
from operators.native_shard import native_counts
from operators.pg_writer import ShardBatch
from operators.retry import retrying
from operators.source_watch import SourceWatch, change_time

A, B = TableName("public", "a"), TableName("public", "b")


def event(table: TableName, key: int, version: int, op: Op = Op.UPSERT) -> ChangeEvent:
    return ChangeEvent(table=table, key_columns=("id",), key=(key,), op=op,
                       version=version.to_bytes(4, "big"),
                       values=None if op is Op.DELETE else {"id": key}, schema=None, topic="t",
                       partition=0, offset=0)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_python_batch_is_counted_by_table_op_and_outcome():
    stored = event(A, 1, 5)
    events = [event(A, 1, 6), event(A, 1, 6), event(A, 2, 1, Op.DELETE), event(A, 1, 3),
              event(B, 7, 2), event(B, 7, 1, Op.DELETE)]
    decision = decide_batch(events, {stored.row_id: KeyState(stored.version, False)}, {})
    assert decision.counts == {
        ("public.a", "upsert", "applied"): 1, ("public.a", "upsert", "duplicate"): 1,
        ("public.a", "upsert", "stale"): 1, ("public.a", "delete", "applied"): 1,
        ("public.b", "upsert", "applied"): 1, ("public.b", "delete", "stale"): 1,
        ("public.b", "delete", "applied"): 0}


@dataclass
class FakeSchema:
    table: TableName


class FakeRun(list):
    """What `native_counts` reads of a run: its table and its number of events."""

    def __init__(self, table: TableName, events: int) -> None:
        super().__init__(range(events))
        self.schema = FakeSchema(table)


def test_a_native_batch_of_one_table_is_counted_by_table_and_outcome():
    runs = [FakeRun(A, 10), FakeRun(A, 5)]
    assert native_counts(runs, 2, [1, 1, 0]) == {
        ("public.a", "", "applied"): 10, ("public.a", "", "duplicate"): 2,
        ("public.a", "", "stale"): 3}


def test_a_native_batch_of_several_tables_without_duplicates_is_split_by_table():
    runs = [FakeRun(A, 10), FakeRun(B, 5)]
    assert native_counts(runs, 0, [1]) == {
        ("public.a", "", "applied"): 10, ("public.a", "", "duplicate"): 0,
        ("public.b", "", "applied"): 4, ("public.b", "", "duplicate"): 0,
        ("public.b", "", "stale"): 1}


def test_duplicates_among_several_tables_go_under_no_table_but_stale_keeps_its_table():
    runs = [FakeRun(A, 10), FakeRun(B, 5)]
    assert native_counts(runs, 3, [1, 0]) == {
        ("public.b", "", "stale"): 1, ("public.a", "", "stale"): 1,
        ("", "", "applied"): 10, ("", "", "duplicate"): 3}


def test_a_commit_adds_its_batches_counts_and_dlq_rows_once():
    batch = ShardBatch(shard=0, seq=1, counts={("public.c", "upsert", "applied"): 4})
    batch.dlq = [DlqRecord("t", 0, 9, None, b"x", "bad_json", "bad")]
    before = (sample("replicate_events_total", table="public.c", op="upsert", outcome="applied"),
              sample("replicate_events_total", table="", op="", outcome="dlq"),
              sample("replicate_commits_total"), sample("replicate_batch_events_sum"))
    metrics.count_commit([batch])
    after = (sample("replicate_events_total", table="public.c", op="upsert", outcome="applied"),
             sample("replicate_events_total", table="", op="", outcome="dlq"),
             sample("replicate_commits_total"), sample("replicate_batch_events_sum"))
    assert [b - a for a, b in zip(before, after, strict=True)] == [4, 1, 1, 5]


def test_retries_are_counted_by_the_system_that_failed():
    failures = [psycopg.OperationalError("down"), KafkaException(KafkaError(KafkaError._TRANSPORT))]
    before = sample("replicate_retries_total", what="postgres"), sample(
        "replicate_retries_total", what="kafka")

    def call() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    assert retrying("x", call, cap_s=0.001, transient=lambda exc: True) == "done"
    assert (sample("replicate_retries_total", what="postgres") - before[0],
            sample("replicate_retries_total", what="kafka") - before[1]) == (1, 1)


def envelope(source: dict) -> bytes:
    return orjson.dumps({"schema": {"type": "struct"},
                         "payload": {"after": {"id": 1}, "source": source, "op": "u",
                                     "ts_ms": 1}})


def test_the_change_time_is_the_source_time_of_a_debezium_message():
    assert change_time(envelope({"ts_ms": 1_700_000_000_123})) == 1_700_000_000.123
    assert change_time(envelope({"ts_ms": 1_700_000_000_123, "ts_us": 1_700_000_000_123_456})
                       ) == 1_700_000_000.123456
    assert change_time(orjson.dumps({"source": {"ts_ms": 2000}})) == 2.0  # without schemas
    assert change_time(b"\x00\x00\x00\x00\x01avro") is None
    assert change_time(envelope({"name": "no time"})) is None
    assert change_time(None) is None


def test_a_sample_is_observed_once_a_commit_passes_its_offset():
    watch = SourceWatch()
    message = RawMessage("t", 0, 41, b"k", envelope({"ts_ms": 1_000}))
    watch.note("t", 0, [message], end=50)
    count = sample("replicate_end_to_end_seconds_count")
    watch.committed([ShardBatch(shard=0, seq=1, offsets={("t", 0): 41})])
    assert sample("replicate_end_to_end_seconds_count") == count  # offset 41 not committed
    watch.committed([ShardBatch(shard=0, seq=2, offsets={("t", 0): 42})])
    assert sample("replicate_end_to_end_seconds_count") == count + 1
    assert watch.ends() == {("t", 0): 50}
    watch.committed([ShardBatch(shard=0, seq=3, offsets={("t", 0): 60})])
    assert sample("replicate_end_to_end_seconds_count") == count + 1  # observed once
