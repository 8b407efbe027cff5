"""A transaction open while the connector's initial snapshot reads, committed after it: its change
was written before the snapshot's LSN but committed after the snapshot, so the connector streams it
with an LSN below the snapshot rows' LSN. The target must still end up with the committed value."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from benchmarks.replicator_run import Run
from tests.e2e.chain import LiveSource, end_offsets, topic_payloads
from tests.e2e.test_live_chain import rejected, wait_applied
from tests.e2e.workload import in_flight_across_the_snapshot

pytestmark = pytest.mark.e2e


def test_a_change_committed_after_the_snapshot_wins_over_the_snapshot_row(
        run: Run, live: LiveSource):
    live.wait_flushed(in_flight_across_the_snapshot(live))
    run.topics += live.wait_topics(["t", "other"])
    changes = {(p["op"], p["after"]["id"]): p["source"]
               for p in topic_payloads(run.bootstrap, live.topic("t")) if p and p["after"]}
    assert changes[("u", 1)]["lsn"] < changes[("r", 1)]["lsn"], "the case this test is about"
    run.start()
    wait_applied(run, end_offsets(run.bootstrap, run.topics))
    with psycopg.connect(live.dsn) as source, psycopg.connect(run.dsn) as target:
        want = source.execute("SELECT id, v FROM t ORDER BY id").fetchall()
        got = target.execute(sql.SQL("SELECT id, v FROM {} ORDER BY id").format(
            sql.Identifier(run.schema, "t"))).fetchall()
    assert got == want, rejected(run)
    assert rejected(run) == []
