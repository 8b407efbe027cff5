"""Faults on the live chain while the source is written: Kafka Connect killed and restarted (it
re-sends a window), the replicator killed three times, the target Postgres stopped for 30 s, the
broker killed and restarted. Afterwards the target equals the source and every rejected event
is explained. One workload carries all four faults, in sequence, to keep the chain's run short."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

from benchmarks.replicator_run import Run
from tests.e2e.chain import (
    LiveSource,
    broker_pid,
    end_offsets,
    infra_up,
    kill9_broker,
    payload,
    stop_postgres,
    topic_messages,
)
from tests.e2e.source_tables import ACCOUNTS_TABLE, DOC, TABLES, differences
from tests.e2e.test_live_chain import rejected, unexplained, wait_applied
from tests.e2e.workload import Workload, mark_end, run_writers, seed

pytestmark = pytest.mark.e2e

TARGET_DOWN_S = 30


class Writers:
    """Rounds of concurrent writers on the source until stopped; `rounds` counts finished ones,
    so a test can tell the source was written during a fault."""

    def __init__(self, dsn: str, workload: Workload) -> None:
        self.dsn, self.workload = dsn, workload
        self.rounds = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._write)

    def _write(self) -> None:
        while not self.stopping.is_set():
            run_writers(self.dsn, self.workload, writers=2, transactions=20)
            self.rounds += 1
            time.sleep(0.1)

    @contextmanager
    def running(self) -> Iterator[Writers]:
        self.thread.start()
        try:
            yield self
        finally:
            self.stopping.set()
            self.thread.join()

    def wrote_during(self, since: int) -> None:
        """Assert whole rounds finished since `since` (the writers kept writing)."""
        deadline = time.monotonic() + 30
        while self.rounds < since + 2:
            assert self.thread.is_alive(), f"writers stopped: {self.workload.errors}"
            assert time.monotonic() < deadline, "the writers made no progress"
            time.sleep(0.2)


def wait_behind(run: Run, timeout_s: float = 30) -> None:
    """Until the replicator has not committed some partition to the topics' current end: it has
    work in hand (a fault right after this lands while it writes)."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(run.dsn, autocommit=True) as conn:
        while not run.partitions_behind(conn, end_offsets(run.bootstrap, run.topics)):
            assert time.monotonic() < deadline, "the replicator never had work in hand"
            time.sleep(0.05)


def wait_growing(run: Run, by: int = 1) -> None:
    """Until the connector adds `by` messages to the topics (it streams the writers' changes)."""
    before = sum(end_offsets(run.bootstrap, run.topics).values())
    deadline = time.monotonic() + 60
    while sum(end_offsets(run.bootstrap, run.topics).values()) < before + by:
        assert time.monotonic() < deadline, "the connector streams nothing"
        time.sleep(0.2)


def wait_committing(run: Run, timeout_s: float = 60) -> None:
    """Until the replicator commits past where it stands now (it runs and writes)."""
    def committed() -> int:
        with psycopg.connect(run.dsn, autocommit=True) as conn:
            return conn.execute("SELECT coalesce(sum(next_offset), 0) FROM cdc.offsets "
                                "WHERE flow_id = %s", (run.flow_id,)).fetchone()[0]
    before = committed()
    deadline = time.monotonic() + timeout_s
    while committed() == before:
        assert not run.died(), f"replicator exited:\n{run.log_tail()}"
        assert time.monotonic() < deadline, f"replicator commits nothing:\n{run.log_tail()}"
        time.sleep(0.2)


def source_position(change: dict) -> tuple:
    """What identifies a change in the source's log (the envelope's `ts_ms` is the connector's
    clock and differs when it sends a change again)."""
    return change["op"], change["source"]["lsn"], change["source"]["txId"]


def resent(bootstrap: str, topics: list[str],
           ends: dict[tuple[str, int], int]) -> set[tuple[str, int]]:
    """(topic, offset) of the changes written again at or after `ends` (the topics' ends when the
    connector was killed): the same key, operation and source position as a message before."""
    copies = set()
    for topic in topics:
        seen: set[tuple] = set()
        for message in topic_messages(bootstrap, topic, timeout_s=120):
            if message.value() is None:  # a tombstone repeats its delete's position
                continue
            change = (message.key(), json.dumps(source_position(payload(message))))
            if change in seen and message.offset() >= ends[(topic, 0)]:
                copies.add((topic, message.offset()))
            seen.add(change)
    return copies


def not_resent(rows: list[tuple], copies: set[tuple[str, int]]) -> list[tuple]:
    """Rejections but re-sent changes found stale: a key the source changed again (or deleted)
    later in the re-sent window has that newer version applied already; only its last change in
    the window comes back as a duplicate."""
    return [r for r in rows if not (r[0] == "stale" and (r[1], r[2]) in copies)]


def kill_connect(live: LiveSource, run: Run, writers: Writers) -> dict[tuple[str, int], int]:
    """Kafka Connect kill -9 while it streams, then restarted from its offsets file; returns the
    topics' ends at the kill."""
    wait_growing(run, by=1000)
    rounds = writers.rounds
    ends = end_offsets(run.bootstrap, run.topics)
    live.kill9()
    time.sleep(2)
    live.start()
    writers.wrote_during(rounds)
    wait_growing(run)
    return ends


def kill_replicator(run: Run, writers: Writers, times: int) -> None:
    """The replicator kill -9 `times` times, each while it is behind the topics' end."""
    for _ in range(times):
        wait_committing(run)
        rounds = writers.rounds
        wait_behind(run)
        run.kill9()
        writers.wrote_during(rounds)
        run.start()


def stop_target(run: Run, writers: Writers) -> None:
    """The target Postgres stopped for TARGET_DOWN_S while the replicator has work."""
    wait_committing(run)
    rounds = writers.rounds
    wait_behind(run)
    stop_postgres(run.dsn)
    try:
        time.sleep(TARGET_DOWN_S)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(run.dsn, connect_timeout=3).close()
    finally:
        infra_up("postgres")
    writers.wrote_during(rounds)
    assert not run.died(), f"replicator exited:\n{run.log_tail()}"
    wait_committing(run, timeout_s=120)


def kill_broker(run: Run, writers: Writers) -> None:
    """The broker kill -9 while the connector streams, then restarted."""
    wait_growing(run)
    rounds = writers.rounds
    kill9_broker()
    try:
        writers.wrote_during(rounds)
    finally:
        infra_up("kafka")
    wait_growing(run)
    wait_committing(run, timeout_s=120)


def test_the_target_equals_the_source_after_connect_replicator_target_and_broker_faults(
        run: Run, live: LiveSource):
    broker_pid()  # before any work: the broker fault needs a broker this checkout can restart
    workload = Workload(seed=23)
    seed(live.dsn, workload, rows=200)
    live.start()
    live.wait_streaming()
    run.topics += live.wait_topics([t.name for t in TABLES])
    run.extra_env["REPLICATE_RETRY_MAX_S"] = "3"  # back sooner after the target's outage
    run.start()
    try:
        with Writers(live.dsn, workload).running() as writers:
            connect_killed_at = kill_connect(live, run, writers)
            kill_replicator(run, writers, times=3)
            stop_target(run, writers)
            kill_broker(run, writers)
        assert workload.errors == []
        live.wait_flushed(mark_end(live.dsn, workload))
        wait_applied(run, end_offsets(run.bootstrap, run.topics), timeout_s=240)
    finally:
        infra_up()

    copies = resent(run.bootstrap, run.topics, connect_killed_at)
    assert copies, "the restarted connector sent no change again"
    with psycopg.connect(live.dsn) as source, psycopg.connect(run.dsn) as target:
        lost_doc = {DOC.name: workload.moved_to}
        found = [d for table in TABLES
                 for d in differences(source, target, run.schema, table, lost_doc)]
        assert found == [], "\n".join(found)
    assert not_resent(unexplained(rejected(run), live.topic(ACCOUNTS_TABLE.name)), copies) == []
    assert run.stop() == [0]
