"""End to end through the replicator process: a source table that gains columns mid-stream, and
messages whose key is not the existing target table's primary key."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from psycopg import sql

from benchmarks.replicator_run import Run, table_rows
from tests.unit import debezium_samples as ds

pytestmark = pytest.mark.integration
V1_FIELDS = [ds.field("id", "int32", optional=False), ds.field("name", "string")]
V2_FIELDS = [*V1_FIELDS, ds.field("note", "string"), ds.field("qty", "int32")]
KEY_FIELDS = [ds.field("id", "int32", optional=False)]


@pytest.fixture
def run(kafka_bootstrap, pg_dsn, tmp_path):
    run = Run(kafka_bootstrap, pg_dsn, tmp_path / "state")
    yield run
    run.cleanup()


def _message(topic: str, fields: list[dict[str, Any]] | None, row: dict[str, Any],
             lsn: int) -> tuple[bytes, bytes]:
    """(key, value) of a Postgres connector upsert; without `fields`, schemaless JSON."""
    payload = ds.envelope("u", ds.pg_source(lsn, table=topic.rpartition(".")[2]), None, row)
    key = ds.key_doc({"id": row["id"]}, KEY_FIELDS, topic, fields is not None)
    value = payload if fields is None else {
        "schema": ds.envelope_schema(fields, ds.PG_SOURCE_SCHEMA, topic), "payload": payload}
    message = ds.raw(topic, value, key)
    assert message.key is not None and message.value is not None
    return message.key, message.value


def _produce(run: Run, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    """A new topic of one partition, offset = index."""
    admin = AdminClient({"bootstrap.servers": run.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1)])[topic].result(timeout=30)
    run.topics.append(topic)
    producer = Producer({"bootstrap.servers": run.bootstrap, "enable.idempotence": True})
    for key, value in messages:
        producer.produce(topic, value=value, key=key, partition=0)
    assert producer.flush(30) == 0


def _wait_caught_up(run: Run, ends: dict[str, int]) -> None:
    """Until every shard committed each topic's one partition to `ends[topic]`."""
    deadline = time.monotonic() + 120
    with psycopg.connect(run.dsn, autocommit=True) as conn:
        while run.partitions_behind(conn, {(topic, 0): end for topic, end in ends.items()}):
            assert not run.died(), run.log_tail()
            assert time.monotonic() < deadline, f"not caught up:\n{run.log_tail()}"
            time.sleep(0.3)


def test_columns_added_mid_stream_are_added_to_the_table_with_one_history_row_each(run):
    """Rows before the change keep NULL in the new columns unless a later change sets them;
    rows after have them; `cdc.schema_history` names each added column once, with the position
    of a message that carried it."""
    topic = f"{run.prefix}.inventory.things"
    before = [_message(topic, V1_FIELDS, {"id": i, "name": f"old{i}"}, 100 + i)
              for i in range(200)]
    after = [_message(topic, V2_FIELDS, {"id": i, "name": f"new{i}", "note": f"n{i}", "qty": i},
                      1_000 + i) for i in range(100, 300)]
    _produce(run, topic, before + after)
    run.start()
    _wait_caught_up(run, {topic: len(before) + len(after)})
    assert run.stop() == [0]

    with psycopg.connect(run.dsn, autocommit=True) as conn:
        rows = table_rows(conn, run.schema, "things", ("id",))
        history = conn.execute(
            'SELECT table_name, change, column_name, new_type, topic, partition, "offset" '
            "FROM cdc.schema_history WHERE flow_id = %s ORDER BY column_name",
            (run.flow_id,)).fetchall()
        dlq = conn.execute("SELECT count(*) FROM cdc.dlq WHERE flow_id = %s",
                           (run.flow_id,)).fetchone()[0]
    assert rows == {
        **{(i,): {"id": i, "name": f"old{i}", "note": None, "qty": None} for i in range(100)},
        **{(i,): {"id": i, "name": f"new{i}", "note": f"n{i}", "qty": i} for i in range(100, 300)},
    }
    assert [h[:6] for h in history] == [
        (f"{run.schema}.things", "column added", "note", "text", topic, 0),
        (f"{run.schema}.things", "column added", "qty", "integer", topic, 0)]
    first_v2, end = len(before), len(before) + len(after)
    assert all(first_v2 <= h[6] < end for h in history), f"not a message with the column: {history}"
    assert dlq == 0


@pytest.mark.parametrize("fields", [V1_FIELDS, None], ids=["with_schema", "schemaless"])
def test_messages_keyed_unlike_the_tables_primary_key_go_to_the_dlq_and_the_rest_lands(
        run, fields):
    """Messages keyed by `id` for an existing table whose primary key is (tenant, id): each
    one is a `key_mismatch` DLQ row (nothing written to that table), while another topic's
    messages land, and every offset is committed."""
    mismatched, fine = f"{run.prefix}.inventory.accounts", f"{run.prefix}.inventory.plain"
    with psycopg.connect(run.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(run.schema)))
        conn.execute(sql.SQL("CREATE TABLE {} (tenant integer, id integer, name text, "
                             "PRIMARY KEY (tenant, id))").format(
            sql.Identifier(run.schema, "accounts")))
        conn.execute(sql.SQL("CREATE TABLE {} (id integer PRIMARY KEY, name text)").format(
            sql.Identifier(run.schema, "plain")))
    _produce(run, mismatched, [_message(mismatched, fields, {"id": i, "name": f"a{i}"}, 10 + i)
                               for i in range(20)])
    _produce(run, fine, [_message(fine, fields, {"id": i, "name": f"p{i}"}, 10 + i)
                         for i in range(30)])
    run.start()
    _wait_caught_up(run, {mismatched: 20, fine: 30})
    assert run.stop() == [0]

    with psycopg.connect(run.dsn, autocommit=True) as conn:
        dlq = conn.execute('SELECT topic, partition, "offset", error_type FROM cdc.dlq '
                           'WHERE flow_id = %s ORDER BY "offset"', (run.flow_id,)).fetchall()
        accounts = table_rows(conn, run.schema, "accounts", ("tenant", "id"))
        plain = table_rows(conn, run.schema, "plain", ("id",))
    assert dlq == [(mismatched, 0, offset, "key_mismatch") for offset in range(20)]
    assert accounts == {}
    assert plain == {(i,): {"id": i, "name": f"p{i}"} for i in range(30)}
