"""ScyllaDB change streams through the running replicator, killed -9 again and again while the
input still arrives: the tables equal what Cassandra's cell semantics make of the statements
(`benchmarks/cell_oracle.py`, through `benchmarks/workload_scylla.py`), with re-delivered runs,
disorder, partial updates, write-time ties, row and partition deletes."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from benchmarks.replicator_run import Run, delete_topics
from benchmarks.workload import create_workload_topics, produce
from benchmarks.workload_scylla import KEYS, REGULAR, ScyllaSpec, ScyllaWorkload, generate
from tests.integration.kills import BackgroundProducer, kill_repeatedly

pytestmark = pytest.mark.integration
RATE = 700  # messages/s: the input keeps arriving through the kills
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "scylla"


@pytest.fixture
def run(kafka_bootstrap, pg_dsn, tmp_path):
    run = Run(kafka_bootstrap, pg_dsn, tmp_path / "state", shards=4)
    yield run
    run.cleanup()


def _cql_types(workload: ScyllaWorkload) -> str:
    """The declared CQL types of the workload's tables (decimal arrives as a string)."""
    return orjson.dumps({workload.spec.topic(t): {"amount": "decimal"} for t in KEYS}).decode()


def _normal(value: Any) -> Any:
    """A value as the oracle gives it: naive UTC timestamps, Decimals compared by value."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    if isinstance(value, Decimal):
        return value.normalize()
    return value


def _rows(conn: psycopg.Connection, schema: str, table: str) -> dict[tuple, dict[str, Any]]:
    columns = [*KEYS[table], *REGULAR]
    names = ", ".join(f'"{c}"' for c in columns)
    found = conn.execute(f'SELECT {names} FROM "{schema}"."{table}"').fetchall()
    return {tuple(r[: len(KEYS[table])]): {c: _normal(v) for c, v in zip(columns, r, strict=True)}
            for r in found}


def test_scylla_streams_converge_to_the_cell_oracle_through_kill_9s(run):
    workload = generate(ScyllaSpec(events=15_000, keys=1_500, partitions=2, seed=7,
                                   topic_prefix=run.prefix))
    run.topics += workload.topics
    run.extra_env["REPLICATE_CQL_TYPES"] = _cql_types(workload)
    create_workload_topics(workload, run.bootstrap)
    producer = BackgroundProducer(lambda: produce(workload, run.bootstrap, create_topics=False,
                                                  rate=RATE))
    producer.start()
    kill_repeatedly(run, sorted(workload.arrivals), times=3, lose_state_at=1, seed=7)
    run.start()
    producer.join(timeout_s=120)
    run.wait_caught_up(workload)  # type: ignore[arg-type]
    assert run.stop() == [0]
    with psycopg.connect(run.dsn, autocommit=True) as conn:
        for table in KEYS:
            got = _rows(conn, run.schema, table)
            want = {k: {c: _normal(v) for c, v in row.items()}
                    for k, row in workload.rows[table].items()}
            missing, extra = want.keys() - got.keys(), got.keys() - want.keys()
            wrong = [k for k in want.keys() & got.keys() if got[k] != want[k]]
            assert not (missing or extra or wrong), (
                f"{table}: {len(missing)} missing, {len(extra)} extra, {len(wrong)} wrong; "
                f"e.g. {[(got[k], want[k]) for k in wrong[:2]]} missing {list(missing)[:3]} "
                f"extra {list(extra)[:3]}")
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
