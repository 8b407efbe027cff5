"""Benchmark harness: `python -m benchmarks.run --scenario reference` (`make bench`).

Each run generates fresh topics (unique prefix), runs every system of the scenario on them, checks
each system's output against the workload's LWW oracle before reporting its figures, and updates
`benchmarks/RESULTS.md` and `benchmarks/results/` (results.json, <scenario>.png, profile text).
Scratch files (state dirs, logs) go to `benchmarks/out/<prefix>/`. Needs `make infra-up`.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

from benchmarks import report, systems
from benchmarks.procmon import RssSampler
from benchmarks.replicator_run import delete_topics, drop_flows
from benchmarks.scenarios import SCENARIOS, Scenario
from benchmarks.stats import ScenarioResult, SystemResult, latency_summary
from benchmarks.workload import (
    Workload,
    WorkloadSpec,
    create_workload_topics,
    generate,
    produce,
)
from operators.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_DSN = "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
DEFAULT_REGISTRY = "http://127.0.0.1:8081/apis/ccompat/v7"


def log(msg: str) -> None:
    print(f"[bench {datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def machine_info() -> dict:
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "?"

    return {
        "nproc": os.cpu_count(),
        "ram_gb": round(mem_kb / 1024 / 1024, 1),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "python": f"Python {platform.python_version()}",
        "kernel": platform.release(),
    }


def new_prefix(scenario: str) -> str:
    return f"b{scenario[:3]}{uuid.uuid4().hex[:8]}"


def make_workload(spec: dict, prefix: str, args: argparse.Namespace,
                  produce_now: bool = True) -> Workload:
    """Generate (and produce) the scenario's workload; Avro schemas go to `--registry`."""
    t0 = time.monotonic()
    registry = {"registry_url": args.registry} if spec.get("encoding") == "avro" else {}
    wl = generate(WorkloadSpec(topic_prefix=prefix, **spec, **registry))
    log(f"generated {wl.message_count:,} messages in {time.monotonic() - t0:.1f}s "
        f"(oracle {wl.oracle.counts})")
    if produce_now:
        t0 = time.monotonic()
        produce(wl, args.bootstrap)
        log(f"produced in {time.monotonic() - t0:.1f}s")
    return wl


def spec_summary(spec: dict, wl: Workload | None = None) -> dict:
    out = {k: (",".join(v) if isinstance(v, tuple) else v) for k, v in spec.items()}
    if wl is not None:
        out["messages"] = wl.message_count
    return out


def cleanup(prefix: str, dsn: str, bootstrap: str, topics: list[str]) -> None:
    """Drop what one run created: schemas, control rows, topics, scratch state."""
    drop_flows(dsn, prefix)
    delete_topics(bootstrap, topics)
    shutil.rmtree(OUT / prefix / "state", ignore_errors=True)
    shutil.rmtree(OUT / prefix / "profile-state", ignore_errors=True)
    shutil.rmtree(OUT / prefix / "profile-state_cp", ignore_errors=True)


def _print_system(s: SystemResult) -> None:
    if s.error:
        log(f"{s.system}: FAILED: {s.error}")
    else:
        log(f"{s.system}: {s.correctness}; {s.messages:,} msgs in {s.seconds:.1f}s = "
            f"{s.events_per_s:,.0f} ev/s, {s.mb_per_s:.2f} MB/s, peak RSS "
            f"{s.peak_rss_mb or 0:,.0f} MB")


# --------------------------------------------------------------------------- backlog


def run_backlog(sc: Scenario, res: ScenarioResult, args: argparse.Namespace) -> list[str]:
    prefix = new_prefix(sc.name)
    work = OUT / prefix
    spec = dict(sc.spec)
    if args.events:
        spec["events"] = args.events
    wl = make_workload(spec, prefix, args)
    res.spec = spec_summary(spec, wl)
    total_bytes = systems.workload_bytes(wl)
    res.notes.append(f"Topic prefix `{prefix}`; {total_bytes / 1e6:,.1f} MB of keys+values "
                     f"in {wl.message_count:,} messages.")
    wanted = args.systems.split(",") if args.systems else sc.systems
    for name in wanted:
        systems.checkpoint(args.dsn)
        log(f"running {name}")
        try:
            if name in ("replicator", "replicator-py"):
                r = systems.run_replicator(wl, prefix, args.bootstrap, args.dsn, work,
                                           total_bytes, args.settings, name)
            elif name == "ceiling":
                r = systems.run_ceiling(wl, prefix, args.dsn, total_bytes)
            elif name == "kafka-read":
                r = systems.run_kafka_read(wl, prefix, args.bootstrap, total_bytes, work)
            elif name == "naive":
                r = systems.run_naive(wl, prefix, args.bootstrap, args.dsn, total_bytes, work)
            elif name == "jdbc":
                r = systems.run_jdbc(wl, prefix, args.bootstrap, args.dsn, total_bytes, work,
                                     tasks=args.jdbc_tasks)
            else:
                raise SystemExit(f"unknown system {name!r}")
        except Exception as exc:  # noqa: BLE001 - one failing baseline must not hide the rest
            r = SystemResult(name, messages=wl.message_count, bytes=total_bytes,
                             error=f"{type(exc).__name__}: {str(exc)[:300]}")
        _print_system(r)
        res.systems.append(r)
    if sc.profile and not args.no_profile:
        log("profiling stages in-process")
        # a run that does not update RESULTS.md leaves its profile with its other output
        cp_out = (work / "profile.txt" if args.no_write
                  else report.RESULTS_DIR / f"profile_{report.file_stem(res.scenario)}.txt")
        from benchmarks.profile_stages import profile

        try:
            rows, wall = profile(wl, prefix, args.bootstrap, args.dsn, work, cprofile_out=cp_out)
        except Exception as exc:  # noqa: BLE001 - the operators change under us; keep the rest
            res.profile_note = f"profile failed: {type(exc).__name__}: {exc}"
            log(res.profile_note)
            return [prefix] + wl.topics
        res.profile = rows
        rep = res.system("replicator")
        line = (f"In-process pipeline (DecodeStep + {systems.default_shards()} ShardPartitions, "
                f"no Kafka, no bytewax): {wl.message_count / wall:,.0f} msgs/s in {wall:.1f}s, "
                "one thread, nothing overlaps.")
        if rep is not None and rep.ok:
            line += (f" The real process reached {rep.events_per_s:,.0f} msgs/s: it overlaps each "
                     "Postgres transaction with decoding (a second thread, sharing the GIL) and "
                     "adds the Kafka source and bytewax.")
        line += (f" Top functions by own time (cProfile, a second pass): "
                 f"`{cp_out.relative_to(ROOT)}`.")
        res.profile_note = line
    return [prefix] + wl.topics


# --------------------------------------------------------------------------- scylla


def run_scylla(sc: Scenario, res: ScenarioResult, args: argparse.Namespace) -> list[str]:
    """A ScyllaDB backlog (benchmarks/workload_scylla.py): the replicator, checked against the
    cell oracle, and the baselines on the same topics."""
    from benchmarks.workload_scylla import ScyllaSpec
    from benchmarks.workload_scylla import generate as generate_scylla

    prefix = new_prefix(sc.name)
    spec = dict(sc.spec)
    if args.events:
        spec["events"] = args.events
    t0 = time.monotonic()
    scylla_spec = ScyllaSpec(topic_prefix=prefix, **spec)
    wl = generate_scylla(scylla_spec)
    log(f"generated {wl.message_count:,} messages in {time.monotonic() - t0:.1f}s "
        f"({wl.stats})")
    t0 = time.monotonic()
    produce(wl, args.bootstrap)  # a ScyllaWorkload offers what produce reads
    log(f"produced in {time.monotonic() - t0:.1f}s")
    res.spec = {"encoding": ",".join(f"{t}={e}" for t, e in scylla_spec.encodings) or "legacy",
                **{k: v for k, v in asdict(scylla_spec).items()
                   if k not in ("topic_prefix", "encodings") and v not in ("", 0.0)},
                "messages": wl.message_count}
    total_bytes = systems.cell_workload_bytes(wl)
    live = {t: len(rows) for t, rows in wl.rows.items()}
    res.notes.append(f"Topic prefix `{prefix}`; {total_bytes / 1e6:,.1f} MB of keys+values "
                     f"in {wl.message_count:,} messages; generated: {wl.stats}; visible rows "
                     f"in the oracle: {live}.")
    runners = {
        "replicator": lambda: systems.run_cell_replicator(
            wl, prefix, args.bootstrap, args.dsn, OUT / prefix, total_bytes, args.settings),
        "kafka-read": lambda: systems.run_kafka_read(wl, prefix, args.bootstrap, total_bytes,
                                                     OUT / prefix),
        "ceiling": lambda: systems.run_cell_ceiling(wl, prefix, args.dsn, total_bytes),
    }
    for name in args.systems.split(",") if args.systems else sc.systems:
        if name not in runners:
            raise SystemExit(f"system {name!r} does not run the {sc.name} scenario")
        systems.checkpoint(args.dsn)
        log(f"running {name}")
        try:
            r = runners[name]()
        except Exception as exc:  # noqa: BLE001 - one failing baseline must not hide the rest
            r = SystemResult(name, messages=wl.message_count, bytes=total_bytes,
                             error=f"{type(exc).__name__}: {str(exc)[:300]}")
        _print_system(r)
        res.systems.append(r)
    return [prefix] + wl.topics


# --------------------------------------------------------------------------- latency


_SOURCE_TS = re.compile(rb'"source":\{[^{}]*?"ts_ms":(\d+)')


def source_timestamps(wl: Workload, bootstrap: str) -> dict[tuple[str, int, int], int]:
    """(topic, partition, offset) → the change's `source.ts_ms`, read back from Kafka."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-ts-{uuid.uuid4().hex[:6]}",
                  "enable.auto.commit": False})
    ends = systems.end_offsets(wl)
    c.assign([TopicPartition(t, p, 0) for (t, p) in ends])
    out: dict[tuple[str, int, int], int] = {}
    read = 0  # tombstones included: they carry no source time
    deadline = time.monotonic() + 300
    while read < wl.message_count and time.monotonic() < deadline:
        for m in c.consume(5000, timeout=1):
            read += m.error() is None
            found = None if m.error() or m.value() is None else _SOURCE_TS.search(m.value())
            if found is not None:
                out[(m.topic(), m.partition(), m.offset())] = int(found.group(1))
    c.close()
    return out


def winning_positions(wl: Workload) -> dict[tuple[str, tuple], tuple[str, int, int]]:
    """(table, key) of each live row → position of the first message carrying its version."""
    versions = wl.oracle.versions
    out: dict[tuple[str, tuple], tuple[str, int, int]] = {}
    for (topic, partition), entries in wl.arrivals.items():
        for offset, (ch, tomb) in enumerate(entries):
            k = (ch.table, ch.key)
            if not tomb and k not in out and versions.get(k) == ch.version:
                out[k] = (topic, partition, offset)
    return out


def run_latency(sc: Scenario, res: ScenarioResult, args: argparse.Namespace) -> list[str]:
    prefix = new_prefix(sc.name)
    spec = dict(sc.spec)
    if args.events:
        spec["events"] = args.events
    wl = make_workload(spec, prefix, args, produce_now=False)
    res.spec = {**spec_summary(spec, wl), "rate": sc.rate}
    total_bytes = systems.workload_bytes(wl)
    create_workload_topics(wl, args.bootstrap)
    run = systems.make_run(prefix, args.bootstrap, args.dsn, OUT / prefix, wl, args.settings)
    run.start()
    proc = run.running[0]
    sampler = RssSampler(proc.pid).start()
    topics = [prefix] + wl.topics
    try:
        run.wait_for_log("starting at offset", count=len(wl.arrivals))
    except RuntimeError:
        sampler.stop()
        run.stop()
        raise
    time.sleep(1.0)
    log(f"replicator ready; producing {wl.message_count:,} messages at {sc.rate:,.0f}/s")
    t0 = time.time()
    produce(wl, args.bootstrap, create_topics=False, rate=sc.rate, live_source_time=True)
    t_produced = time.time()
    r = SystemResult("replicator", messages=wl.message_count, bytes=total_bytes)
    try:
        t_end = systems.wait_replicator(run, wl, args.dsn)
        r.peak_rss_mb = sampler.stop()
    finally:
        sampler.stop()
        run.stop()
    from benchmarks.replicator_run import assert_matches_oracle

    try:
        assert_matches_oracle(run, wl)
    except AssertionError as exc:
        r.error = f"does not match the oracle: {str(exc)[:300]}"
        res.systems.append(r)
        return topics
    r.correctness = "matches oracle (rows, stale audit, DLQ, offsets)"
    r.exactly_matches_oracle, r.rows_differ = True, 0
    r.seconds = t_end - t0
    r.timing = (f"first produce → caught up (input rate-limited to {sc.rate:,.0f}/s; producing "
                f"took {t_produced - t0:.1f}s, catch-up after the last produce "
                f"{t_end - t_produced:.1f}s)")
    res.systems.append(r)
    _print_system(r)
    stamps = source_timestamps(wl, args.bootstrap)
    positions = winning_positions(wl)
    lat: list[float] = []
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        for table in wl.spec.tables:
            keycols = sql.SQL(", ").join(map(sql.Identifier, wl.spec.key_columns))
            for *key, updated in conn.execute(sql.SQL(
                    "SELECT {}, extract(epoch FROM _cdc_updated_at)::float8 FROM {}").format(
                    keycols, sql.Identifier(run.schema, table))):
                pos = positions.get((table, tuple(key)))
                if pos is not None and pos in stamps:
                    lat.append(updated * 1000 - stamps[pos])
    res.latency_ms = latency_summary(lat)
    defaults = Settings.model_fields
    res.latency_note = (
        f"{len(lat):,} samples = every live row's winning event (of {wl.message_count:,} "
        "messages). Start: the event's `source.ts_ms`, which the generator stamps with the wall "
        "clock as it sends each change (a live source; read back from Kafka). End: "
        "`_cdc_updated_at`, which the replicator sets to `now()` = "
        "the start of its commit transaction, so each figure is short by that transaction's "
        "duration (tens of ms for a 5,000-row batch). Default settings: "
        f"batch_ms={defaults['batch_ms'].default}, marker_ms={defaults['marker_ms'].default}, "
        "10 s epochs.")
    return topics


# --------------------------------------------------------------------------- memory


def run_memory(sc: Scenario, res: ScenarioResult, args: argparse.Namespace) -> list[str]:
    cleanup_list: list[str] = []
    keys_list = [int(k) for k in args.memory_keys.split(",")] if args.memory_keys \
        else sc.memory_keys
    for keys in keys_list:
        prefix = new_prefix(sc.name)
        spec = {**sc.spec, "keys": keys, "events": int(keys * sc.events_per_key)}
        wl = make_workload(spec, prefix, args)
        total_bytes = systems.workload_bytes(wl)
        r = systems.run_replicator(wl, prefix, args.bootstrap, args.dsn, OUT / prefix,
                                   total_bytes, args.settings)
        _print_system(r)
        res.memory.append({
            "keys": len(wl.oracle.versions), "key_space": keys, "messages": wl.message_count,
            "peak_rss_mb": None if r.error else r.peak_rss_mb,
            "events_per_s": r.events_per_s,
            "correctness": r.error or r.correctness,
        })
        res.spec = spec_summary({k: v for k, v in spec.items() if k not in ("keys", "events")})
        cleanup(prefix, args.dsn, args.bootstrap, wl.topics)
        del wl
        gc.collect()
    res.memory_note = ("`distinct keys` counts the keys the workload touched, each of which "
                       "has a row of state. Peak RSS is the maximum of the process's VmHWM "
                       "and its process-tree VmRSS sampled every 0.2 s.")
    return cleanup_list


# --------------------------------------------------------------------------- main


def _setting(ap: argparse.ArgumentParser, text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("REPLICATE_"):
        ap.error(f"--set {text!r}: expected REPLICATE_NAME=VALUE")
    return name, value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
    ap.add_argument("--systems",
                    help="comma-separated subset (replicator,kafka-read,ceiling,naive,jdbc)")
    ap.add_argument("--events", type=int, help="override the scenario's true-change count")
    ap.add_argument("--memory-keys", help="memory scenario: comma-separated key counts")
    ap.add_argument("--jdbc-tasks", type=int, default=1)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    ap.add_argument("--keep", action="store_true", help="keep topics, schemas and state")
    ap.add_argument("--bootstrap", default=os.environ.get("TEST_KAFKA_BOOTSTRAP",
                                                          DEFAULT_BOOTSTRAP))
    ap.add_argument("--dsn", default=os.environ.get("TEST_PG_DSN", DEFAULT_DSN))
    ap.add_argument("--registry", default=os.environ.get("TEST_SCHEMA_REGISTRY_URL",
                                                         DEFAULT_REGISTRY),
                    help="schema registry for Avro scenarios (Confluent-compatible base URL)")
    ap.add_argument("--set", action="append", default=[], metavar="REPLICATE_NAME=VALUE",
                    help="a replicator setting other than its default (repeatable); the results "
                         "get a section of their own")
    args = ap.parse_args(argv)
    args.settings = dict(_setting(ap, text) for text in args.set)
    sc = SCENARIOS[args.scenario]
    argv_shown = argv if argv is not None else sys.argv[1:]
    name = " ".join([sc.name, *(f"{k}={v}" for k, v in sorted(args.settings.items()))])
    res = ScenarioResult(name, "python -m benchmarks.run " + shlex.join(argv_shown),
                         sc.description, machine=machine_info())
    runner = {"backlog": run_backlog, "latency": run_latency, "memory": run_memory,
              "scylla": run_scylla}[sc.kind]
    created: list[str] = []
    try:
        created = runner(sc, res, args)
    finally:
        if created and not args.keep:
            cleanup(created[0], args.dsn, args.bootstrap, created[1:])
    if not args.no_write:
        res.plot = report.plot(res)
        report.save(res)
        log(f"wrote {report.RESULTS_MD.relative_to(ROOT)}"
            + (f" and benchmarks/{res.plot}" if res.plot else ""))
    print(report.render_scenario(res))
    failed = [s.system for s in res.systems if s.error and s.system in ("replicator", "ceiling")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
