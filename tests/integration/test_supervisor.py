"""`replicate run` on the real Kafka and Postgres: a cluster of two survives `kill -9` of either
process (the supervisor restarts it whole, and counts it in `replicate_restarts_total`; every
process serves metrics on a port of its own), and one flow run with 1, then 3, then 2
processes converges; both exactly once against the workload's oracle."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import psycopg
import pytest

from benchmarks.replicator_run import ROOT, Run, assert_matches_oracle, free_ports
from benchmarks.workload import WorkloadSpec, create_workload_topics, generate, produce
from tests.integration.kills import (
    BackgroundProducer,
    KafkaEnds,
    kill_at_work,
    wait_for_a_commit,
)

pytestmark = pytest.mark.integration
SPEC = dict(events=24_000, keys=4_000, partitions=3, tables=("customers", "orders"))
RATE = 800  # messages/s: ~30 s of input, still arriving through the kills and the stops (a
# restarted cluster takes seconds to commit again, more on a loaded machine)
START_TIMEOUT_S = 60


@pytest.fixture
def run(kafka_bootstrap, pg_dsn, tmp_path):
    run = Run(kafka_bootstrap, pg_dsn, tmp_path / "state")
    yield run
    if run.alive():
        run.stop()
    run.cleanup()


def supervise(run: Run, processes: int) -> None:
    """Start `replicate run --processes N` with `run`'s settings; `run` then stops it (SIGTERM),
    tells whether it died and reads its log (the processes write theirs there too)."""
    run.log_path = run.state_dir.parent / f"{run.flow_id}.log"
    with open(run.log_path, "ab") as log:
        run.running = [subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "run", "--processes", str(processes),
             "--backoff-initial", "0.2", "--backoff-max", "2"],
            cwd=ROOT, env=run.env(), stdout=log, stderr=subprocess.STDOUT)]


def cluster_pids(run: Run) -> dict[int, int]:
    """Process index -> pid of the supervisor's running bytewax processes."""
    supervisor = run.running[0].pid
    pids = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    found = {}
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:  # exited since
            continue
        if b"-i" in argv:  # not a zombie
            found[int(argv[argv.index(b"-i") + 1])] = int(pid)
    return found


class ClusterProcess:
    """Process `index` of the supervised cluster, as `kill_at_work` kills a replicator: `start`
    waits until the supervisor has started a whole new cluster, `kill9` kills this one
    process."""

    def __init__(self, run: Run, processes: int, index: int) -> None:
        self._run, self._processes, self._index = run, processes, index
        self._old: set[int] = set()

    @property
    def flow_id(self) -> str:
        return self._run.flow_id

    def start(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            pids = cluster_pids(self._run)
            if len(pids) == self._processes and not self._old & set(pids.values()):
                return
            assert not self.died(), f"the supervisor exited:\n{self.log_tail()}"
            assert time.monotonic() < deadline, f"no new cluster: {pids}\n{self.log_tail()}"
            time.sleep(0.1)

    def died(self) -> bool:
        return self._run.died()

    def kill9(self) -> None:
        pids = cluster_pids(self._run)
        self._old = set(pids.values())
        os.kill(pids[self._index], signal.SIGKILL)
        while pids[self._index] in cluster_pids(self._run).values():
            time.sleep(0.05)

    def log_tail(self, lines: int = 40) -> str:
        return self._run.log_tail(lines)


def two_free_ports_in_a_row() -> int:
    """A port p with p and p + 1 free (the metrics ports of processes 0 and 1)."""
    for port in free_ports(20):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two free ports in a row")


def restarts_served(port: int) -> float:
    """`replicate_restarts_total` as the process on `port` serves it (waits for it to serve)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as page:
                text = page.read().decode()
            break
        except OSError:
            assert time.monotonic() < deadline, f"nothing serves metrics on {port}"
            time.sleep(0.2)
    return next(float(line.split()[1]) for line in text.splitlines()
                if line.startswith("replicate_restarts_total "))


def start_producing(run: Run, seed: int):
    workload = generate(WorkloadSpec(topic_prefix=run.prefix, seed=seed, **SPEC))
    run.topics += workload.topics
    create_workload_topics(workload, run.bootstrap)
    producer = BackgroundProducer(lambda: produce(workload, run.bootstrap, create_topics=False,
                                                  rate=RATE))
    producer.start()
    return workload, producer


def test_a_cluster_of_two_survives_kill_9_of_either_process_exactly_once(run):
    port = two_free_ports_in_a_row()
    run.extra_env["REPLICATE_METRICS_PORT"] = str(port)
    workload, producer = start_producing(run, seed=41)
    supervise(run, processes=2)
    rng = random.Random(41)
    ends = KafkaEnds(run.bootstrap, sorted(workload.arrivals))
    processes = [ClusterProcess(run, 2, index) for index in (0, 1)]
    try:
        with psycopg.connect(run.dsn, autocommit=True) as conn:
            kills = [kill_at_work(process, conn, ends, rng) for process in processes]
    finally:
        ends.close()
    idle = [k for k in kills if not k.mid_work]
    assert not idle, f"{len(idle)} of 2 kills landed while nothing was in flight: {idle}"
    processes[1].start()
    assert [restarts_served(port), restarts_served(port + 1)] == [2, 0], (
        "process 0 counts the restarts, on its own port")
    producer.join(timeout_s=120)
    run.wait_caught_up(workload)
    last = cluster_pids(run).values()
    assert run.stop() == [0], "SIGTERM stops the supervisor and its cluster with status 0"
    assert not [pid for pid in last if Path(f"/proc/{pid}").exists()], "a process outlived it"
    log = run.log_path.read_text(errors="replace")
    assert "process 0 was killed by SIGKILL: restarting the cluster" in log
    assert "process 1 was killed by SIGKILL: restarting the cluster" in log
    assert_matches_oracle(run, workload)


def test_one_flow_run_with_1_then_3_then_2_processes_converges_exactly_once(run):
    workload, producer = start_producing(run, seed=43)
    with psycopg.connect(run.dsn, autocommit=True) as conn:
        for processes in (1, 3):
            supervise(run, processes)
            wait_for_a_commit(run, conn)
            time.sleep(1.0)
            assert run.stop() == [0]
            ends = {tp: len(entries) for tp, entries in workload.arrivals.items()}
            assert run.partitions_behind(conn, ends), (
                f"the run of {processes} stopped with nothing left for the next")
    supervise(run, processes=2)
    producer.join(timeout_s=120)
    run.wait_caught_up(workload)
    assert run.stop() == [0]
    assert_matches_oracle(run, workload)


def test_a_process_that_exits_on_a_bad_setting_stops_replicate_run_with_status_2(run):
    """Not restarted (the next start would fail the same), and said in the log format the
    processes use."""
    run.extra_env |= {"REPLICATE_TOPICS": f"{run.prefix}.missing", "REPLICATE_LOG_FORMAT": "json"}
    supervise(run, processes=2)
    assert run.running[0].wait(timeout=START_TIMEOUT_S) == 2
    lines = [orjson.loads(line) for line in run.log_path.read_text().splitlines()
             if line.startswith('{"time"')]
    said = [line["message"] for line in lines if line["logger"] == "replicate.supervisor"]
    assert len(said) == 2 and said[0].startswith("started process 0"), said
    assert said[1].endswith("exited with status 2 (a setting that cannot be used, named "
                            "above): not restarting")
