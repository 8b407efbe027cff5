"""ScyllaDB change streams through the running replicator, killed -9 again and again while the
input still arrives: the tables equal what Cassandra's cell semantics make of the statements
(`benchmarks/cell_oracle.py`, through `benchmarks/workload_scylla.py`), with re-delivered runs,
disorder, partial updates, write-time ties, row and partition deletes."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import psycopg
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from benchmarks.replicator_run import Run, delete_topics
from benchmarks.systems import compare_cell_tables, cql_types_setting
from benchmarks.workload import create_workload_topics, produce
from benchmarks.workload_scylla import ScyllaSpec, generate
from tests.integration.kills import BackgroundProducer, kill_repeatedly

pytestmark = pytest.mark.integration
RATE = 700  # messages/s: the input keeps arriving through the kills
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "scylla"


@pytest.fixture
def run(kafka_bootstrap, pg_dsn, tmp_path):
    run = Run(kafka_bootstrap, pg_dsn, tmp_path / "state", shards=4)
    yield run
    run.cleanup()


def test_scylla_streams_converge_to_the_cell_oracle_through_kill_9s(run):
    workload = generate(ScyllaSpec(events=15_000, keys=1_500, partitions=2, seed=7,
                                   topic_prefix=run.prefix))
    run.topics += workload.topics
    run.extra_env["REPLICATE_CQL_TYPES"] = cql_types_setting(workload)
    create_workload_topics(workload, run.bootstrap)
    producer = BackgroundProducer(lambda: produce(workload, run.bootstrap, create_topics=False,
                                                  rate=RATE))
    producer.start()
    kill_repeatedly(run, sorted(workload.arrivals), times=3, lose_state_at=1, seed=7)
    run.start()
    producer.join(timeout_s=120)
    run.wait_caught_up(workload)  # type: ignore[arg-type]
    assert run.stop() == [0]
    diff = compare_cell_tables(run.dsn, workload, run.schema, lambda table: table)
    assert diff.total == 0, diff.describe()
    with psycopg.connect(run.dsn, autocommit=True) as conn:
        dlq = conn.execute("SELECT count(*) FROM cdc.dlq WHERE flow_id = %s",
                           (run.flow_id,)).fetchone()[0]
    assert dlq == 0
    delete_topics(run.bootstrap, workload.topics)


def test_a_scylla_stream_without_row_images_stops_the_flow_with_status_2(run):
    """The connector's default (`cdc.include.before/after=none`) is a setting to change: the
    flow stops with one line naming it and status 2, which the supervisor does not restart."""
    fixture = orjson.loads((FIXTURES / "advanced_full_insert.json").read_bytes())
    fixture["value"]["payload"]["before"] = fixture["value"]["payload"]["after"] = None
    topic = f"{run.prefix}.shop.orders"
    run.topics.append(topic)
    admin = AdminClient({"bootstrap.servers": run.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1)])[topic].result(timeout=30)
    producer = Producer({"bootstrap.servers": run.bootstrap})
    producer.produce(topic, key=orjson.dumps(fixture["key"]), value=orjson.dumps(fixture["value"]))
    assert producer.flush(30) == 0
    run.start()
    deadline = time.monotonic() + 60
    while run.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [p.poll() for p in run.running] == [2], run.log_tail()
    assert "replicate: " in run.log_tail() and "cdc.include.after=full" in run.log_tail()
