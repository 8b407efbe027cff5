"""Spans of the hot path, exported by the SDK's in-memory exporter: real messages from Kafka
through the source part (poll), the decode step (decode) and the shard sink against Postgres
(lww, commit), with their topic, partition, shard and table attributes. And the opt-in export
`OTEL_TRACES_EXPORTER` turns on in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Producer
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from benchmarks.replicator_run import drop_flows
from operators import tracing
from operators.decode_step import DecodeStep
from operators.events import ProgressMarker, TableName, raw_messages
from operators.kafka_source import KafkaCdcSource, list_partitions, part_name
from operators.offsets import register_flow
from operators.settings import Settings
from operators.shard_sink import ShardPartition, shard_number
from schemas.control import ensure_control_schema
from tests.unit.debezium_samples import customer_row, pg_message

ROOT = Path(__file__).resolve().parents[2]
SHARDS = 4


@pytest.fixture(scope="module")
def exporter():
    """An SDK tracer provider for this module's tests (the API allows setting one once per
    process, so it is put in place and taken away directly)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trace, "_TRACER_PROVIDER", provider)
        yield exporter
    provider.shutdown()


def produce_changes(bootstrap: str, topic: str) -> int:
    """Three customers inserted, then an update of the first older than its insert (stale)."""
    changes = [pg_message("c", after=customer_row(1001 + k), lsn=1000 + k) for k in range(3)]
    changes.append(pg_message("u", before=customer_row(1001),
                              after=customer_row(1001, first_name="Old"), lsn=999))
    producer = Producer({"bootstrap.servers": bootstrap})
    for change in changes:
        producer.produce(topic, change.value, change.key, partition=0)
    assert producer.flush(10) == 0
    return len(changes)


def replicate(settings: Settings, expected: int) -> None:
    """The flow's three steps in process, on one worker thread, until `expected` messages
    are committed."""
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        ensure_control_schema(conn)
        register_flow(conn, settings)
    decode = DecodeStep(settings)
    (topic, partition), = list_partitions(settings)
    source = KafkaCdcSource(settings, [(topic, partition)])
    part = source.build_part("kafka", part_name(topic, partition), None)
    shards = [ShardPartition(settings, number) for number in range(settings.shards)]
    read, deadline = 0, time.monotonic() + 30
    while read < expected:
        assert time.monotonic() < deadline, f"read {read} of {expected} messages in 30 s"
        batch = part.next_batch()
        read += sum(1 for _ in raw_messages(i for i in batch if type(i) is not ProgressMarker))
        for name, items in decode(batch):
            shards[shard_number(name)].write_batch([items])
    for shard in shards:
        shard.close()
    part.close()


def named(spans: tuple[ReadableSpan, ...], name: str) -> list[dict]:
    return [dict(span.attributes) for span in spans if span.name == name]


@pytest.mark.integration
@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_poll_decode_lww_and_commit_spans_carry_where_the_batch_came_from_and_went(
        exporter, kafka_bootstrap, pg_dsn, make_topic, tmp_path, native):
    topic = make_topic("traced")
    name = f"trace{uuid.uuid4().hex[:10]}"
    settings = Settings(topics=topic, kafka_bootstrap=kafka_bootstrap, pg_dsn=pg_dsn,
                        state_dir=tmp_path, flow_id=name, target_schema=name, shards=SHARDS,
                        native_decode=native, native_fetch=native)
    messages = produce_changes(kafka_bootstrap, topic)
    exporter.clear()
    try:
        replicate(settings, messages)
    finally:
        drop_flows(pg_dsn, name)
    spans = exporter.get_finished_spans()
    table = str(TableName(name, topic))

    polls = named(spans, "poll")
    assert {(p["cdc.topic"], p["cdc.partition"]) for p in polls} == {(topic, 0)}
    assert sorted((p["cdc.offset"], p["cdc.next_offset"]) for p in polls)[0][0] == 0
    assert max(p["cdc.next_offset"] for p in polls) == messages

    decodes = named(spans, "decode")
    assert {(d["cdc.topics"], d["cdc.partitions"]) for d in decodes} == {
        ((topic,), (f"{topic}[0]",))}
    routed = {shard for d in decodes for shard in d["cdc.shards"]}
    assert routed == set(range(SHARDS))  # the markers reach every shard

    decided = [d for d in named(spans, "lww") if d.get("cdc.tables")]
    assert decided and all(d["cdc.tables"] == (table,) for d in decided)
    assert all(set(d["cdc.shards"]) <= routed for d in decided)

    commits = named(spans, "commit")
    assert {t for c in commits for t in c["cdc.tables"]} == {table}
    assert sum(c["cdc.events"] for c in commits) == messages  # three applied, one stale
    assert commits and all(set(c["cdc.shards"]) <= routed for c in commits)


def test_spans_are_made_only_when_an_sdk_records_them(exporter):
    exporter.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trace, "_TRACER_PROVIDER", None)  # only the API, as in production
        assert not tracing.recording()
        with tracing.span("decode", lambda: pytest.fail("attributes computed")) as span:
            assert not span.is_recording()
    with tracing.span("decode", lambda: {"cdc.items": 2}) as span:
        assert span.is_recording()
    assert [(s.name, dict(s.attributes)) for s in exporter.get_finished_spans()] == [
        ("decode", {"cdc.items": 2})]


EXPORT_SCRIPT = """
from opentelemetry import trace
from operators import tracing
print("installed:", tracing.configure_export())
with tracing.span("commit", lambda: {"cdc.shards": [3]}):
    pass
if tracing.recording():
    trace.get_tracer_provider().shutdown()  # flushes the batch processor
"""


@pytest.mark.parametrize("exporter_name", ["console", None])
def test_otel_traces_exporter_turns_the_export_on(exporter_name):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if exporter_name:
        env |= {"OTEL_TRACES_EXPORTER": exporter_name, "OTEL_SERVICE_NAME": "replicate-test"}
    done = subprocess.run([sys.executable, "-c", EXPORT_SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    if exporter_name:
        assert "installed: True" in done.stdout and '"name": "commit"' in done.stdout
        assert '"service.name": "replicate-test"' in done.stdout
    else:
        assert done.stdout.strip() == "installed: False"
