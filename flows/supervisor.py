"""`replicate run`: the processes of one bytewax cluster, supervised as one.

A bytewax cluster shares fate: when one process dies the others cannot go on. So the supervisor
starts every process of the cluster (`python -m bytewax.run flows.replicate -i K -a ...`), and
when any of them exits without being asked to, it stops the rest (SIGTERM, then SIGKILL after a
grace period) and starts the whole cluster again after a capped, jittered exponential backoff.
Exactly once makes a whole-cluster restart safe: every shard resumes from Postgres. SIGTERM or
SIGINT is forwarded to the processes, and the supervisor exits 0 once they are gone. A process
exiting with status 2 (a setting that cannot be used) is not restarted: the supervisor exits 2.

Each restart starts new processes, the first of them with `REPLICATE_RESTARTS` in its
environment, the number of restarts so far, which it counts in `replicate_restarts_total`
(operators/metrics.py); process K serves its metrics on `REPLICATE_METRICS_PORT` + K
(operators/health.py).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from types import FrameType
from typing import Protocol

from operators.log_format import configure_logging
from operators.metrics import RESTARTS_ENV
from operators.settings import ConfigError, load_settings

log = logging.getLogger("replicate.supervisor")
CONFIG_ERROR = 2  # the replicator's exit status for a setting that cannot be used
POLL_S = 0.1
_PR_SET_PDEATHSIG = 1  # prctl option from linux/prctl.h


class Child(Protocol):
    """What the supervisor needs of a started process (`subprocess.Popen` has it)."""

    pid: int

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...


Spawn = Callable[[list[str], Mapping[str, str]], Child]


@dataclass(frozen=True)
class Backoff:
    """Delay before a restart: doubles per consecutive failure from `initial_s` up to `cap_s`,
    then a random half of it is taken off (jitter), so clusters that failed together do not
    restart in step."""

    initial_s: float
    cap_s: float

    def delay(self, failures: int, rand: float) -> float:
        """Seconds to wait after the `failures`-th failure in a row (1 = first); `rand` in
        [0, 1)."""
        base = min(self.cap_s, self.initial_s * 2.0 ** min(failures - 1, 60))
        return base * (0.5 + rand / 2)


class Decision(Enum):
    STOP = "stop"  # a stop was asked for: exit 0
    RESTART = "restart"
    GIVE_UP = "give up"  # a configuration error: restarting cannot help, exit 2


@dataclass(frozen=True)
class Exited:
    """A process of the cluster that exited: its index and `Popen.returncode`."""

    index: int
    status: int

    def describe(self) -> str:
        if self.status < 0:
            return f"process {self.index} was killed by {signal.Signals(-self.status).name}"
        return f"process {self.index} exited with status {self.status}"


def decide(exited: Exited, stop_requested: bool) -> Decision:
    """What to do once a process has exited."""
    if stop_requested:
        return Decision.STOP
    if exited.status == CONFIG_ERROR:
        return Decision.GIVE_UP
    return Decision.RESTART


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports on `host` that are free now, picked by the kernel."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True)
class Cluster:
    """The processes this supervisor runs: indexes `first`..`first + count - 1` of a cluster of
    `size`, at `addresses` (None: loopback ports picked at each start)."""

    count: int
    size: int
    first: int = 0
    addresses: tuple[str, ...] | None = None
    workers: int | None = None

    def commands(self) -> list[tuple[int, list[str]]]:
        """(index, command line) of each process, with fresh loopback ports when needed."""
        base = [sys.executable, "-m", "bytewax.run", "flows.replicate"]
        if self.workers is not None:
            base += ["-w", str(self.workers)]
        if self.size == 1:
            return [(0, base)]
        addresses = self.addresses or tuple(f"127.0.0.1:{p}" for p in free_ports(self.size))
        indexes = range(self.first, self.first + self.count)
        return [(k, base + ["-i", str(k), "-a", ";".join(addresses)]) for k in indexes]


def _die_with_parent() -> None:
    """In the child: SIGTERM when the supervisor dies, even by SIGKILL, so no process of an old
    cluster keeps running beside the next one (Linux; elsewhere nothing)."""
    try:
        ctypes.CDLL("libc.so.6").prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def spawn(command: list[str], env: Mapping[str, str]) -> Child:
    return subprocess.Popen(command, env=dict(env), preexec_fn=_die_with_parent)


class Supervisor:
    """Runs the cluster until a stop or a configuration error; `run` returns the exit status.
    The clock, sleep, randomness and process start are injectable for tests."""

    def __init__(self, cluster: Cluster, backoff: Backoff, grace_s: float, *,
                 spawn: Spawn = spawn, environ: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 rand: Callable[[], float] = random.random) -> None:
        self._cluster = cluster
        self._backoff = backoff
        self._grace_s = grace_s
        self._spawn = spawn
        self._environ = dict(os.environ if environ is None else environ)
        self._clock, self._sleep, self._rand = clock, sleep, rand
        self.stop_signal: int | None = None
        self.restarts = 0

    def request_stop(self, signum: int, _frame: FrameType | None = None) -> None:
        """Signal handler: the loop forwards the stop to the processes."""
        self.stop_signal = signum

    def run(self) -> int:
        failures = 0
        while True:
            started = self._clock()
            children = self._start()
            exited = self._first_exit(children)
            self._stop_all(children)
            stopping = self.stop_signal is not None
            decision = Decision.STOP if exited is None else decide(exited, stopping)
            if decision is Decision.STOP:
                log.info("stopped (%s)", signal.Signals(self.stop_signal).name)
                return 0
            if decision is Decision.GIVE_UP:
                log.error("%s (a setting that cannot be used, named above): not restarting",
                          exited.describe())
                return CONFIG_ERROR
            failures = 1 if self._clock() - started >= self._backoff.cap_s else failures + 1
            delay = self._backoff.delay(failures, self._rand())
            log.warning("%s: restarting the cluster (%d processes here) in %.1f s (restart %d)",
                        exited.describe(), len(children), delay, self.restarts + 1)
            if not self._wait(delay):
                log.info("stopped (%s)", signal.Signals(self.stop_signal).name)
                return 0
            self.restarts += 1

    def _start(self) -> dict[int, Child]:
        """Start every process; the first carries the restart count, the others 0, so the sum
        over processes (and over the supervisors of a cluster spread over hosts) is right."""
        children = {index: self._spawn(command, self._environ | {
            RESTARTS_ENV: str(self.restarts if index == self._cluster.first else 0)})
            for index, command in self._cluster.commands()}
        log.info("started %s", ", ".join(f"process {k} (pid {c.pid})"
                                         for k, c in children.items()))
        return children

    def _first_exit(self, children: dict[int, Child]) -> Exited | None:
        """The first process to exit, or None when a stop was asked for first."""
        while self.stop_signal is None:
            for index, child in children.items():
                status = child.poll()
                if status is not None:
                    return Exited(index, status)
            self._sleep(POLL_S)
        return None

    def _stop_all(self, children: dict[int, Child]) -> None:
        """SIGTERM to every process still running; SIGKILL to those alive after the grace."""
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = self._clock() + self._grace_s
        while any(c.poll() is None for c in children.values()):
            if self._clock() >= deadline:
                for index, child in children.items():
                    if child.poll() is None:
                        log.warning("process %d (pid %d) still running %.0f s after SIGTERM: "
                                    "SIGKILL", index, child.pid, self._grace_s)
                        child.send_signal(signal.SIGKILL)
                deadline = float("inf")
            self._sleep(POLL_S)

    def _wait(self, seconds: float) -> bool:
        """Sleep `seconds` unless a stop comes first; False when it did."""
        until = self._clock() + seconds
        while self.stop_signal is None:
            left = until - self._clock()
            if left <= 0:
                return True
            self._sleep(min(POLL_S, left))
        return False


def cluster_of(args: argparse.Namespace) -> Cluster:
    """The processes `replicate run`'s options ask for, or ConfigError naming the option."""
    if args.processes is not None and args.processes < 1:
        raise ConfigError("--processes: at least 1")
    if args.workers is not None and args.workers < 1:
        raise ConfigError("--workers: at least 1")
    count = args.processes or 1
    if args.addresses is None:
        if args.process_id is not None:
            raise ConfigError("--process-id: only with --addresses (the cluster's other hosts)")
        return Cluster(count, count, workers=args.workers)
    addresses = tuple(a.strip() for a in args.addresses.split(",") if a.strip())
    if not all(a.rpartition(":")[2].isdigit() for a in addresses):
        raise ConfigError(f"--addresses: host:port,... expected, got {args.addresses!r}")
    first = args.process_id or 0
    if first + count > len(addresses):
        raise ConfigError(f"--process-id {first} with --processes {count}: the cluster has "
                          f"{len(addresses)} addresses")
    return Cluster(count, len(addresses), first, addresses, args.workers)


def run_command(args: argparse.Namespace) -> int:
    """`replicate run`: check the settings once, then supervise."""
    cluster = cluster_of(args)
    if not 0 < args.backoff_initial <= args.backoff_max or args.grace < 0:
        raise ConfigError("--backoff-initial must be > 0 and <= --backoff-max; --grace >= 0")
    settings = load_settings()  # a bad setting: one line and status 2 here, not per process
    configure_logging(settings)  # REPLICATE_LOG_FORMAT, like the processes' lines
    if settings.metrics_port is not None:
        log.info("metrics of process K on port %d + K", settings.metrics_port)
    supervisor = Supervisor(cluster, Backoff(args.backoff_initial, args.backoff_max), args.grace)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    return supervisor.run()


def add_command(subparsers: argparse._SubParsersAction) -> None:
    """Register `run`."""
    parser = subparsers.add_parser(
        "run", help="run the flow: N processes of one cluster, restarted together",
        description="Start the processes of one bytewax cluster and restart them all when one "
        "exits. SIGTERM/SIGINT stops them.")
    parser.add_argument("--processes", type=int, metavar="N",
                        help="processes to run here (default 1)")
    parser.add_argument("--addresses", metavar="HOST:PORT,...",
                        help="every process of a cluster spread over hosts (default: loopback "
                        "ports picked at each start)")
    parser.add_argument("--process-id", type=int, metavar="I",
                        help="with --addresses: the index of the first process run here")
    parser.add_argument("--workers", type=int, metavar="W",
                        help="bytewax workers per process (default 1)")
    parser.add_argument("--backoff-initial", type=float, default=1.0, metavar="S",
                        help="delay before the first restart (default 1 s)")
    parser.add_argument("--backoff-max", type=float, default=60.0, metavar="S",
                        help="cap of the restart delay; a cluster that ran this long before "
                        "failing restarts after the initial delay again (default 60 s)")
    parser.add_argument("--grace", type=float, default=10.0, metavar="S",
                        help="time the processes get to exit after SIGTERM before SIGKILL "
                        "(default 10 s)")
    parser.set_defaults(handler=run_command)

