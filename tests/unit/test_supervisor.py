"""`replicate run`'s supervisor without processes or real time: the backoff, the restart
decision, the supervision loop on fake processes and a fake clock, its options, and how a
started process learns its metrics port and the restart count."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Mapping

import pytest
from prometheus_client import REGISTRY

from flows import cli
from flows.supervisor import (
    Backoff,
    Cluster,
    Decision,
    Exited,
    Supervisor,
    cluster_of,
    decide,
)
from operators import metrics
from operators.health import process_index
from operators.settings import ConfigError

BACKOFF = Backoff(initial_s=1.0, cap_s=8.0)


def test_the_backoff_doubles_per_failure_up_to_its_cap():
    assert [BACKOFF.delay(n, rand=0.999999) for n in range(1, 7)] == pytest.approx(
        [1, 2, 4, 8, 8, 8], rel=1e-5)
    assert BACKOFF.delay(10_000, rand=0.5) <= BACKOFF.cap_s


def test_the_backoff_jitter_takes_off_up_to_half_the_delay():
    delays = [BACKOFF.delay(3, rand=r / 10) for r in range(10)]
    assert delays == sorted(delays) and len(set(delays)) == 10
    assert min(delays) == 2.0 and max(delays) < 4.0


@pytest.mark.parametrize(("status", "stopping", "decision"), [
    (-signal.SIGKILL, False, Decision.RESTART),
    (1, False, Decision.RESTART),
    (0, False, Decision.RESTART),  # a process that stops without being asked leaves a cluster
    (2, False, Decision.GIVE_UP),  # a configuration error: the next start would fail the same
    (2, True, Decision.STOP),
    (-signal.SIGKILL, True, Decision.STOP),
])
def test_the_restart_decision(status, stopping, decision):
    assert decide(Exited(0, status), stopping) is decision


def test_an_exit_is_described_by_its_process_and_status_or_signal():
    assert Exited(1, -signal.SIGKILL).describe() == "process 1 was killed by SIGKILL"
    assert Exited(0, 3).describe() == "process 0 exited with status 3"


class FakeClock:
    """Time moves only when the supervisor sleeps; callbacks fire at their time."""

    def __init__(self) -> None:
        self.now = 0.0
        self._due: list[tuple[float, Callable[[], None]]] = []

    def at(self, when: float, action: Callable[[], None]) -> None:
        self._due.append((when, action))

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        assert self.now < 10_000, "the supervisor never returned"
        for when, action in [d for d in self._due if d[0] <= self.now]:
            self._due.remove((when, action))
            action()


class FakeChild:
    """A replicator process: exits 0 on SIGTERM (unless it hangs), dies on SIGKILL."""

    def __init__(self, pid: int, hangs: bool) -> None:
        self.pid = pid
        self.status: int | None = None
        self.signals: list[int] = []
        self._hangs = hangs

    def poll(self) -> int | None:
        return self.status

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        if sig == signal.SIGKILL:
            self.status = -sig
        elif not self._hangs:
            self.status = 0


class FakeCluster:
    """Starts FakeChilds and makes the `failures[n]` of the n-th start happen: (seconds after
    the start, index of the process, exit status)."""

    def __init__(self, clock: FakeClock, failures: list[tuple[float, int, int]],
                 hangs: bool = False) -> None:
        self.clock = clock
        self.failures = failures
        self.hangs = hangs
        self.starts: list[dict[int, FakeChild]] = []
        self.restart_env: list[str] = []  # what the first process of each start was given
        self.others_env: list[str] = []
        self.started_at: list[float] = []

    def spawn(self, command: list[str], env: Mapping[str, str]) -> FakeChild:
        index = int(command[command.index("-i") + 1]) if "-i" in command else 0
        if index == 0:
            self.starts.append({})
            self.restart_env.append(env[metrics.RESTARTS_ENV])
            self.started_at.append(self.clock.now)
            start = len(self.starts) - 1
            if start < len(self.failures):
                after, who, status = self.failures[start]
                self.clock.at(self.clock.now + after, lambda: self._exit(start, who, status))
        else:
            self.others_env.append(env[metrics.RESTARTS_ENV])
        child = FakeChild(100 * len(self.starts) + index, self.hangs)
        self.starts[-1][index] = child
        return child

    def _exit(self, start: int, index: int, status: int) -> None:
        self.starts[start][index].status = status


def supervisor(clock: FakeClock, cluster: FakeCluster, processes: int = 2,
               grace_s: float = 5.0) -> Supervisor:
    return Supervisor(Cluster(processes, processes), BACKOFF, grace_s, spawn=cluster.spawn,
                      environ={}, clock=lambda: clock.now, sleep=clock.sleep, rand=lambda: 0.0)


def restart_waits(cluster: FakeCluster) -> list[float]:
    """Seconds from each failure to the next start (the backoff, plus at most two 0.1 s polls)."""
    return [b - (a + after) for a, b, (after, _, _) in
            zip(cluster.started_at, cluster.started_at[1:], cluster.failures, strict=False)]


def test_a_dying_process_restarts_the_whole_cluster_after_a_growing_backoff():
    clock = FakeClock()
    cluster = FakeCluster(clock, [(2.0, 1, -signal.SIGKILL), (2.0, 0, 1), (2.0, 1, 0)])
    sup = supervisor(clock, cluster)
    clock.at(100.0, lambda: sup.request_stop(signal.SIGTERM))
    assert sup.run() == 0
    assert len(cluster.starts) == 4 and sup.restarts == 3
    assert cluster.restart_env == ["0", "1", "2", "3"]
    assert cluster.others_env == ["0"] * 4, "counted once, so a sum over processes is right"
    for start, (_, dead, _) in zip(cluster.starts, cluster.failures, strict=False):
        assert start[1 - dead].signals == [signal.SIGTERM], "the rest of the cluster is stopped"
        assert start[dead].signals == []
    assert all(c.signals == [signal.SIGTERM] for c in cluster.starts[3].values()), (
        "a stop is forwarded to every process")
    assert restart_waits(cluster) == pytest.approx([0.5, 1.0, 2.0], abs=0.25)


def test_a_cluster_that_ran_longer_than_the_cap_restarts_after_the_initial_delay():
    clock = FakeClock()
    cluster = FakeCluster(clock, [(1.0, 0, 1), (1.0, 0, 1), (1.0, 0, 1), (50.0, 0, 1)])
    sup = supervisor(clock, cluster)
    clock.at(200.0, lambda: sup.request_stop(signal.SIGTERM))
    assert sup.run() == 0
    assert restart_waits(cluster) == pytest.approx([0.5, 1.0, 2.0, 0.5], abs=0.25)


def test_a_configuration_error_stops_the_cluster_and_exits_2_without_a_restart():
    clock = FakeClock()
    cluster = FakeCluster(clock, [(1.0, 0, 2)])
    assert supervisor(clock, cluster).run() == 2
    assert len(cluster.starts) == 1
    assert cluster.starts[0][1].signals == [signal.SIGTERM]


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period():
    clock = FakeClock()
    cluster = FakeCluster(clock, [(1.0, 0, 1)], hangs=True)
    sup = supervisor(clock, cluster, grace_s=5.0)
    clock.at(3.0, lambda: sup.request_stop(signal.SIGINT))
    assert sup.run() == 0
    hung = cluster.starts[0][1]
    assert hung.signals == [signal.SIGTERM, signal.SIGKILL]
    assert 6.0 <= clock.now <= 6.4, "SIGKILL after the 5 s grace"


def test_a_stop_during_the_backoff_starts_nothing_more():
    clock = FakeClock()
    cluster = FakeCluster(clock, [(1.0, 0, 1)])
    sup = Supervisor(Cluster(2, 2), Backoff(30.0, 60.0), 5.0, spawn=cluster.spawn, environ={},
                     clock=lambda: clock.now, sleep=clock.sleep, rand=lambda: 0.0)
    clock.at(5.0, lambda: sup.request_stop(signal.SIGTERM))
    assert sup.run() == 0
    assert len(cluster.starts) == 1 and clock.now < 5.2


def test_one_process_runs_without_cluster_options_and_several_share_one_address_list():
    assert Cluster(1, 1).commands() == [
        (0, [sys.executable, "-m", "bytewax.run", "flows.replicate"])]
    commands = Cluster(3, 3, workers=2).commands()
    assert [k for k, _ in commands] == [0, 1, 2]
    lists = {tuple(c[c.index("-a") + 1:]) for _, c in commands}
    assert len(lists) == 1
    addresses = next(iter(lists))[0].split(";")
    assert len(set(addresses)) == 3 and all(a.startswith("127.0.0.1:") for a in addresses)
    assert all(c[c.index("-i") + 1] == str(k) and c[c.index("-w") + 1] == "2"
               for k, c in commands)


def test_a_cluster_over_hosts_runs_the_processes_given_here():
    args = argparse.Namespace(processes=None, process_id=1, workers=None,
                              addresses="h0:2101, h1:2101,h2:2101")
    cluster = cluster_of(args)
    assert [(k, c[c.index("-a") + 1]) for k, c in cluster.commands()] == [
        (1, "h0:2101;h1:2101;h2:2101")]


@pytest.mark.parametrize(("options", "named"), [
    (dict(processes=0), "--processes"),
    (dict(process_id=1), "--process-id"),
    (dict(addresses="h0,h1:2"), "--addresses"),
    (dict(addresses="h0:1,h1:2", process_id=1, processes=2), "--process-id 1"),
    (dict(workers=0), "--workers"),
])
def test_unusable_options_are_configuration_errors_naming_the_option(options, named):
    args = argparse.Namespace(**(dict(processes=None, process_id=None, workers=None,
                                      addresses=None) | options))
    with pytest.raises(ConfigError, match=named):
        cluster_of(args)


def test_a_bad_setting_is_one_line_and_status_2_before_any_process_starts(monkeypatch, capsys):
    for name in [n for n in os.environ if n.startswith("REPLICATE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("REPLICATE_SHARDS", "0")
    assert cli.main(["run", "--processes", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("replicate: REPLICATE_SHARDS=")


def test_a_process_of_a_cluster_knows_its_index_for_its_metrics_port():
    assert process_index(["run.py", "flows.replicate", "-i", "2", "-a", "h:1;h:2;h:3"], {}) == 2
    assert process_index(["run.py", "flows.replicate", "--process-id=1"], {}) == 1
    assert process_index(["run.py", "flows.replicate"], {"BYTEWAX_PROCESS_ID": "3"}) == 3
    assert process_index(["run.py", "flows.replicate", "-w", "2"], {}) == 0


def test_a_started_process_counts_the_supervisors_restarts():
    before = REGISTRY.get_sample_value("replicate_restarts_total") or 0.0
    metrics.count_restarts({metrics.RESTARTS_ENV: "3"})
    metrics.count_restarts({})
    assert REGISTRY.get_sample_value("replicate_restarts_total") == before + 3
