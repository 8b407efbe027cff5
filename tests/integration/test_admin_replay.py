"""`replicate status` and `replicate replay` on a real flow run to completion: the status it
reports, a replay refused while the flow runs, and a replay from offset 0 that changes no table
and comes out as duplicates and stale events."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from benchmarks.replicator_run import Run, free_ports
from benchmarks.workload import Workload
from tests.integration.admin_cli import replicate

pytestmark = pytest.mark.integration
TABLES = ("customers", "orders")
SHARDS = 4


@pytest.fixture(scope="module")
def finished(kafka_bootstrap, pg_dsn, tmp_path_factory) -> Iterator[tuple[Run, Workload]]:
    """A flow that replicated a small workload with duplicates, late and deleted rows, stopped."""
    run = Run(kafka_bootstrap, pg_dsn, tmp_path_factory.mktemp("admin") / "state", shards=SHARDS)
    workload = run.make_workload(seed=3, events=2_000, keys=300, tables=TABLES, partitions=2,
                                 duplicates_pct=5.0, out_of_order_pct=5.0, deletes_pct=8.0)
    assert workload.oracle.stale and workload.oracle.duplicates and workload.oracle.deleted
    try:
        run.start()
        run.wait_caught_up(workload)
        assert run.stop() == [0]
        yield run, workload
    finally:
        run.cleanup()


def contents(run: Run) -> dict[str, list[tuple]]:
    """Every column of every row of the flow's tables, and their tombstones, in key order."""
    found = {}
    with psycopg.connect(run.dsn) as conn:
        for table in TABLES:
            found[table] = conn.execute(sql.SQL("SELECT * FROM {} ORDER BY id").format(
                sql.Identifier(run.schema, table))).fetchall()
        found["tombstones"] = conn.execute(
            "SELECT table_name, key::text, version, deleted_at FROM cdc.tombstones "
            "WHERE table_name LIKE %s ORDER BY 1, 2", (run.schema + ".%",)).fetchall()
    return found


def audit_counts(run: Run) -> tuple[int, int]:
    with psycopg.connect(run.dsn) as conn:
        return tuple(conn.execute(  # type: ignore[return-value]
            "SELECT (SELECT count(*) FROM cdc.stale_events WHERE flow_id = %(f)s), "
            "(SELECT count(*) FROM cdc.dlq WHERE flow_id = %(f)s)", {"f": run.flow_id}).fetchone())


def offsets(run: Run) -> list[tuple]:
    with psycopg.connect(run.dsn) as conn:
        return conn.execute("SELECT shard, topic, partition, next_offset FROM cdc.offsets "
                            "WHERE flow_id = %s ORDER BY 1, 2, 3", (run.flow_id,)).fetchall()


def events_by_outcome(port: int) -> dict[str, int]:
    """`replicate_events_total` of the running replicator, summed by outcome."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    found: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "replicate_events_total":
                outcome = sample.labels["outcome"]
                found[outcome] = found.get(outcome, 0) + int(sample.value)
    return found


def test_status_reports_lag_tables_dlq_and_shards_of_a_finished_flow(finished):
    run, workload = finished
    answer = replicate(run, "--json", "status")
    assert answer.code == 0, answer.err
    report = answer.json()
    ends = {f"{t}[{p}]": len(entries) for (t, p), entries in workload.arrivals.items()}
    assert {f"{x['topic']}[{x['partition']}]": x["committed"] for x in report["partitions"]} == (
        ends)
    assert {f"{x['topic']}[{x['partition']}]": x["end"] for x in report["partitions"]} == ends
    assert report["lag"] == 0
    stale_by_table = {f"{run.schema}.{t}": 0 for t in TABLES}
    for topic, _, _ in workload.oracle.stale:
        stale_by_table[f"{run.schema}.{topic.rsplit('.', 1)[1]}"] += 1
    assert {t["table"]: (t["rows"], t["stale"]) for t in report["tables"]} == {
        f"{run.schema}.{t}": (len(workload.oracle.rows[t]), stale_by_table[f"{run.schema}.{t}"])
        for t in TABLES}
    assert report["dlq"] == []
    assert [s["shard"] for s in report["shards"]] == list(range(SHARDS))
    assert all(s["seq"] > 0 and s["state_bytes"] > 0 for s in report["shards"])
    text = replicate(run, "status")
    assert text.code == 0 and f"flow {run.flow_id}: 0 messages behind" in text.out


def test_replay_is_refused_while_the_flow_runs(finished):
    run, workload = finished
    topic = workload.topics[0]
    before = offsets(run)
    run.start()
    try:
        deadline = time.monotonic() + 60
        while replicate(run, "replay", "--topic", topic, "--from-offset", "0",
                        "--dry-run").code == 0:  # until the flow's first connection is open
            assert time.monotonic() < deadline, run.log_tail()
            time.sleep(0.3)
        answer = replicate(run, "replay", "--topic", topic, "--from-offset", "0")
    finally:
        assert run.stop() == [0]
    assert answer.code == 2
    assert answer.err.startswith(f"replicate replay: flow '{run.flow_id}' is running")
    assert offsets(run) == before


def test_replay_from_offset_zero_leaves_every_table_unchanged_and_counts_duplicates_and_stale(
        finished):
    run, workload = finished
    oracle = workload.oracle
    changes = oracle.applied + oracle.duplicates + len(oracle.stale)
    tables_before, (stale_before, dlq_before) = contents(run), audit_counts(run)
    assert stale_before == len(oracle.stale)
    before = offsets(run)

    dry = replicate(run, "--json", "replay", "--topic", workload.topics[0], "--from-offset", "0",
                    "--dry-run")
    assert dry.code == 0, dry.err
    assert offsets(run) == before, "a dry run moved offsets"
    for moment, re_read in (("2000-01-01T00:00:00", dry.json()["re_read"]),
                            ("2999-01-01T00:00:00+02:00", 0)):
        by_time = replicate(run, "--json", "replay", "--topic", workload.topics[0],
                            "--from-timestamp", moment, "--dry-run")
        assert by_time.code == 0, by_time.err
        assert by_time.json()["re_read"] == re_read
    reread = 0
    for topic in workload.topics:
        answer = replicate(run, "--json", "replay", "--topic", topic, "--from-offset", "0")
        assert answer.code == 0, answer.err
        report = answer.json()
        assert {x["partition"]: (x["start_after"], x["re_read"]) for x in report["partitions"]} \
            == {p: (0, len(e)) for (t, p), e in workload.arrivals.items() if t == topic}
        reread += report["re_read"]
        if topic == workload.topics[0]:
            assert dry.json()["re_read"] == report["re_read"]
    assert reread == workload.message_count
    assert {o for _, _, _, o in offsets(run)} == {0}

    port = free_ports(1)[0]
    run.extra_env["REPLICATE_METRICS_PORT"] = str(port)
    run.start()
    try:
        run.wait_caught_up(workload)
        deadline = time.monotonic() + 30
        while sum((counted := events_by_outcome(port)).values()) < changes:
            assert time.monotonic() < deadline, counted
            time.sleep(0.3)
    finally:
        assert run.stop() == [0]
    assert contents(run) == tables_before, "a replay changed a table"
    stale_after, dlq_after = audit_counts(run)
    assert dlq_after == dlq_before
    assert counted.get("applied", 0) == 0
    assert counted["duplicate"] + counted["stale"] == changes
    # stale now: every change older than its key's last; each audited once, at its position
    assert counted["stale"] > len(oracle.stale)
    assert stale_after == counted["stale"]
