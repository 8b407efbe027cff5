"""Run the replicator as a real process on a workload, and compare Postgres with the oracle.

Used by the integration tests and the benchmark harness. The oracle comes from
`benchmarks.workload`, which shares no code with the replicator.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from confluent_kafka.admin import AdminClient
from psycopg import sql

from benchmarks.workload import Workload, WorkloadSpec, generate, produce
from operators.events import TableName

ROOT = Path(__file__).resolve().parents[1]


def free_ports(count: int) -> list[int]:
    """Ports on 127.0.0.1 that are free now (for a bytewax cluster's addresses)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class Run:
    """One replicator deployment: its flow id, target schema, state dir and environment."""

    bootstrap: str
    dsn: str
    state_dir: Path
    prefix: str = field(default_factory=lambda: f"it{uuid.uuid4().hex[:10]}")
    shards: int = 16
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: int = 1
    flow_suffix: str = ""  # a second deployment on the same topics: its own flow and schema
    log_path: Path | None = None
    running: list[subprocess.Popen] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)

    @property
    def flow_id(self) -> str:
        return self.prefix + self.flow_suffix

    @property
    def schema(self) -> str:
        return self.prefix + self.flow_suffix

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATE_")}
        env.update(
            REPLICATE_KAFKA_BOOTSTRAP=self.bootstrap,
            REPLICATE_TOPIC_PATTERN=re.escape(self.prefix) + r"\..*",
            REPLICATE_PG_DSN=self.dsn,
            REPLICATE_STATE_DIR=str(self.state_dir),
            REPLICATE_FLOW_ID=self.flow_id,
            REPLICATE_SHARDS=str(self.shards),
            REPLICATE_TARGET_SCHEMA=self.schema,
            REPLICATE_BATCH_MS="200",
            REPLICATE_MARKER_MS="200",
        )
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        """Start the replicator: one process, or a bytewax cluster of `processes` processes."""
        assert not self.alive(), "already running"
        self.log_path = self.state_dir.parent / f"{self.flow_id}.log"
        command = [sys.executable, "-m", "bytewax.run", "flows.replicate"]
        addresses = ";".join(f"127.0.0.1:{port}" for port in free_ports(self.processes))
        self.running = []
        for index in range(self.processes):
            cluster = ["-i", str(index), "-a", addresses] if self.processes > 1 else []
            log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
            self.running.append(subprocess.Popen(
                command + cluster, cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT))

    def alive(self) -> bool:
        return any(p.poll() is None for p in self.running)

    def died(self) -> bool:
        return any(p.poll() is not None for p in self.running)

    def kill9(self) -> None:
        for process in self.running:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
        for process in self.running:
            process.wait(timeout=30)

    def stop(self) -> list[int]:
        """SIGTERM every process and wait; returns the exit statuses."""
        for process in self.running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        return [process.wait(timeout=30) for process in self.running]

    def cleanup(self) -> None:
        """Drop what this run left behind: its topics, target schema and control rows."""
        self.kill9()
        drop_flows(self.dsn, self.prefix)
        delete_topics(self.bootstrap, self.topics)

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def make_workload(self, **spec) -> Workload:
        workload = generate(WorkloadSpec(topic_prefix=self.prefix, **spec))
        self.topics += workload.topics
        produce(workload, self.bootstrap)
        return workload

    def wait_for_log(self, text: str, count: int = 1, timeout_s: float = 120) -> None:
        """Until `text` appears `count` times in the log (e.g. every partition started)."""
        deadline = time.monotonic() + timeout_s
        while True:
            log = self.log_path.read_text(errors="replace") if self.log_path else ""
            if log.count(text) >= count:
                return
            if self.died() or time.monotonic() > deadline:
                raise RuntimeError(f"no {count}× {text!r} in the replicator's log:\n"
                                   f"{self.log_tail(10)}")
            time.sleep(0.2)

    def wait_caught_up(self, workload: Workload, timeout_s: float = 180) -> None:
        """Until every shard's committed offset of every partition is its end offset."""
        ends = {tp: len(entries) for tp, entries in workload.arrivals.items()}
        deadline = time.monotonic() + timeout_s
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while True:
                behind = self.partitions_behind(conn, ends)
                if not behind:
                    return
                if self.died():
                    codes = [p.returncode for p in self.running]
                    raise AssertionError(f"replicator exited ({codes}):\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"not caught up after {timeout_s}s: {behind[:5]}\n"
                                         f"{self.log_tail()}")
                time.sleep(0.5)

    def partitions_behind(self, conn: psycopg.Connection, ends: dict[tuple[str, int], int]):
        """The partitions some shard has not committed to their end (every partition while the
        replicator has not yet created its control tables on a fresh database)."""
        try:
            rows = conn.execute(
                "SELECT topic, partition, count(*), min(next_offset) FROM cdc.offsets "
                "WHERE flow_id = %s GROUP BY topic, partition", (self.flow_id,)).fetchall()
        except psycopg.errors.UndefinedTable:
            rows = []
        got = {(t, p): (n, low) for t, p, n, low in rows}
        return [(tp, got.get(tp), end) for tp, end in ends.items()
                if got.get(tp) != (self.shards, end)]


def drop_flows(dsn: str, prefix: str) -> None:
    """Remove every schema and control row of the flows whose id starts with `prefix` (target
    schemas are named after their flow)."""
    pattern = prefix.replace("_", r"\_") + "%"
    with psycopg.connect(dsn, autocommit=True) as conn:
        schemas = [r[0] for r in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (pattern,))]
        for schema in schemas:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        if conn.execute("SELECT to_regclass('cdc.offsets')").fetchone()[0] is None:
            return
        for table in ("flows", "flow_partitions", "offsets", "shard_commits", "stale_events",
                      "dlq", "gaps", "schema_history", "tables"):
            conn.execute(sql.SQL("DELETE FROM {} WHERE flow_id LIKE %s").format(
                sql.Identifier("cdc", table)), (pattern,))
        for table in ("tombstones", "truncations", "cell_tombstones", "cell_range_deletes"):
            conn.execute(sql.SQL("DELETE FROM {} WHERE table_name LIKE %s").format(
                sql.Identifier("cdc", table)), (pattern,))


def delete_topics(bootstrap: str, topics: list[str]) -> None:
    """Best effort: a topic that is already gone is fine."""
    if not topics:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.delete_topics(topics, operation_timeout=30).values():
        try:
            future.result(timeout=60)
        except Exception:  # noqa: BLE001 - cleanup must not fail the caller
            pass


def version_text(version) -> str:
    """The oracle's version as `cdc.stale_events` spells it (Postgres' pair, SQL Server's
    triple)."""
    if len(version) == 2:
        after, lsn = version
        return f"pg:after={after},lsn={lsn}"
    commit, change, serial = version
    return f"sqlserver:commit={commit},change={change},serial={serial}"


def create_tables_like_workload(dsn: str, schema: str, spec: WorkloadSpec) -> None:
    """Target tables for a workload whose messages carry no schema (they must exist first)."""
    types = {"text": "text", "int32": "integer", "decimal": "numeric(12,2)",
             "micro_ts": "timestamp", "bool": "boolean", "int64": "bigint"}
    keys = {"tenant": "integer", "id": "bigint"}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        for table in spec.tables:
            columns = [sql.SQL("{} {}").format(sql.Identifier(k), sql.SQL(keys[k]))
                       for k in spec.key_columns]
            columns += [sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(types[kind]))
                        for name, kind in spec.value_columns]
            columns.append(sql.SQL("PRIMARY KEY ({})").format(
                sql.SQL(", ").join(map(sql.Identifier, spec.key_columns))))
            conn.execute(sql.SQL("CREATE TABLE {} ({})").format(
                sql.Identifier(schema, table), sql.SQL(", ").join(columns)))


def table_rows(conn: psycopg.Connection, schema: str, table: str,
               key_columns: tuple[str, ...]) -> dict[tuple, dict]:
    """Live rows of a target table, keyed like the oracle, without `_cdc_` columns."""
    cur = conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(schema, table)))
    names = [d.name for d in cur.description]
    rows = {}
    for values in cur:
        row = {n: v for n, v in zip(names, values, strict=True) if not n.startswith("_cdc_")}
        rows[tuple(row[k] for k in key_columns)] = row
    return rows


def assert_matches_oracle(run: Run, workload: Workload,
                          dlq_topics: tuple[str, ...] = ()) -> None:
    """Tables, stale-event audit rows and offsets equal what the oracle expects; no DLQ rows
    but those of `dlq_topics` (a test's poison input, checked by the test)."""
    oracle, spec = workload.oracle, workload.spec
    with psycopg.connect(run.dsn, autocommit=True) as conn:
        for table in spec.tables:
            got = table_rows(conn, run.schema, table, spec.key_columns)
            want = oracle.rows.get(table, {})
            missing = want.keys() - got.keys()
            extra = got.keys() - want.keys()
            wrong = [k for k in want.keys() & got.keys() if got[k] != want[k]]
            assert not (missing or extra or wrong), (
                f"{table}: {len(missing)} missing, {len(extra)} extra (resurrected or never "
                f"deleted), {len(wrong)} wrong; e.g. missing {list(missing)[:3]}, extra "
                f"{list(extra)[:3]}, wrong {[(got[k], want[k]) for k in wrong[:2]]}")
        stale = conn.execute(  # the workload's own: other sources may share the flow
            'SELECT topic, partition, "offset", table_name, version, applied_version '
            "FROM cdc.stale_events WHERE flow_id = %s AND topic = ANY(%s)",
            (run.flow_id, workload.topics)).fetchall()
        positions = [(t, p, o) for t, p, o, *_ in stale]
        assert len(positions) == len(set(positions)), "a stale event was audited twice"
        assert set(positions) == oracle.stale_positions, (
            f"stale audit differs: {len(set(positions) - oracle.stale_positions)} unexpected, "
            f"{len(oracle.stale_positions - set(positions))} missing")
        for topic, partition, offset, table_name, version, applied in stale:
            expected = oracle.stale[(topic, partition, offset)]
            assert table_name == str(TableName(run.schema, expected.table))
            assert version == version_text(expected.version)
            assert applied == version_text(expected.applied_version)
        dlq = conn.execute("SELECT count(*) FROM cdc.dlq WHERE flow_id = %s "
                           "AND NOT topic = ANY(%s)", (run.flow_id, list(dlq_topics))).fetchone()[0]
        assert dlq == 0, "valid events went to the DLQ"
        ends = {tp: len(entries) for tp, entries in workload.arrivals.items()}
        assert run.partitions_behind(conn, ends) == []
