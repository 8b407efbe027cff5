"""The systems under test, each run on the same topics: the replicator, and the `ceiling`,
`naive` and `jdbc` baselines. Every runner returns a `SystemResult` whose figures are only filled
in once the output has been compared with the workload's oracle."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.procmon import CPU_OF, RssSampler
from benchmarks.replicator_run import Run, assert_matches_oracle, table_rows
from benchmarks.stats import RowDiff, SystemResult, diff_rows
from benchmarks.workload import Workload

ROOT = Path(__file__).resolve().parents[1]
JDBC_DIR = ROOT / "benchmarks" / "jdbc_sink"
JDBC_DATABASE = "bench_jdbc"
CEILING_BATCH = 5000


def workload_bytes(wl: Workload) -> int:
    return sum(len(k) + len(v or b"") for *_, k, v in wl.iter_messages())


def end_offsets(wl: Workload) -> dict[tuple[str, int], int]:
    return {tp: len(entries) for tp, entries in wl.arrivals.items()}


def _deadline(wl: Workload, min_rate: float = 500, slack_s: float = 120) -> float:
    return time.monotonic() + slack_s + wl.message_count / min_rate


# --------------------------------------------------------------------------- replicator


def checkpoint(dsn: str) -> None:
    """Write Postgres' dirty pages out before a system is timed, so that no system pays for a
    checkpoint of what another wrote (the full-page writes after a checkpoint slow whatever
    runs then)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def default_replicator_env() -> dict[str, str]:
    """`Run` (tests) shortens batch and marker periods; the benchmark restores the defaults."""
    from operators.settings import Settings

    fields = Settings.model_fields
    return {"REPLICATE_BATCH_MS": str(fields["batch_ms"].default),
            "REPLICATE_MARKER_MS": str(fields["marker_ms"].default)}


def default_shards() -> int:
    from operators.settings import Settings

    return int(Settings.model_fields["shards"].default)


def make_run(prefix: str, bootstrap: str, dsn: str, workdir: Path, wl: Workload,
             settings: Mapping[str, str] = MappingProxyType({}), flow_suffix: str = "") -> Run:
    """A replicator at default settings, except `settings` (REPLICATE_* variables)."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = default_replicator_env()
    if wl.spec.registry_url:
        env["REPLICATE_SCHEMA_REGISTRY_URL"] = wl.spec.registry_url
    env.update(settings)
    shards = int(env.pop("REPLICATE_SHARDS", default_shards()))  # the run waits for each shard
    return Run(bootstrap, dsn, state_dir=workdir / f"state{flow_suffix}", prefix=prefix,
               shards=shards, extra_env=env, flow_suffix=flow_suffix)


def wait_replicator(run: Run, wl: Workload, dsn: str, poll_s: float = 0.1) -> float:
    """Poll `cdc.offsets` until every shard reached every partition end; returns that moment
    (`time.time()`)."""
    ends = end_offsets(wl)
    deadline = _deadline(wl)
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            now = time.monotonic()
            if not run.partitions_behind(conn, ends):
                return time.time()
            if run.died():
                raise RuntimeError(f"replicator exited with {[p.returncode for p in run.running]}: "
                                   f"{run.log_tail(10)}")
            if now > deadline:
                raise RuntimeError(f"replicator not caught up in time: {run.log_tail(10)}")
            time.sleep(poll_s)


FIRST_FETCH_LINE = "source: first messages fetched"
PYTHON_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
CONNECT_LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] ")


def first_log_time(path: Path, marker: str, stamp: re.Pattern[str]) -> float:
    """`time.time()` of the first line of a log that contains `marker` (local-time stamps)."""
    with open(path, errors="replace") as log:
        for line in log:
            if marker in line and (found := stamp.match(line)):
                return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    raise RuntimeError(f"no {marker!r} line in {path}")


PYTHON_DECODER = {"REPLICATE_NATIVE_DECODE": "false"}  # the `replicator-py` system


def run_replicator(wl: Workload, prefix: str, bootstrap: str, dsn: str, workdir: Path,
                   total_bytes: int, settings: Mapping[str, str] = MappingProxyType({}),
                   name: str = "replicator") -> SystemResult:
    """`replicator`, or `replicator-py`: the same without native code (Python decoder and shard
    step), its own flow."""
    suffix = ""
    if name == "replicator-py":
        settings, suffix = {**settings, **PYTHON_DECODER}, "_py"
    res = SystemResult(name, messages=wl.message_count, bytes=total_bytes,
                       timing="its log line `source: first messages fetched` → every shard's "
                              "offset of every partition committed in cdc.offsets (polled every "
                              "0.1 s); incl. start-up: from process start")
    run = make_run(prefix, bootstrap, dsn, workdir, wl, settings, suffix)
    t0 = time.time()
    run.start()
    sampler = RssSampler(run.running[0].pid).start()
    try:
        t_end = wait_replicator(run, wl, dsn)
        peak = sampler.stop()
        t_first = first_log_time(run.log_path, FIRST_FETCH_LINE, PYTHON_LOG_TIME)
    except Exception as exc:  # noqa: BLE001 - reported, and the other systems still run
        sampler.stop()
        run.stop()
        res.error = str(exc)[:300]
        return res
    run.stop()
    try:
        assert_matches_oracle(run, wl)
    except AssertionError as exc:
        res.error = f"does not match the oracle: {str(exc)[:300]}"
        res.correctness = "MISMATCH"
        return res
    res.correctness = "matches oracle (rows, stale audit, DLQ, offsets)"
    res.rows_differ = 0
    res.exactly_matches_oracle = True
    res.seconds = t_end - t_first
    res.seconds_with_startup = t_end - t0
    res.peak_rss_mb = peak
    res.note = f"{run.shards} shards, batch_ms/marker_ms at defaults" + (
        "; Python decoder and shard step only (REPLICATE_NATIVE_DECODE=false)" if suffix else "")
    cpu = {of: sampler.cpu_between(t_first, t_end, of) for of in CPU_OF}
    if all(cpu.values()):
        per = {of: seconds / wl.message_count * 1e6 for of, seconds in cpu.items()}
        res.note += (f"; {per['process']:.1f} µs of process CPU per message (Postgres "
                     f"{per['postgres']:.1f}, the whole machine {per['machine']:.1f})")
    return res


# --------------------------------------------------------------------------- oracle checks


def compare_tables(dsn: str, wl: Workload, schema: str, table_name) -> RowDiff:
    """RowDiff of every table against the oracle; `table_name(table)` names the relation."""
    total = RowDiff()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in wl.spec.tables:
            got = table_rows(conn, schema, table_name(table), wl.spec.key_columns)
            total = total.add(diff_rows(got, wl.oracle.rows.get(table, {})))
    return total


# --------------------------------------------------------------------------- ceiling


def _workload_decoder(wl: Workload, schema: str) -> Any:
    """The replicator's own decoder for `wl`'s messages (Avro schemas from its registry)."""
    from operators.decode import Decoder
    from schemas.registry import registry_fetcher

    fetch = registry_fetcher(wl.spec.registry_url, 5) if wl.spec.registry_url else None
    return Decoder(schema, {}, None, fetch)


def predecode(wl: Workload, schema: str) -> list[Any]:
    """ChangeEvents of every message, decoded by the replicator's own decoder (untimed)."""
    from operators.events import RawMessage

    decoder = _workload_decoder(wl, schema)
    out = []
    for topic, partition, offset, key, value in wl.iter_messages():
        ev = decoder.decode(RawMessage(topic, partition, offset, key, value))
        if ev is not None:
            out.append(ev)
    return out


def _create_ceiling_tables(conn: psycopg.Connection, schema: str, events: list[Any]) -> dict:
    """One table per event table (the decoder's column types), soft deletes, plus a `<t>_live`
    view of the rows that are not deleted. Returns table name -> (columns, key)."""
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    shapes: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    for ev in events:
        if ev.table.name in shapes or ev.schema is None:
            continue
        cols = ev.schema.columns
        defs = [sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.pg_type)) for c in cols]
        defs += [sql.SQL("_cdc_version bytea NOT NULL"), sql.SQL("_cdc_deleted boolean NOT NULL")]
        defs.append(sql.SQL("PRIMARY KEY ({})").format(
            sql.SQL(", ").join(map(sql.Identifier, ev.schema.key))))
        conn.execute(sql.SQL("CREATE TABLE {} ({})").format(
            sql.Identifier(schema, ev.table.name), sql.SQL(", ").join(defs)))
        conn.execute(sql.SQL("CREATE VIEW {} AS SELECT * FROM {} WHERE NOT _cdc_deleted").format(
            sql.Identifier(schema, ev.table.name + "_live"), sql.Identifier(schema, ev.table.name)))
        shapes[ev.table.name] = (tuple(c.name for c in cols), tuple(ev.schema.key))
    return shapes


def run_ceiling(wl: Workload, prefix: str, dsn: str, total_bytes: int,
                batch: int = CEILING_BATCH) -> SystemResult:
    """Pre-decoded events → per batch and table: COPY into a temp stage, then one
    `INSERT ... SELECT DISTINCT ON (key) ... ON CONFLICT DO UPDATE WHERE version guard`.
    Deletes are soft (a versioned row with `_cdc_deleted`), which also fences late inserts."""
    from operators.events import ChangeEvent, Op

    schema = f"{prefix}_ceiling"
    res = SystemResult("ceiling", messages=wl.message_count, bytes=total_bytes,
                       timing="first COPY → last commit; decoding and row building done before "
                              "timing (no Kafka, no decode)")
    events = [e for e in predecode(wl, schema) if type(e) is ChangeEvent]
    with psycopg.connect(dsn, autocommit=True) as conn:
        shapes = _create_ceiling_tables(conn, schema, events)
        stmts = {}
        for table, (cols, key) in shapes.items():
            stage = sql.Identifier(f"stage_{table}")
            conn.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {}) ON COMMIT DELETE ROWS").format(
                stage, sql.Identifier(schema, table)))
            allc = [*cols, "_cdc_version", "_cdc_deleted"]
            ids = sql.SQL(", ").join(map(sql.Identifier, allc))
            copy = sql.SQL("COPY {} ({}) FROM STDIN").format(stage, ids)
            upsert = sql.SQL(
                "INSERT INTO {t} ({ids}) SELECT DISTINCT ON ({k}) {ids} FROM {s} "
                "ORDER BY {k}, _cdc_version DESC "
                "ON CONFLICT ({k}) DO UPDATE SET {sets} WHERE {t}._cdc_version < "
                "excluded._cdc_version").format(
                t=sql.Identifier(schema, table), ids=ids, s=stage,
                k=sql.SQL(", ").join(map(sql.Identifier, key)),
                sets=sql.SQL(", ").join(sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c))
                                        for c in allc if c not in key))
            stmts[table] = (copy, upsert)
        # Row tuples, per batch and table, built before the clock starts.
        batches: list[dict[str, list[tuple]]] = []
        for i in range(0, len(events), batch):
            per: dict[str, list[tuple]] = {}
            for ev in events[i:i + batch]:
                cols, key = shapes[ev.table.name]
                keyd = dict(zip(ev.key_columns, ev.key, strict=True))
                if ev.op is Op.DELETE:
                    row = tuple(keyd.get(c) for c in cols) + (ev.version, True)
                else:
                    vals = ev.values or {}
                    row = tuple(vals.get(c, keyd.get(c)) for c in cols) + (ev.version, False)
                per.setdefault(ev.table.name, []).append(row)
            batches.append(per)
        res.seconds = _timed_staged_merge(conn, batches, stmts)
    diff = compare_tables(dsn, wl, schema, lambda t: t + "_live")
    res.rows_differ = diff.total
    res.exactly_matches_oracle = diff.total == 0
    res.correctness = diff.describe() + " (table rows only; no audit)"
    if diff.total:
        res.error = f"ceiling does not match the oracle: {diff.describe()}"
    res.note = f"{batch} events per transaction, one connection, soft deletes"
    return res


# --------------------------------------------------------------------------- naive


def _timed_staged_merge(conn: psycopg.Connection, batches: list[dict[str, list[tuple]]],
                        stmts: dict[str, tuple[sql.Composable, sql.Composable]]) -> float:
    """Seconds to write `batches` (per table: the rows to stage), one transaction each: per
    table one `COPY` into its stage and its merge statement (`stmts[table]`)."""
    t0 = time.monotonic()
    for per in batches:
        with conn.transaction():
            for table, rows in per.items():
                copy_stmt, upsert = stmts[table]
                with conn.cursor().copy(copy_stmt) as cp:
                    for row in rows:
                        cp.write_row(row)
                conn.execute(upsert)
    return time.monotonic() - t0


def create_plain_tables(dsn: str, wl: Workload, schema: str, database_schema_events) -> None:
    """The naive loop's tables: the same columns and key, no metadata (created untimed, as a
    person writing that loop would create them by hand)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        done = set()
        for ev in database_schema_events:
            if ev.table.name in done or ev.schema is None:
                continue
            done.add(ev.table.name)
            defs = [sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.pg_type))
                    for c in ev.schema.columns]
            defs.append(sql.SQL("PRIMARY KEY ({})").format(
                sql.SQL(", ").join(map(sql.Identifier, ev.schema.key))))
            conn.execute(sql.SQL("CREATE TABLE {} ({})").format(
                sql.Identifier(schema, ev.table.name), sql.SQL(", ").join(defs)))


def first_event_per_table(wl: Workload, schema: str) -> list[Any]:
    from operators.events import RawMessage

    decoder = _workload_decoder(wl, schema)
    out, seen = [], set()
    for topic, partition, offset, key, value in wl.iter_messages():
        if topic in seen or value is None:
            continue
        ev = decoder.decode(RawMessage(topic, partition, offset, key, value))
        if ev is not None and getattr(ev, "schema", None) is not None:
            out.append(ev)
            seen.add(topic)
    return out


def _run_baseline_script(module: str, args: list[str], workdir: Path, wl: Workload
                         ) -> tuple[dict[str, Any], float, float | None]:
    """Run `python -m module args` (a baseline that prints one JSON line of timings last) under
    an RSS sampler; (its timings, seconds from its start to its exit, peak RSS MB)."""
    workdir.mkdir(parents=True, exist_ok=True)
    name = module.rpartition(".")[2]
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log:
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=log)
        sampler = RssSampler(proc.pid).start()
        try:
            out, _ = proc.communicate(timeout=_deadline(wl) - time.monotonic())
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"{name} timed out; see {log_path}") from None
        finally:
            peak = sampler.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{name} exited with {proc.returncode}; see {log_path}")
    return json.loads(out.decode().strip().splitlines()[-1]), time.monotonic() - t0, peak


def run_naive(wl: Workload, prefix: str, bootstrap: str, dsn: str, total_bytes: int,
              workdir: Path) -> SystemResult:
    schema = f"{prefix}_naive"
    res = SystemResult("naive", messages=wl.message_count, bytes=total_bytes,
                       timing="its first consumed message → consumer position at every "
                              "partition end (after its last Postgres commit), timed inside the "
                              "process; incl. start-up: from process start")
    create_plain_tables(dsn, wl, schema, first_event_per_table(wl, schema))
    stats, res.seconds_with_startup, res.peak_rss_mb = _run_baseline_script(
        "benchmarks.naive", ["--bootstrap", bootstrap, "--dsn", dsn, "--schema", schema,
                             "--group", f"{prefix}-naive", "--topics", ",".join(wl.topics)],
        workdir, wl)
    diff = compare_tables(dsn, wl, schema, lambda t: t)
    res.rows_differ = diff.total
    res.exactly_matches_oracle = diff.total == 0
    res.correctness = diff.describe()
    res.seconds = stats.get("seconds_from_first_message")
    res.note = (f"{stats.get('batches', 0)} poll batches; executemany upsert/delete, commit per "
                "batch, then a synchronous Kafka offset commit; librdkafka's default fetch "
                "settings")
    return res


def run_kafka_read(wl: Workload, prefix: str, bootstrap: str, total_bytes: int,
                   workdir: Path) -> SystemResult:
    res = SystemResult("kafka-read", messages=wl.message_count, bytes=total_bytes,
                       timing="its first consumed message → consumer position at every "
                              "partition end, timed inside the process; incl. start-up: from "
                              "process start")
    stats, res.seconds_with_startup, res.peak_rss_mb = _run_baseline_script(
        "benchmarks.kafka_read", ["--bootstrap", bootstrap, "--group", f"{prefix}-kafka-read",
                                  "--topics", ",".join(wl.topics)], workdir, wl)
    if (stats["messages"], stats["bytes"]) != (wl.message_count, total_bytes):
        raise RuntimeError(f"read {stats['messages']:,} messages of {stats['bytes']:,} bytes, "
                           f"produced {wl.message_count:,} of {total_bytes:,}")
    res.correctness = f"read every message ({wl.message_count:,}, {total_bytes / 1e6:,.1f} MB)"
    res.seconds = stats["seconds_from_first_message"]
    res.note = (f"the replicator's librdkafka fetch settings, no processing; "
                f"{stats['cpu_seconds'] * 1e6 / wl.message_count:.1f} µs of process CPU "
                "per message")
    return res


# --------------------------------------------------------------------------- jdbc


def ensure_database(dsn: str, name: str) -> str:
    """Create database `name` if missing; returns a DSN for it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**info)


def group_offsets(admin: Any, group: str) -> dict[tuple[str, int], int]:
    """Committed offsets of consumer group `group` (AdminClient.list_consumer_group_offsets)."""
    from confluent_kafka import ConsumerGroupTopicPartitions

    futs = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                             request_timeout=10)
    out = {}
    for fut in futs.values():
        for tp in fut.result(timeout=15).topic_partitions or []:
            if tp.offset >= 0:
                out[(tp.topic, tp.partition)] = tp.offset
    return out


def run_jdbc(wl: Workload, prefix: str, bootstrap: str, dsn: str, total_bytes: int,
             workdir: Path, tasks: int = 1) -> SystemResult:
    res = SystemResult("jdbc", messages=wl.message_count, bytes=total_bytes,
                       timing="the consumer's first `Resetting offset for partition` log line "
                              "→ the connector's consumer group offsets at every partition end "
                              "(AdminClient, polled every 0.5 s; offset.flush.interval.ms=1000); "
                              "incl. start-up: from the JVM launch")
    work = workdir / "jdbc"
    jdbc_dsn = ensure_database(dsn, JDBC_DATABASE)
    info = psycopg.conninfo.conninfo_to_dict(jdbc_dsn)
    url = f"jdbc:postgresql://{info.get('host', '127.0.0.1')}:{info.get('port', 5432)}/" \
          f"{JDBC_DATABASE}"
    name = f"{prefix}-jdbc"
    group = f"connect-{name}"
    ends = end_offsets(wl)
    subprocess.run([str(JDBC_DIR / "fetch.sh")], check=True)
    env = {**os.environ, "KAFKA_BOOTSTRAP": bootstrap,
           "JDBC_USER": info.get("user", "postgres"), "JDBC_PASSWORD": info.get("password", "")}
    t0 = time.time()
    subprocess.run([str(JDBC_DIR / "start.sh"), str(work), name, re.escape(prefix) + r"\..*",
                    url, str(tasks)], check=True, env=env, stdout=subprocess.DEVNULL)
    pid = int((work / "connect.pid").read_text())
    sampler = RssSampler(pid).start()
    deadline = _deadline(wl, min_rate=200)
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        while True:
            done = group_offsets(admin, group)
            if all(done.get(tp, 0) >= end for tp, end in ends.items()):
                break
            if not Path(f"/proc/{pid}").exists():
                raise RuntimeError(f"Kafka Connect exited; see {work / 'connect.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"jdbc sink not caught up in time; see {work / 'connect.log'}")
            time.sleep(0.5)
        t_end = time.time()
        res.seconds_with_startup = t_end - t0
        res.seconds = t_end - first_log_time(work / "connect.log", "Resetting offset for partition",
                                             CONNECT_LOG_TIME)
        res.peak_rss_mb = sampler.stop()
    except Exception as exc:  # noqa: BLE001
        sampler.stop()
        res.error = str(exc)[:300]
    finally:
        subprocess.run([str(JDBC_DIR / "stop.sh"), str(work)], check=False)
    if res.error:
        return res
    tables = {}
    with psycopg.connect(jdbc_dsn, autocommit=True) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")]
    for table in wl.spec.tables:
        want = re.sub(r"\W", "_", wl.spec.topic(table)).lower()
        match = [n for n in names if n.lower() == want]
        if not match:
            res.error = f"jdbc sink created no table for {table} (looked for {want})"
            return res
        tables[table] = match[0]
    diff = compare_tables(jdbc_dsn, wl, "public", tables.__getitem__)
    res.rows_differ = diff.total
    res.exactly_matches_oracle = diff.total == 0
    res.correctness = diff.describe()
    res.note = (f"Debezium JDBC sink {jdbc_version()}, tasks.max={tasks}, JsonConverter with "
                "schemas, upsert + delete.enabled, at-least-once, arrival order wins")
    with psycopg.connect(jdbc_dsn, autocommit=True) as conn:
        for t in tables.values():
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("public", t)))
    return res


def jdbc_version() -> str:
    m = re.search(r"<debezium.version>([^<]+)<", (JDBC_DIR / "pom.xml").read_text())
    return m.group(1) if m else "?"


# --------------------------------------------------------------------------- scylla (cells)
# The `scylla` scenario's workload (benchmarks/workload_scylla.py) has no LWW oracle: its
# expected rows are what Cassandra's cell semantics make of the statements (`wl.rows`).


def cell_workload_bytes(wl: Any) -> int:
    """Keys + values of every message of a ScyllaWorkload."""
    return sum(len(k) + len(v or b"") for tp in wl.arrivals for k, v in wl.iter_partition(*tp))


def cql_types_setting(wl: Any) -> str:
    """REPLICATE_CQL_TYPES for a ScyllaWorkload: its declared CQL types that the legacy message
    does not tell (a decimal arrives as a string)."""
    from benchmarks.workload_scylla import KEYS, REGULAR

    declared = {c: t for c, t in REGULAR.items() if t == "decimal"}
    return json.dumps({wl.spec.topic(t): declared for t in KEYS})


def _utc_naive(value: Any) -> Any:
    """A timestamptz as the oracle holds timestamps: naive UTC."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def compare_cell_tables(dsn: str, wl: Any, schema: str, table_name) -> RowDiff:
    """RowDiff of every table of a ScyllaWorkload against the cell oracle's rows; key and
    regular columns only, `table_name(table)` names the relation."""
    from benchmarks.workload_scylla import KEYS, REGULAR

    total = RowDiff()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table, key in KEYS.items():
            columns = [*key, *REGULAR]
            cur = conn.execute(sql.SQL("SELECT {} FROM {}").format(
                sql.SQL(", ").join(map(sql.Identifier, columns)),
                sql.Identifier(schema, table_name(table))))
            got = {tuple(r[:len(key)]): {c: _utc_naive(v) for c, v in zip(columns, r,
                                                                          strict=True)}
                   for r in cur}
            total = total.add(diff_rows(got, wl.rows.get(table, {})))
    return total


def _timed_replicator(run: Run, wl: Any, dsn: str, res: SystemResult) -> bool:
    """Run `run` over the backlog and fill `res`'s times, peak RSS and CPU note; False (and
    `res.error`) when it did not catch up. The process is stopped either way."""
    t0 = time.time()
    run.start()
    sampler = RssSampler(run.running[0].pid).start()
    try:
        t_end = wait_replicator(run, wl, dsn)
        res.peak_rss_mb = sampler.stop()
        t_first = first_log_time(run.log_path, FIRST_FETCH_LINE, PYTHON_LOG_TIME)
    except Exception as exc:  # noqa: BLE001 - reported, and the other systems still run
        sampler.stop()
        run.stop()
        res.error = str(exc)[:300]
        return False
    run.stop()
    res.seconds = t_end - t_first
    res.seconds_with_startup = t_end - t0
    cpu = {of: sampler.cpu_between(t_first, t_end, of) for of in CPU_OF}
    if all(cpu.values()):
        per = {of: seconds / wl.message_count * 1e6 for of, seconds in cpu.items()}
        res.note += (f"; {per['process']:.1f} µs of process CPU per message (Postgres "
                     f"{per['postgres']:.1f}, the whole machine {per['machine']:.1f})")
        others = (cpu["machine"] - cpu["process"] - cpu["postgres"]) / (t_end - t_first)
        res.note += (f"; the other processes (the Kafka broker, and anyone sharing the machine) "
                     f"used {others:.2f} of its {os.cpu_count()} CPUs meanwhile")
    return True


def run_cell_replicator(wl: Any, prefix: str, bootstrap: str, dsn: str, workdir: Path,
                        total_bytes: int, settings: Mapping[str, str] = MappingProxyType({})
                        ) -> SystemResult:
    """The replicator on a ScyllaWorkload (default settings and the tables' CQL types); its
    tables must equal the cell oracle's rows, with no DLQ rows."""
    res = SystemResult("replicator", messages=wl.message_count, bytes=total_bytes,
                       timing="its log line `source: first messages fetched` → every shard's "
                              "offset of every partition committed in cdc.offsets (polled every "
                              "0.1 s); incl. start-up: from process start")
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**default_replicator_env(), "REPLICATE_CQL_TYPES": cql_types_setting(wl), **settings}
    shards = int(env.pop("REPLICATE_SHARDS", default_shards()))
    run = Run(bootstrap, dsn, state_dir=workdir / "state", prefix=prefix, shards=shards,
              extra_env=env)
    res.note = f"{shards} shards, batch_ms/marker_ms at defaults"
    if not _timed_replicator(run, wl, dsn, res):
        return res
    diff = compare_cell_tables(dsn, wl, run.schema, lambda t: t)
    with psycopg.connect(dsn, autocommit=True) as conn:
        dlq, stale = (conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE flow_id = %s").format(
            sql.Identifier("cdc", t)), (run.flow_id,)).fetchone()[0]
            for t in ("dlq", "stale_events"))
    if diff.total or dlq:
        res.error = f"does not match the cell oracle: {diff.describe()}; {dlq:,} DLQ rows"
        res.correctness = "MISMATCH"
        return res
    res.correctness = f"{diff.describe()} (rows, DLQ, offsets)"
    res.rows_differ, res.exactly_matches_oracle = 0, True
    res.note += f"; {stale:,} changes audited as stale"
    return res


def _cell_meta(state: Any, table: str, key: tuple, now_us: int
               ) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """(regular column values, `_cdc_cells`-shaped versions, alive) of one row of the oracle's
    reconciled state, read at `now_us`: versions at or before the row's deletion are dropped,
    as the replicator drops them."""
    from benchmarks.cell_oracle import cell_rank
    from benchmarks.workload_scylla import REGULAR

    deleted = state.deletion_us(table, key)
    floor = -1 if deleted is None else deleted
    meta: dict[str, Any] = {"c": {}}
    if deleted is not None:
        meta["d"] = deleted
    marker = state.markers.get((table, key))
    alive = False
    if marker is not None and marker.ts_us > floor:
        meta["m"] = [marker.ts_us, marker.expiry_us or 0]
        alive = marker.expiry_us is None or now_us < marker.expiry_us
    values: dict[str, Any] = dict.fromkeys(REGULAR)
    for col in REGULAR:
        cell = state.cells.get((table, key, col))
        if cell is None or cell.ts_us <= floor:
            continue
        ts, kind, expiry, tie = cell_rank(cell)
        meta["c"][col] = [ts, kind, expiry, tie.hex()]
        if cell.value is not None and (cell.expiry_us is None or now_us < cell.expiry_us):
            values[col] = cell.value.replace(tzinfo=UTC) if isinstance(cell.value, datetime) \
                else cell.value
            alive = True
    return values, meta, alive


def _cell_ceiling_batches(wl: Any, batch: int) -> list[dict[str, list[tuple]]]:
    """Per batch of `batch` changes (partition by partition, as the reference ceiling takes
    them): the rows they touched, as the oracle reconciles them at the batch's end and reads
    them at `spec.clock_us` (as `wl.rows`), per table:
    (key..., regular columns..., _cdc_cells, _cdc_version, _cdc_deleted)."""
    from benchmarks.cell_oracle import Reconciled

    state = Reconciled()
    rows_of: dict[tuple[str, tuple], set[tuple]] = {}  # partition -> its rows seen
    changes = [ev for tp in sorted(wl.arrivals) for ev, tomb, _ in wl.arrivals[tp] if not tomb]
    out = []
    for i in range(0, len(changes), batch):
        touched: set[tuple[str, tuple]] = set()
        for ev in changes[i:i + batch]:
            state.add(ev)
            partition = (ev.table, ev.key[:ev.partition_key_len])
            if ev.kind in ("partition_delete", "range_delete"):
                touched.update((ev.table, k) for k in rows_of.get(partition, ()))
            else:
                rows_of.setdefault(partition, set()).add(ev.key)
                touched.add((ev.table, ev.key))
        per: dict[str, list[tuple]] = {}
        for table, key in sorted(touched):
            values, meta, alive = _cell_meta(state, table, key, wl.spec.clock_us)
            newest = max([meta.get("d", 0), meta.get("m", [0])[0],
                          *(r[0] for r in meta["c"].values())])
            per.setdefault(table, []).append(
                (*key, *values.values(), json.dumps(meta, separators=(",", ":")),
                 newest.to_bytes(8, "big", signed=True), not alive))
        out.append(per)
    return out


def _create_cell_ceiling_tables(conn: psycopg.Connection, wl: Any, schema: str
                                ) -> dict[str, tuple[str, ...]]:
    """The ceiling's tables: the replicator's column types (schemas/cql_types.py on the
    workload's Connect schemas), `_cdc_cells` jsonb, `_cdc_version`, soft deletes, and a
    `<t>_live` view. Returns table -> its columns in staging order."""
    from benchmarks.workload_scylla import KEYS, REGULAR, schemas
    from schemas.cql_types import column_type

    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    out = {}
    for table, key in KEYS.items():
        fields = {f["field"]: f for f in schemas(wl.spec, table)[1]["fields"]
                  if f["field"] == "after"}["after"]["fields"]
        wire = {f["field"]: (f["fields"][0] if f["type"] == "struct" else f) for f in fields}
        cql = {**dict.fromkeys(key, "int"), **REGULAR}
        columns = (*key, *REGULAR)
        defs = [sql.SQL("{} {}").format(sql.Identifier(c),
                                        sql.SQL(column_type(wire[c], cql[c]).pg_type))
                for c in columns]
        defs += [sql.SQL("_cdc_cells jsonb NOT NULL, _cdc_version bytea NOT NULL, "
                         "_cdc_deleted boolean NOT NULL"),
                 sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(map(sql.Identifier, key)))]
        conn.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(schema, table),
                                                            sql.SQL(", ").join(defs)))
        conn.execute(sql.SQL("CREATE VIEW {} AS SELECT * FROM {} WHERE NOT _cdc_deleted").format(
            sql.Identifier(schema, table + "_live"), sql.Identifier(schema, table)))
        out[table] = (*columns, "_cdc_cells", "_cdc_version", "_cdc_deleted")
    return out


def run_cell_ceiling(wl: Any, prefix: str, dsn: str, total_bytes: int,
                     batch: int = CEILING_BATCH) -> SystemResult:
    """The staged-merge ceiling of a ScyllaWorkload: per batch of changes, the rows they
    touched as the oracle reconciles them (values and cell versions, computed before timing)
    → COPY into a temp stage, then one `INSERT ... ON CONFLICT DO UPDATE` per table where the
    stored versions differ. Dead rows are soft deletes."""
    from benchmarks.workload_scylla import KEYS

    schema = f"{prefix}_ceiling"
    res = SystemResult("ceiling", messages=wl.message_count, bytes=total_bytes,
                       timing="first COPY → last commit; decoding and cell reconciliation done "
                              "before timing (no Kafka, no decode, no merge of versions)")
    batches = _cell_ceiling_batches(wl, batch)
    with psycopg.connect(dsn, autocommit=True) as conn:
        stmts = {}
        for table, columns in _create_cell_ceiling_tables(conn, wl, schema).items():
            stage = sql.Identifier(f"stage_{table}")
            conn.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {}) ON COMMIT DELETE ROWS").format(
                stage, sql.Identifier(schema, table)))
            ids = sql.SQL(", ").join(map(sql.Identifier, columns))
            stmts[table] = (
                sql.SQL("COPY {} ({}) FROM STDIN").format(stage, ids),
                sql.SQL("INSERT INTO {t} ({ids}) SELECT {ids} FROM {s} ON CONFLICT ({k}) "
                        "DO UPDATE SET {sets} WHERE {t}._cdc_cells IS DISTINCT FROM "
                        "excluded._cdc_cells").format(
                    t=sql.Identifier(schema, table), ids=ids, s=stage,
                    k=sql.SQL(", ").join(map(sql.Identifier, KEYS[table])),
                    sets=sql.SQL(", ").join(sql.SQL("{0} = excluded.{0}").format(
                        sql.Identifier(c)) for c in columns if c not in KEYS[table])))
        res.seconds = _timed_staged_merge(conn, batches, stmts)
    diff = compare_cell_tables(dsn, wl, schema, lambda t: t + "_live")
    res.rows_differ = diff.total
    res.exactly_matches_oracle = diff.total == 0
    res.correctness = diff.describe() + " (table rows only; no audit)"
    if diff.total:
        res.error = f"ceiling does not match the cell oracle: {diff.describe()}"
    staged = sum(len(rows) for per in batches for rows in per.values())
    res.note = (f"{batch} changes per transaction, one connection, soft deletes; {staged:,} rows "
                "staged (each batch's touched rows, with their cell versions as `_cdc_cells`)")
    return res
