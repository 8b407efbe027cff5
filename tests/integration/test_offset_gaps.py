"""Offsets Kafka no longer holds (retention removed them past the committed offset) and partitions
found after the flow's first start, against the real broker, Postgres and replicator process."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import orjson
import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg import sql

from benchmarks.replicator_run import ROOT, Run, assert_matches_oracle, drop_flows
from benchmarks.workload import Workload, WorkloadSpec, create_workload_topics, generate
from operators import offset_gaps
from operators.events import ProgressMarker, raw_messages
from operators.kafka_source import NativeConsumer, PythonConsumer
from operators.offsets import first_start_partitions
from operators.settings import ConfigError, Settings
from schemas.control import ensure_control_schema

pytestmark = pytest.mark.integration
EVENTS = 400  # one create per key: each message is one row
COMMITTED = 100  # the flow commits this far before it stops
EARLIEST = 250  # retention then removes [COMMITTED, EARLIEST)


@pytest.fixture
def run(kafka_bootstrap, pg_dsn, tmp_path):
    run = Run(kafka_bootstrap, pg_dsn, tmp_path / "state", shards=4)
    yield run
    run.cleanup()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for table in ("gaps", "flow_partitions"):
            conn.execute(sql.SQL("DELETE FROM {} WHERE flow_id LIKE %s").format(
                sql.Identifier("cdc", table)), (run.prefix + "%",))


def _rows_workload(run: Run, table: str) -> Workload:
    """One partition of creates of distinct keys, not yet produced."""
    workload = generate(WorkloadSpec(
        topic_prefix=run.prefix, seed=3, events=EVENTS, keys=EVENTS, key_dist="sequential",
        tables=(table,), partitions=1, duplicates_pct=0, out_of_order_pct=0, deletes_pct=0,
        tombstones=False, max_tx_size=1))
    run.topics += workload.topics
    create_workload_topics(workload, run.bootstrap)
    return workload


def _produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes | None]],
             partition: int = 0) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for key, value in messages:
        producer.produce(topic, value=value, key=key, partition=partition)
    assert producer.flush(30) == 0


def _retention_gap(bootstrap: str, topic: str) -> None:
    """Partition 0 of `topic` gets offsets 0-19, and retention removes 0-11."""
    _produce(bootstrap, topic, [(b"k%d" % i, b"v%d" % i) for i in range(20)])
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.delete_records([TopicPartition(topic, 0, 12)]).values():
        future.result(timeout=30)


def _key_id(key: bytes) -> int:
    return orjson.loads(key)["payload"]["id"]


def _wait_committed(run: Run, topic: str, offset: int) -> None:
    deadline = time.monotonic() + 120
    with psycopg.connect(run.dsn, autocommit=True) as conn:
        while run.partitions_behind(conn, {(topic, 0): offset}):
            assert not run.died(), run.log_tail()
            assert time.monotonic() < deadline, f"not committed to {offset}:\n{run.log_tail()}"
            time.sleep(0.3)


def _commit_then_lose_a_gap(run: Run) -> tuple[str, list[tuple[bytes, bytes | None]]]:
    """The flow commits the first `COMMITTED` messages and stops; the rest are produced and
    retention (delete_records) removes [COMMITTED, EARLIEST)."""
    workload = _rows_workload(run, "customers")
    topic = workload.topics[0]
    messages = workload.messages(topic, 0)
    _produce(run.bootstrap, topic, messages[:COMMITTED])
    run.start()
    _wait_committed(run, topic, COMMITTED)
    assert run.stop() == [0]
    _produce(run.bootstrap, topic, messages[COMMITTED:])
    admin = AdminClient({"bootstrap.servers": run.bootstrap})
    for future in admin.delete_records([TopicPartition(topic, 0, EARLIEST)]).values():
        assert future.result(timeout=30).low_watermark == EARLIEST
    return topic, messages


def _table_ids(run: Run, table: str) -> set[int]:
    """The ids in a target table (none while the flow has not created it)."""
    with psycopg.connect(run.dsn, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass(%s)", (f'"{run.schema}"."{table}"',)
                        ).fetchone()[0] is None:
            return set()
        return {r[0] for r in conn.execute(
            sql.SQL("SELECT id FROM {}").format(sql.Identifier(run.schema, table)))}


def test_a_committed_offset_removed_by_retention_stops_the_start_with_one_line(run):
    topic, messages = _commit_then_lose_a_gap(run)
    done = subprocess.run([sys.executable, "-m", "bytewax.run", "flows.replicate"], cwd=ROOT,
                          env=run.env(), capture_output=True, text=True, timeout=90)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        f"replicate: REPLICATE_ON_OFFSET_GAP: {topic}[0]: committed offset {COMMITTED} is no "
        f"longer in Kafka, earliest available is {EARLIEST} ({EARLIEST - COMMITTED} messages "
        f"removed by retention); set REPLICATE_ON_OFFSET_GAP=earliest to go on from {EARLIEST} "
        "and record the gap in cdc.gaps"]
    assert _table_ids(run, "customers") == {_key_id(k) for k, _ in messages[:COMMITTED]}


def test_with_on_offset_gap_earliest_the_gap_is_recorded_and_the_rest_applied(run):
    topic, messages = _commit_then_lose_a_gap(run)
    run.extra_env["REPLICATE_ON_OFFSET_GAP"] = "earliest"
    run.start()
    _wait_committed(run, topic, EVENTS)
    assert run.stop() == [0]
    kept = messages[:COMMITTED] + messages[EARLIEST:]
    assert _table_ids(run, "customers") == {_key_id(k) for k, _ in kept}
    with psycopg.connect(run.dsn, autocommit=True) as conn:
        gaps = conn.execute(
            "SELECT topic, partition, expected_offset, earliest_offset FROM cdc.gaps "
            "WHERE flow_id = %s", (run.flow_id,)).fetchall()
    assert gaps == [(topic, 0, COMMITTED, EARLIEST)]


@pytest.fixture
def control_tables(pg_dsn):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        ensure_control_schema(conn)


@pytest.mark.parametrize("consumer_kind", [PythonConsumer, NativeConsumer])
@pytest.mark.parametrize("policy", ["stop", "earliest"])
def test_a_consumer_asked_for_an_offset_retention_removed_settles_the_gap(
        kafka_bootstrap, pg_dsn, make_topic, control_tables, consumer_kind, policy):
    """The gap found while reading (what the start check cannot see: retention removing
    offsets after it): the consumer stops, or records the gap and reads on from the earliest
    offset; it never jumps to the partition's end."""
    topic = make_topic("gap")
    _retention_gap(kafka_bootstrap, topic)
    flow_id = f"gap-{topic}"
    settings = Settings(topics=topic, kafka_bootstrap=kafka_bootstrap, pg_dsn=pg_dsn,
                        flow_id=flow_id, shards=1, on_offset_gap=policy)
    consumer = consumer_kind(settings)
    consumer.add(topic, 0, 5)
    offsets: list[int] = []
    deadline = time.monotonic() + 30
    try:
        while len(offsets) < 9:
            assert time.monotonic() < deadline, f"read {offsets} in 30 s"
            for item in consumer.take(topic, 0):
                if isinstance(item, ProgressMarker):  # the marker past the gap
                    offsets.append(-item.next_offset)
                else:
                    offsets += [m.offset for m in raw_messages([item])]
    except ConfigError as stopped:
        assert policy == "stop"
        assert str(stopped).startswith(
            f"REPLICATE_ON_OFFSET_GAP: {topic}[0]: committed offset 5 is no longer in Kafka, "
            "earliest available is 12 (7 messages removed by retention)")
        return
    finally:
        consumer.remove(topic, 0)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            gaps = conn.execute("DELETE FROM cdc.gaps WHERE flow_id = %s RETURNING topic, "
                                "partition, expected_offset, earliest_offset",
                                (flow_id,)).fetchall()
    assert policy == "earliest", f"read {offsets} instead of stopping"
    assert offsets == [-12, *range(12, 20)]
    assert gaps == [(topic, 0, 5, 12)]


@pytest.mark.parametrize("consumer_kind", [PythonConsumer, NativeConsumer])
def test_a_partition_held_when_its_gap_is_settled_stays_paused(
        kafka_bootstrap, pg_dsn, make_topic, control_tables, consumer_kind):
    """Its commit window is full when the gap is found: re-assigned at the earliest offset, it
    must stay paused until the window lets it go on. librdkafka keeps an application's pause of
    a partition across its unassignment and assignment, so `_settle` need not pause it again
    (a pause right after an assignment can lose the assigned offset, librdkafka#2190)."""
    topic = make_topic("gap", partitions=2)
    _retention_gap(kafka_bootstrap, topic)
    flow_id = f"gap-{topic}"
    settings = Settings(topics=topic, kafka_bootstrap=kafka_bootstrap, pg_dsn=pg_dsn,
                        flow_id=flow_id, shards=1, on_offset_gap="earliest")
    consumer = consumer_kind(settings)
    consumer.add(topic, 0, 5)
    consumer.add(topic, 1, 0)
    deadline = time.monotonic() + 30
    try:
        # partition 1's reads fetch for both: until the out-of-range answer for partition 0
        while (topic, 0) not in consumer._suspects:
            assert time.monotonic() < deadline, "no offset reset in 30 s"
            assert consumer.take(topic, 1) == []
        consumer.hold(topic, 0, True)
        assert consumer.take(topic, 0) == [ProgressMarker(topic, 0, 12)]
        # once a message produced after the re-assignment arrives on partition 1, a fetch of
        # the unpaused partition 0 would have brought its messages too
        _produce(kafka_bootstrap, topic, [(b"k", b"v")], partition=1)
        held: list[int] = []
        other: list[int] = []
        while not other:
            assert time.monotonic() < deadline, "partition 1 read nothing in 30 s"
            consumer.hold(topic, 0, True)
            held += [m.offset for m in raw_messages(consumer.take(topic, 0))]
            other += [m.offset for m in raw_messages(consumer.take(topic, 1))]
        assert held == []
        consumer.hold(topic, 0, False)
        while len(held) < 8:
            assert time.monotonic() < deadline, f"read {held} after resuming"
            held += [m.offset for m in raw_messages(consumer.take(topic, 0))]
        assert held == list(range(12, 20))
    finally:
        consumer.remove(topic, 0)
        consumer.remove(topic, 1)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM cdc.gaps WHERE flow_id = %s", (flow_id,))


@pytest.mark.parametrize("consumer_kind", [PythonConsumer, NativeConsumer])
def test_the_partitions_checked_after_an_offset_reset_share_one_probe_client(
        kafka_bootstrap, pg_dsn, make_topic, control_tables, consumer_kind, monkeypatch):
    """An offset reset makes every partition of the worker a suspect (the native consumer is
    not told which one): checking them must not make a Kafka client per partition."""
    topic = make_topic("gap", partitions=4)
    _retention_gap(kafka_bootstrap, topic)
    probes: list[Consumer] = []
    monkeypatch.setattr(offset_gaps, "Consumer",
                        lambda config: probes.append(Consumer(config)) or probes[-1])
    flow_id = f"gap-{topic}"
    settings = Settings(topics=topic, kafka_bootstrap=kafka_bootstrap, pg_dsn=pg_dsn,
                        flow_id=flow_id, shards=1, on_offset_gap="earliest")
    consumer = consumer_kind(settings)
    for partition in range(4):
        consumer.add(topic, partition, 5 if partition == 0 else 0)
    markers: list[ProgressMarker] = []
    deadline = time.monotonic() + 30
    try:
        while not markers or consumer._suspects:  # until the gap is settled, all checked
            assert time.monotonic() < deadline, f"settled {markers} in 30 s"
            for partition in range(4):
                markers += [item for item in consumer.take(topic, partition)
                            if isinstance(item, ProgressMarker)]
        assert markers == [ProgressMarker(topic, 0, 12)]
        assert len(probes) == 1
        with pytest.raises(RuntimeError, match="closed"):  # once every suspect was checked
            probes[0].list_topics(timeout=1)
    finally:
        for partition in range(4):
            consumer.remove(topic, partition)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM cdc.gaps WHERE flow_id = %s", (flow_id,))


def test_latest_applies_only_to_partitions_of_the_first_start(run):
    """A topic created after the flow's first start (a new table under the pattern) is read
    from its beginning at the next start, with `REPLICATE_START=latest`."""
    run.extra_env["REPLICATE_START"] = "latest"
    first = run.make_workload(seed=19, events=300, keys=100, tables=("customers",),
                              partitions=1)
    run.start()
    _wait_committed(run, first.topics[0], len(first.arrivals[(first.topics[0], 0)]))
    assert run.stop() == [0]
    assert _table_ids(run, "customers") == set(), "latest: nothing of the first topic"
    later = run.make_workload(seed=29, events=2_000, keys=500, tables=("orders",), partitions=2)
    run.start()
    run.wait_caught_up(later)
    assert run.stop() == [0]
    assert_matches_oracle(run, later)


@pytest.fixture
def flow_id(pg_dsn, control_tables):
    """A flow registered with `REPLICATE_START=latest` before its partitions were recorded."""
    flow_id = f"first-{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO cdc.flows (flow_id, shards, start) VALUES (%s, 2, 'latest')",
                     (flow_id,))
    yield flow_id
    drop_flows(pg_dsn, flow_id)


def test_a_flow_that_ran_before_partitions_were_recorded_keeps_the_partitions_it_read(
        pg_dsn, flow_id):
    """Its earlier runs left offsets: a topic created since then is not one of the first
    start's partitions (it starts at its beginning, not at `latest`)."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO cdc.offsets (flow_id, shard, topic, partition, next_offset) "
                "VALUES (%s, %s, 'old', %s, 7)",
                [(flow_id, shard, partition) for shard in range(2) for partition in range(2)])
        first = first_start_partitions(conn, flow_id, [("old", 0), ("old", 1), ("new", 0)])
        again = first_start_partitions(conn, flow_id, [("old", 0), ("new", 0), ("newer", 0)])
    assert first == again == {("old", 0), ("old", 1)}


def test_a_new_flow_records_the_partitions_listed_at_its_first_start(pg_dsn, flow_id):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        first = first_start_partitions(conn, flow_id, [("a", 0), ("b", 0), ("b", 1)])
        again = first_start_partitions(conn, flow_id, [("a", 0), ("c", 0)])
    assert first == again == {("a", 0), ("b", 0), ("b", 1)}
