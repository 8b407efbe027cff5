"""Resident memory and CPU time of a process tree, sampled from /proc (Linux only), with the
CPU time of the machine's Postgres server processes and of the whole machine alongside."""

from __future__ import annotations

import bisect
import os
import threading
import time
from pathlib import Path


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def children(pid: int) -> list[int]:
    """Every descendant pid of `pid`."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
            out += kids
            todo += kids
    return out


def tree_rss_kb(pid: int) -> int:
    """VmRSS of `pid` plus all its descendants."""
    return sum(_status_kb(p, "VmRSS") for p in [pid, *children(pid)])


def hwm_kb(pid: int) -> int:
    """VmHWM (the kernel's peak RSS) of one process."""
    return _status_kb(pid, "VmHWM")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (all its threads) so far; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> float:
    """User + system CPU time so far of every running Postgres server process (`postgres`)."""
    total = 0.0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if Path(entry.path, "comm").read_text().startswith("postgres"):
                    total += cpu_seconds(int(entry.name))
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
    return total


def machine_cpu_seconds() -> float:
    """CPU time the machine spent busy so far, all cores together (not idle, not I/O wait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


CPU_OF = ("process", "postgres", "machine")  # what `RssSampler.cpu_between` can read


class RssSampler:
    """Samples the tree RSS of `pid` every `interval_s` in a thread; `peak_mb` is the maximum of
    the samples and of the root's VmHWM read at `stop()`."""

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak_kb = 0
        self.samples: list[int] = []
        # (wall time, CPU seconds of the root, of Postgres, of the machine)
        self.cpu: list[tuple[float, float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        kb = tree_rss_kb(self.pid)
        if kb:
            self.samples.append(kb)
            self.peak_kb = max(self.peak_kb, kb, hwm_kb(self.pid))
            self.cpu.append((time.time(), cpu_seconds(self.pid), postgres_cpu_seconds(),
                             machine_cpu_seconds()))

    def cpu_between(self, start: float, end: float, of: str = "process") -> float | None:
        """CPU seconds between two wall times of the root process, of Postgres or of the
        machine (`of`, one of `CPU_OF`), read off the samples (within one sampling interval at
        each end); None without samples around the span."""
        column = CPU_OF.index(of) + 1
        times = [sample[0] for sample in self.cpu]
        first, last = bisect.bisect_left(times, start), bisect.bisect_right(times, end) - 1
        if first >= len(times) or last < 0 or first >= last:
            return None
        return self.cpu[last][column] - self.cpu[first][column]

    def stop(self) -> float:
        """Stop sampling (call while the process is still alive); returns the peak in MB."""
        self.sample()
        self._stop.set()
        self._thread.join(timeout=5)
        return self.peak_mb

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024
