"""`replicate dlq list|show|replay` on a real flow: schemaless messages of a table that does not
exist go to the DLQ; once the table exists, a replay applies them through the LWW guard, and
those older than the row the table got meanwhile come out stale, leaving the row as it is."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from benchmarks.replicator_run import Run, create_tables_like_workload, table_rows
from benchmarks.workload import WorkloadSpec
from operators.offsets import shard_commit
from operators.shard_sink import shard_part_name
from operators.state_store import ShardStateStore
from tests.integration.admin_cli import replicate

pytestmark = pytest.mark.integration
SHARDS = 3
SPEC = dict(seed=4, events=600, keys=120, tables=("customers", "orders"), partitions=1,
            duplicates_pct=5.0, out_of_order_pct=8.0, deletes_pct=10.0, schemas_enable=False)


@pytest.fixture
def run(kafka_bootstrap, pg_dsn, tmp_path):
    run = Run(kafka_bootstrap, pg_dsn, tmp_path / "state", shards=SHARDS)
    yield run
    run.cleanup()


def create_table_later(run: Run, table: str) -> None:
    """Create the target table the flow's messages need, as the fix of their DLQ rows."""
    staging = f"{run.schema}_later"
    create_tables_like_workload(run.dsn, staging, WorkloadSpec(
        topic_prefix=run.prefix, **SPEC | {"tables": (table,)}))
    with psycopg.connect(run.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(
            sql.Identifier(staging, table), sql.Identifier(run.schema)))
        conn.execute(sql.SQL("DROP SCHEMA {}").format(sql.Identifier(staging)))


def statuses(run: Run) -> dict[int, str]:
    """replay_status by offset (one partition)."""
    with psycopg.connect(run.dsn) as conn:
        return dict(conn.execute('SELECT "offset", replay_status FROM cdc.dlq WHERE flow_id = %s',
                                 (run.flow_id,)).fetchall())


def expected_outcomes(entries, replayed_from: int) -> dict[int, str]:
    """What a replay of the DLQ rows (every message of the topic) must record, by offset: the
    table holds the last of the changes from `replayed_from` on per key; then the DLQ rows in
    offset order, each against the key's version so far."""
    versions = {}
    for change, tombstone in entries[replayed_from:]:
        if not tombstone and change.version > versions.get(change.key, ()):
            versions[change.key] = change.version
    outcomes = {}
    for offset, (change, tombstone) in enumerate(entries):
        if tombstone:
            continue
        current = versions.get(change.key, ())
        if change.version > current:
            outcomes[offset], versions[change.key] = "applied", change.version
        else:
            outcomes[offset] = "duplicate" if change.version == current else "stale"
    return outcomes


def test_dlq_rows_replayed_after_their_table_exists_apply_or_come_out_stale(run):
    create_tables_like_workload(run.dsn, run.schema, WorkloadSpec(
        topic_prefix=run.prefix, **SPEC | {"tables": ("customers",)}))
    workload = run.make_workload(**SPEC)
    orders = workload.spec.topic("orders")
    entries = workload.arrivals[(orders, 0)]
    messages = [offset for offset, (_, tombstone) in enumerate(entries) if not tombstone]
    run.start()
    run.wait_caught_up(workload)
    assert run.stop() == [0]
    assert set(statuses(run)) == set(messages) and set(statuses(run).values()) == {"pending"}

    listed = replicate(run, "--json", "dlq", "list", "--error-type", "unknown_table",
                       "--limit", "5")
    assert listed.code == 0, listed.err
    rows = listed.json()["rows"]
    assert len(rows) == 5
    assert {(r["topic"], r["error_type"], r["replay_status"]) for r in rows} == {
        (orders, "unknown_table", "pending")}
    first = rows[0]
    shown = replicate(run, "dlq", "show", str(first["id"]))
    assert shown.code == 0 and '"op":' in shown.out and "error_type: unknown_table" in shown.out

    still = replicate(run, "--json", "dlq", "replay")
    assert still.code == 0, still.err
    assert still.json()["outcomes"] == {"failed: unknown_table": len(messages)}

    create_table_later(run, "orders")
    half = len(entries) // 2
    assert replicate(run, "replay", "--topic", orders, "--from-offset", str(half)).code == 0
    run.start()
    run.wait_caught_up(workload)
    assert run.stop() == [0]
    with psycopg.connect(run.dsn) as conn:
        before = table_rows(conn, run.schema, "orders", workload.spec.key_columns)

    dry = replicate(run, "--json", "dlq", "replay", "--dry-run")
    assert dry.code == 0, dry.err
    assert set(statuses(run).values()) == {"failed: unknown_table"}
    with psycopg.connect(run.dsn) as conn:
        assert table_rows(conn, run.schema, "orders", workload.spec.key_columns) == before

    done = replicate(run, "--json", "dlq", "replay", "--error-type", "unknown_table")
    assert done.code == 0, done.err
    want = expected_outcomes(entries, half)
    assert {"applied", "stale"} <= set(want.values())
    assert statuses(run) == want
    assert {r["offset"]: r["outcome"] for r in dry.json()["replayed"]} == want
    with psycopg.connect(run.dsn) as conn:
        for table in workload.spec.tables:
            assert table_rows(conn, run.schema, table, workload.spec.key_columns) == (
                workload.oracle.rows[table])
        unchanged = [entries[o][0].key for o, outcome in want.items() if outcome == "stale"]
        assert any(before.get(key) is not None for key in unchanged)
        for shard in range(SHARDS):  # the state went with the commits: in step at next start
            store = ShardStateStore(run.state_dir / run.flow_id / shard_part_name(shard))
            try:
                assert (store.seq, store.commit_id) == shard_commit(conn, run.flow_id, shard)
            finally:
                store.close()
    assert replicate(run, "--json", "dlq", "replay").json()["rows"] == 0


def test_rows_the_writer_refused_are_replayed_from_kafka_once_their_table_is_fixed(run):
    """A table keyed on other columns than the messages refuses them (`key_mismatch`, DLQ rows
    holding the decoded row); with its key fixed, a replay reads each message from Kafka again
    and the outcomes are those of LWW in arrival order."""
    spec = dict(seed=6, events=300, keys=60, tables=("customers",), partitions=1,
                duplicates_pct=5.0, out_of_order_pct=8.0, deletes_pct=10.0)
    create_tables_like_workload(run.dsn, run.schema, WorkloadSpec(topic_prefix=run.prefix,
                                                                  **spec))
    table = sql.Identifier(run.schema, "customers")
    with psycopg.connect(run.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT customers_pkey, "
                             "ADD PRIMARY KEY (id, name)").format(table))
    workload = run.make_workload(**spec)
    run.start()
    run.wait_caught_up(workload)
    assert run.stop() == [0]
    entries = workload.arrivals[(workload.topics[0], 0)]
    messages = {offset for offset, (_, tombstone) in enumerate(entries) if not tombstone}
    with psycopg.connect(run.dsn, autocommit=True) as conn:
        assert dict(conn.execute('SELECT "offset", error_type FROM cdc.dlq WHERE flow_id = %s',
                                 (run.flow_id,)).fetchall()) == dict.fromkeys(
            messages, "key_mismatch")
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT customers_pkey, ALTER COLUMN name "
                             "DROP NOT NULL, ADD PRIMARY KEY (id)").format(table))

    done = replicate(run, "--json", "dlq", "replay")
    assert done.code == 0, done.err
    oracle = workload.oracle
    stale = {o for _, _, o in oracle.stale_positions}
    got = statuses(run)
    assert {o for o, s in got.items() if s == "stale"} == stale
    assert done.json()["outcomes"] == {"applied": len(messages) - len(stale) - oracle.duplicates,
                                       "duplicate": oracle.duplicates, "stale": len(stale)}
    with psycopg.connect(run.dsn) as conn:
        assert table_rows(conn, run.schema, "customers", workload.spec.key_columns) == (
            oracle.rows["customers"])
