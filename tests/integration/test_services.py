"""The local services work the way the replicator relies on (`make infra-up`)."""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, Producer

pytestmark = pytest.mark.integration


def _consume(
    bootstrap: str, topic: str, expected: int, conf: dict | None = None, timeout_s: float = 20.0
) -> list:
    """Read from the start of `topic` until `expected` messages arrived or `timeout_s` passed."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **(conf or {}),
        }
    )
    consumer.subscribe([topic])
    messages = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                continue
            messages.append(msg)
    finally:
        consumer.close()
    return messages


def test_produce_and_consume(kafka_bootstrap, make_topic):
    topic = make_topic("svc-plain", partitions=3)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    sent = {f"key-{i}".encode(): f"value-{i}".encode() for i in range(30)}
    for key, value in sent.items():
        producer.produce(topic, key=key, value=value)
    assert producer.flush(15) == 0, "messages still undelivered after 15 s"

    messages = _consume(kafka_bootstrap, topic, expected=len(sent))

    assert {m.key(): m.value() for m in messages} == sent
    assert {m.partition() for m in messages} <= {0, 1, 2}
    # Same key, same partition: the property per-key ordering rests on.
    by_key = {}
    for m in messages:
        assert by_key.setdefault(m.key(), m.partition()) == m.partition()


def test_read_committed_hides_aborted_transaction(kafka_bootstrap, make_topic):
    topic = make_topic("svc-txn", partitions=1)
    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "transactional.id": f"test-{uuid.uuid4().hex}"}
    )
    producer.init_transactions(15)

    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=b"aborted")
    producer.flush(15)
    producer.abort_transaction(15)

    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=b"committed")
    producer.commit_transaction(15)

    committed = _consume(
        kafka_bootstrap, topic, expected=1, conf={"isolation.level": "read_committed"}
    )
    assert [m.value() for m in committed] == [b"committed"]
    # Control: the aborted record really is in the log, only hidden by read_committed.
    uncommitted = _consume(
        kafka_bootstrap, topic, expected=2, conf={"isolation.level": "read_uncommitted"}
    )
    assert [m.value() for m in uncommitted] == [b"aborted", b"committed"]


def test_postgres_round_trip(pg_conn):
    pg_conn.execute(
        "CREATE TEMP TABLE svc_round_trip (id int PRIMARY KEY, body text, at timestamptz)"
    )
    rows = [(1, "one"), (2, "two"), (3, None)]
    with pg_conn.cursor() as cur:
        cur.executemany("INSERT INTO svc_round_trip VALUES (%s, %s, now())", rows)
    got = pg_conn.execute("SELECT id, body FROM svc_round_trip ORDER BY id").fetchall()
    assert got == rows
    with pytest.raises(psycopg.errors.UniqueViolation):
        pg_conn.execute("INSERT INTO svc_round_trip VALUES (1, 'dup', now())")


def test_postgres_allows_one_connection_per_shard(pg_conn):
    max_connections = int(pg_conn.execute("SHOW max_connections").fetchone()[0])
    assert max_connections >= 200
