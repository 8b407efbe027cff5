"""`make demo`: Debezium change events → the replicator → Postgres, on the local services.

Writes a small sample of Debezium JSON change events (with duplicates, out-of-order updates and
deletes) to fresh topics, runs `python -m bytewax.run flows.replicate` until it has caught up,
prints what landed in Postgres and whether it matches the expected last-write-wins result, and
stops the replicator.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from psycopg import sql

from benchmarks.workload import WorkloadSpec, generate, produce
from flows.admin_status import caught_up, flow_lag
from operators.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
CATCH_UP_TIMEOUT_S = 180
SPEC = dict(events=5_000, keys=800, tables=("customers", "orders"), partitions=2,
            duplicates_pct=3.0, out_of_order_pct=3.0, deletes_pct=8.0)


def main() -> int:
    run_id = time.strftime("demo%Y%m%d%H%M%S")
    workload = generate(WorkloadSpec(topic_prefix=run_id, seed=int(time.time()), **SPEC))
    settings = Settings(topic_pattern=re.escape(run_id) + r"\..*", flow_id=run_id,
                        target_schema=run_id, shards=8, state_dir=ROOT / "state")
    print(f"demo: writing {workload.message_count} Debezium change events to "
          f"{', '.join(workload.topics)}")
    produce(workload, settings.kafka_bootstrap)
    env = os.environ | {
        "REPLICATE_TOPIC_PATTERN": settings.topic_pattern or "",
        "REPLICATE_FLOW_ID": settings.flow_id, "REPLICATE_TARGET_SCHEMA": settings.target_schema,
        "REPLICATE_SHARDS": str(settings.shards), "REPLICATE_STATE_DIR": str(settings.state_dir),
    }
    print("demo: starting python -m bytewax.run flows.replicate")
    replicator = subprocess.Popen([sys.executable, "-m", "bytewax.run", "flows.replicate"],
                                  cwd=ROOT, env=env)
    try:
        _wait_caught_up(settings, workload.arrivals, replicator)
    finally:
        replicator.send_signal(signal.SIGTERM)
        replicator.wait(timeout=30)
    return _report(settings, workload)


def _wait_caught_up(settings: Settings, arrivals, replicator: subprocess.Popen) -> None:
    partitions = sorted(arrivals)
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while True:
        time.sleep(1)
        if replicator.poll() is not None:
            raise SystemExit(f"demo: the replicator exited with status {replicator.returncode}")
        try:
            lags = flow_lag(settings, partitions)
        except psycopg.errors.UndefinedTable:
            continue  # the replicator has not created its control tables yet
        print(f"demo: {sum(x.lag for x in lags)} messages still to replicate")
        if caught_up(lags):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: not caught up after {CATCH_UP_TIMEOUT_S}s")


def _report(settings: Settings, workload) -> int:
    oracle = workload.oracle
    ok = True
    with psycopg.connect(settings.pg_dsn) as conn:
        for table in workload.spec.tables:
            ident = sql.Identifier(settings.target_schema, table)
            count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(ident)).fetchone()[0]
            expected = len(oracle.rows.get(table, {}))
            ok &= count == expected
            print(f"\n{settings.target_schema}.{table}: {count} rows (expected {expected})")
            cur = conn.execute(sql.SQL("SELECT * FROM {} ORDER BY 1 LIMIT 5").format(ident))
            shown = [i for i, d in enumerate(cur.description) if not d.name.startswith("_cdc_")]
            print("  " + " | ".join(cur.description[i].name for i in shown))
            for row in cur:
                print("  " + " | ".join("" if row[i] is None else str(row[i])[:24] for i in shown))
        stale = conn.execute(
            'SELECT topic, partition, "offset", key::text, version, applied_version, reason '
            "FROM cdc.stale_events WHERE flow_id = %s ORDER BY detected_at",
            (settings.flow_id,)).fetchall()
        dlq = conn.execute("SELECT count(*) FROM cdc.dlq WHERE flow_id = %s",
                           (settings.flow_id,)).fetchone()[0]
    ok &= len(stale) == len(oracle.stale) and dlq == 0
    print(f"\ncdc.stale_events: {len(stale)} older events rejected (expected {len(oracle.stale)})")
    for row in stale[:3]:
        print("  " + " | ".join(map(str, row)))
    print(f"cdc.dlq: {dlq} rows; duplicates skipped: {oracle.duplicates} (expected)")
    print(f"\ndemo: {'matches' if ok else 'DOES NOT MATCH'} the expected last-write-wins result")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
