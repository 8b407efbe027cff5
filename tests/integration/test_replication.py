"""End to end: Debezium JSON in real Kafka → the replicator process → real Postgres = oracle."""

from __future__ import annotations

import subprocess
import sys
import time
from urllib.parse import urlsplit

import psycopg
import pytest
from confluent_kafka import Producer

from benchmarks.replicator_run import (
    ROOT,
    Run,
    assert_matches_oracle,
    create_tables_like_workload,
)
from benchmarks.workload import (
    Workload,
    WorkloadSpec,
    create_workload_topics,
    generate,
    produce,
    simulate,
)
from tests.integration.kills import BackgroundProducer, Partition, kill_repeatedly
from tests.integration.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

REFERENCE = dict(events=100_000, keys=20_000, tables=("customers", "orders", "items"),
                 partitions=4, duplicates_pct=2.0, out_of_order_pct=2.0, deletes_pct=5.0)
# Messages/s while the replicator is killed: the reference workload takes ~50 s to arrive,
# longer than the kills take, and far below what the replicator applies.
KILL_TEST_RATE = 2_200


@pytest.fixture
def run(kafka_bootstrap, pg_dsn, tmp_path):
    run = Run(kafka_bootstrap, pg_dsn, tmp_path / "state")
    yield run
    run.cleanup()


def test_100k_events_converge_to_the_oracle(run):
    workload = run.make_workload(seed=11, **REFERENCE)
    assert workload.oracle.stale and workload.oracle.duplicates and workload.oracle.deleted
    run.start()
    run.wait_caught_up(workload)
    assert run.stop() == [0], "SIGTERM must stop the replicator with status 0"
    assert_matches_oracle(run, workload)


def test_sqlserver_events_with_composite_keys_converge(run):
    workload = run.make_workload(seed=7, events=20_000, keys=4_000, partitions=3,
                                 tables=("orders", "lines"), connector="sqlserver",
                                 composite_key=True)
    assert workload.oracle.stale
    run.start()
    run.wait_caught_up(workload)
    run.stop()
    assert_matches_oracle(run, workload)


def test_schemaless_messages_fill_existing_tables(run):
    """`schemas.enable=false`: values are converted to the existing tables' column types."""
    spec = dict(seed=9, events=20_000, keys=4_000, partitions=2, tables=("customers", "orders"),
                schemas_enable=False)
    create_tables_like_workload(run.dsn, run.schema, WorkloadSpec(topic_prefix=run.prefix,
                                                                  **spec))
    workload = run.make_workload(**spec)
    run.start()
    run.wait_caught_up(workload)
    run.stop()
    assert_matches_oracle(run, workload)


def _produce_tail(workload: Workload, bootstrap: str, start: dict[Partition, int]) -> None:
    """Produce each partition's messages from index `start[partition]` on, checking that each
    lands at its index (the oracle's offsets)."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    landed: list[tuple[Partition, int, int]] = []
    for (topic, partition), first in start.items():
        messages = workload.iter_partition(topic, partition)
        for index, (key, value) in enumerate(messages):
            if index >= first:
                producer.produce(topic, value=value, key=key, partition=partition,
                                 on_delivery=lambda err, msg, want=index: landed.append(
                                     ((msg.topic(), msg.partition()), want,
                                      -1 if err else msg.offset())))
    assert producer.flush(60) == 0
    assert all(want == got for _, want, got in landed), "a message landed off its index"


def test_restart_replays_nothing_twice_and_picks_up_new_events(run):
    """The first half of a workload, stop, restart, then the second half: the restarted
    replicator resumes where Postgres says (a replayed stale event would be audited twice)."""
    workload = generate(WorkloadSpec(topic_prefix=run.prefix, seed=5, events=3_000, keys=500,
                                     tables=("customers",)))
    half = {tp: len(entries) // 2 for tp, entries in workload.arrivals.items()}
    first = Workload(workload.spec, {tp: entries[:half[tp]]
                                     for tp, entries in workload.arrivals.items()},
                     simulate({tp: e[:half[tp]] for tp, e in workload.arrivals.items()},
                              workload.spec), {})
    assert first.oracle.stale, "the first half must have stale events a replay would re-audit"
    run.topics += workload.topics
    produce(first, run.bootstrap)
    run.start()
    run.wait_caught_up(first)
    run.stop()
    assert_matches_oracle(run, first)
    run.start()
    _produce_tail(workload, run.bootstrap, half)
    run.wait_caught_up(workload)
    assert run.stop() == [0]
    assert_matches_oracle(run, workload)


def test_kill_9_at_random_moments_changes_nothing(run):
    """Exactly once: 6 SIGKILLs (one also losing the state directory) while messages still
    arrive, each landing mid-work (a partition behind Kafka's end, commits being made), then a
    restart: tables, audit, DLQ and offsets equal the oracle."""
    workload = generate(WorkloadSpec(topic_prefix=run.prefix, seed=23, **REFERENCE))
    run.topics += workload.topics
    create_workload_topics(workload, run.bootstrap)
    producer = BackgroundProducer(lambda: produce(workload, run.bootstrap, create_topics=False,
                                                  rate=KILL_TEST_RATE))
    producer.start()
    kill_repeatedly(run, sorted(workload.arrivals), times=6, lose_state_at=2, seed=23)
    run.start()
    producer.join(timeout_s=120)
    run.wait_caught_up(workload)
    run.stop()
    assert_matches_oracle(run, workload)


def test_cluster_of_two_processes_converges(run):
    """The same module as a 2-process bytewax cluster (-i/-a): shards spread over both."""
    run.processes = 2
    workload = run.make_workload(seed=31, events=30_000, keys=5_000, partitions=3,
                                 tables=("customers", "orders"))
    run.start()
    run.wait_caught_up(workload)
    run.stop()
    assert_matches_oracle(run, workload)


def test_postgres_outages_are_retried_without_losing_events(run):
    """Invariant 7: connections cut mid-run (twice, 3 s each) are retried; nothing is skipped."""
    proxy = TcpProxy(("127.0.0.1", 5432))
    try:
        run.extra_env["REPLICATE_PG_DSN"] = run.dsn.replace("127.0.0.1:5432",
                                                            f"127.0.0.1:{proxy.port}")
        workload = run.make_workload(seed=41, events=60_000, keys=10_000, partitions=2,
                                     tables=("customers", "orders"))
        run.start()
        run.wait_for_log("source: first messages fetched")  # cut while events are in flight
        for _ in range(2):
            proxy.outage()
            time.sleep(3)
            proxy.restore()
            time.sleep(1)
        run.wait_caught_up(workload)
        assert run.stop() == [0]
        assert_matches_oracle(run, workload)
        assert "retrying in" in run.log_tail(100_000), "the outage was never noticed"
    finally:
        proxy.close()


def _start_refused(run: Run, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bytewax.run", "flows.replicate"],
                          cwd=ROOT, env=run.env() | env, capture_output=True, text=True,
                          timeout=60)


def test_a_different_shard_count_for_an_existing_flow_is_refused(run):
    workload = run.make_workload(seed=3, events=200, keys=50, tables=("customers",))
    run.start()
    run.wait_caught_up(workload)
    run.stop()
    done = _start_refused(run, REPLICATE_SHARDS=str(run.shards * 2))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"replicate: REPLICATE_SHARDS: flow {run.flow_id!r} was created with {run.shards} shards;"
        f" the shard count cannot change (got {run.shards * 2}). Use a new REPLICATE_FLOW_ID to "
        "start over with another count."]


def test_a_refused_postgres_login_is_a_one_line_configuration_error(run):
    bad = run.dsn.replace("postgres:postgres@", "postgres:wrong-password@")
    done = _start_refused(run, REPLICATE_PG_DSN=bad)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("replicate: REPLICATE_PG_DSN: ")
    assert "password authentication failed" in lines[0]


def test_avro_events_through_a_schema_registry_converge(run, schema_registry_url):
    """Confluent-framed Avro keys and values, schemas from the real registry."""
    run.extra_env["REPLICATE_SCHEMA_REGISTRY_URL"] = schema_registry_url
    workload = run.make_workload(seed=17, events=30_000, keys=5_000, partitions=3,
                                 tables=("customers", "orders"), encoding="avro",
                                 registry_url=schema_registry_url)
    assert workload.oracle.stale and workload.oracle.deleted
    run.start()
    run.wait_caught_up(workload)
    run.stop()
    assert_matches_oracle(run, workload)


def test_a_schema_registry_url_that_is_not_a_registry_is_a_configuration_error(
        run, schema_registry_url):
    done = _start_refused(run, REPLICATE_TOPICS="any",
                          REPLICATE_SCHEMA_REGISTRY_URL=schema_registry_url + "/not-here")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("replicate: REPLICATE_SCHEMA_REGISTRY_URL: the registry answered "
                               "HTTP 404")


def test_a_schema_registry_outage_is_waited_out_without_losing_events(run, schema_registry_url):
    """Invariant 7 for Avro: while the registry is unreachable, messages whose schema is not
    cached yet are neither applied nor sent to the DLQ; they land once it answers again."""
    registry = urlsplit(schema_registry_url)
    proxy = TcpProxy((registry.hostname, registry.port))
    try:
        run.extra_env["REPLICATE_SCHEMA_REGISTRY_URL"] = schema_registry_url.replace(
            registry.netloc, f"127.0.0.1:{proxy.port}")
        workload = generate(WorkloadSpec(topic_prefix=run.prefix, seed=43, events=5_000,
                                         keys=1_000, partitions=2, tables=("customers",),
                                         encoding="avro", registry_url=schema_registry_url))
        run.topics += workload.topics
        create_workload_topics(workload, run.bootstrap)
        run.start()
        run.wait_for_log("starting at offset", count=len(workload.arrivals))
        proxy.outage()
        produce(workload, run.bootstrap, create_topics=False)
        # The decoder's first failed attempt is logged at once (the client does not retry).
        run.wait_for_log("retrying in", timeout_s=15)
        with psycopg.connect(run.dsn, autocommit=True) as conn:
            dlq = conn.execute("SELECT count(*) FROM cdc.dlq WHERE flow_id = %s",
                               (run.flow_id,)).fetchone()[0]
        assert dlq == 0, "messages went to the DLQ while the registry was away"
        proxy.restore()
        run.wait_caught_up(workload)
        assert run.stop() == [0]
        assert_matches_oracle(run, workload)
    finally:
        proxy.close()
