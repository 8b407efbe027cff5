"""The live chain with Avro: source Postgres → Debezium with Apicurio's Avro converter (keys and
values, schemas in the local registry) → Kafka → the replicator reading them through the
registry → target Postgres; after a workload the target equals the source, column by column."""

from __future__ import annotations

import json

import psycopg
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from benchmarks.replicator_run import Run
from tests.e2e.chain import LiveSource, end_offsets, topic_messages
from tests.e2e.source_tables import ACCOUNTS_TABLE, DOC, TABLES, differences
from tests.e2e.test_live_chain import (
    OPERATIONS,
    rejected,
    toast_lost_by_key_updates,
    unexplained,
    wait_applied,
)
from tests.e2e.workload import Workload, mark_end, run_writers, seed

pytestmark = pytest.mark.e2e


def key_schema_registered_before(registry: SchemaRegistryClient, topic: str) -> int:
    """The key schema the connector writes for `accounts` (`topic`), registered first under
    another subject; returns its id. The connector's registration then finds that content: a new
    global id, the old content id (the id the Confluent API serves). In a fresh registry the two
    are equal, so a converter framing messages with the wrong one would pass unnoticed."""
    text = json.dumps({
        "type": "record", "name": "Key", "namespace": topic,
        "fields": [{"name": "region", "type": "string"}, {"name": "id", "type": "int"}],
        "connect.name": f"{topic}.Key"}, separators=(",", ":"))
    return registry.register_schema(f"{topic}-earlier", Schema(text, "AVRO"))


def test_the_target_equals_the_source_after_a_live_workload_in_avro(
        run: Run, live: LiveSource, schema_registry_url: str):
    registry = SchemaRegistryClient({"url": schema_registry_url})
    earlier = key_schema_registered_before(registry, live.topic(ACCOUNTS_TABLE.name))
    workload = Workload(seed=1717)
    seed(live.dsn, workload, rows=100)
    live.format = "avro"
    live.partitions = 2
    live.start()
    live.wait_streaming()
    run.topics += live.wait_topics([t.name for t in TABLES])
    run.extra_env["REPLICATE_SCHEMA_REGISTRY_URL"] = schema_registry_url
    run.start()
    run_writers(live.dsn, workload, writers=2, transactions=100)
    live.wait_flushed(mark_end(live.dsn, workload))
    wait_applied(run, end_offsets(run.bootstrap, run.topics))

    framed = topic_messages(run.bootstrap, live.topic(ACCOUNTS_TABLE.name))
    # Magic byte 0 and the key schema's content id; values framed alike.
    assert {m.key()[:5] for m in framed if m.key()} == {b"\0" + earlier.to_bytes(4, "big")}
    assert all(m.value()[0] == 0 for m in framed if m.value())
    assert set(workload.done) == OPERATIONS, workload.done
    with psycopg.connect(live.dsn) as source, psycopg.connect(run.dsn) as target:
        lost_doc = {DOC.name: workload.moved_to}
        found = [d for table in TABLES
                 for d in differences(source, target, run.schema, table, lost_doc)]
        assert found == [], "\n".join(found)
        assert toast_lost_by_key_updates(source, target, run.schema, workload.moved_to) > 0
    assert unexplained(rejected(run), live.topic(ACCOUNTS_TABLE.name)) == []
    assert run.stop() == [0]
