"""A real Prometheus (Debian's binary) scrapes a replicator that replicated a known workload, and
PromQL on `replicate_events_total` gives the oracle's counts per outcome."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.replicator_run import Run, free_ports

pytestmark = pytest.mark.integration
SCRAPE = "1s"


@pytest.fixture
def run(kafka_bootstrap, pg_dsn, tmp_path) -> Iterator[Run]:
    run = Run(kafka_bootstrap, pg_dsn, tmp_path / "state", shards=4)
    yield run
    run.cleanup()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator:
    """Starts Prometheus scraping a metrics port; yields a PromQL query function."""
    started: list[subprocess.Popen] = []

    def start(target_port: int):
        port = free_ports(1)[0]
        config = tmp_path / "prometheus.yml"
        config.write_text(
            f"global: {{scrape_interval: {SCRAPE}, evaluation_interval: {SCRAPE}}}\n"
            "scrape_configs:\n  - job_name: replicator\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n")
        log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - the child's output
        started.append(subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT))

        def query(promql: str) -> list[dict]:
            url = (f"http://127.0.0.1:{port}/api/v1/query?"
                   + urllib.parse.urlencode({"query": promql}))
            with urllib.request.urlopen(url, timeout=10) as answer:
                return json.load(answer)["data"]["result"]

        return query

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=30)


def by(results: list[dict], label: str) -> dict[str, int]:
    return {r["metric"].get(label, ""): int(float(r["value"][1])) for r in results}


def eventually(query, promql: str, label: str, want: dict[str, int], timeout_s: float = 60):
    """The query's values by `label` once they equal `want` (Prometheus scrapes every second)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            got = by(query(promql), label)
        except OSError:  # Prometheus not listening yet
            got = None
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


def test_prometheus_scrapes_the_counts_of_a_known_workload(run, prometheus):
    workload = run.make_workload(seed=5, events=3_000, keys=400, tables=("customers", "orders"),
                                 partitions=2, duplicates_pct=5.0, out_of_order_pct=5.0,
                                 deletes_pct=5.0)
    oracle = workload.oracle
    assert oracle.duplicates and oracle.stale
    metrics_port = free_ports(1)[0]
    run.extra_env["REPLICATE_METRICS_PORT"] = str(metrics_port)
    run.start()
    run.wait_caught_up(workload)
    query = prometheus(metrics_port)

    outcomes = eventually(query, "sum by (outcome) (replicate_events_total)", "outcome",
                          {"applied": oracle.applied, "duplicate": oracle.duplicates,
                           "stale": len(oracle.stale)})
    assert outcomes == {"applied": oracle.applied, "duplicate": oracle.duplicates,
                        "stale": len(oracle.stale)}, run.log_tail()

    stale_by_table: dict[str, int] = {}
    for topic, _, _ in oracle.stale:
        table = f"{run.schema}.{topic.rsplit('.', 1)[1]}"
        stale_by_table[table] = stale_by_table.get(table, 0) + 1
    assert by(query('sum by (table) (replicate_events_total{outcome="stale"})'), "table") == (
        stale_by_table)

    ends = {f"{topic}/{partition}": 0 for topic, partition in workload.arrivals}
    lag = eventually(query, 'label_join(replicate_lag_messages, "at", "/", "topic", "partition")',
                     "at", ends, timeout_s=30)
    assert lag == ends
    assert by(query("replicate_dlq_rows"), "job") == {"replicator": 0}
    assert by(query("sum(replicate_end_to_end_seconds_count) > bool 0"), "") == {"": 1}
    assert by(query("sum(replicate_commits_total) > bool 0"), "") == {"": 1}
    assert by(query("sum by (table) (replicate_schema_changes_total)"), "table") == {
        f"{run.schema}.{table}": 1 for table in ("customers", "orders")}
    assert run.stop() == [0]
