"""Kill -9 a running replicator while its input still arrives, and record whether the kill
landed mid-work: Postgres had not committed what Kafka held, and commits were still being made.

Observed from outside the replicator only: Kafka's high watermarks and `cdc.offsets`.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import psycopg
from confluent_kafka import Consumer, TopicPartition

from benchmarks.replicator_run import Run

Partition = tuple[str, int]
# Longer than a few commit periods (the runs commit every REPLICATE_BATCH_MS = 200 ms), so a
# replicator at work commits within it even on a loaded machine.
COMMIT_WINDOW_S = 1.0


class Replicator(Protocol):
    """What a kill needs of the replicator under test: a `Run`, or one process of a cluster
    under `replicate run` (tests/integration/test_supervisor.py)."""

    @property
    def flow_id(self) -> str: ...

    def start(self) -> None: ...

    def died(self) -> bool: ...

    def kill9(self) -> None: ...

    def log_tail(self, lines: int = 40) -> str: ...


class BackgroundProducer:
    """Runs `produce` (a rate-capped producing loop) on a thread, so the replicator is killed
    while messages still arrive; `join` re-raises its error."""

    def __init__(self, produce: Callable[[], object]) -> None:
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(produce,), daemon=True)

    def _run(self, produce: Callable[[], object]) -> None:
        try:
            produce()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread by join()
            self._error = exc

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"producing took over {timeout_s} s"
        if self._error is not None:
            raise self._error


@dataclass(frozen=True)
class KillObservation:
    """What Postgres had committed around one kill, against what Kafka held when it died."""

    committed_before: int  # sum of every shard's next offsets, COMMIT_WINDOW_S before the kill
    committed_at_death: int  # the same, read once the process was dead
    behind: tuple[tuple[Partition, int, int], ...]  # (partition, committed, Kafka's end)

    @property
    def mid_work(self) -> bool:
        """The process died with input it had not committed (some partition behind Kafka's end
        read after its death), having committed in the last window before the kill."""
        return bool(self.behind) and self.committed_at_death > self.committed_before


def committed(conn: psycopg.Connection, flow_id: str) -> tuple[int, dict[Partition, int]]:
    """(sum of every shard's next offset, each partition's minimum over the shards)."""
    rows = conn.execute("SELECT topic, partition, sum(next_offset), min(next_offset) "
                        "FROM cdc.offsets WHERE flow_id = %s GROUP BY topic, partition",
                        (flow_id,)).fetchall()
    return sum(int(total) for _, _, total, _ in rows), {(t, p): low for t, p, _, low in rows}


class KafkaEnds:
    """The high watermark of each partition, asked of the broker (not a cached value)."""

    def __init__(self, bootstrap: str, partitions: list[Partition]) -> None:
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "kill-test-ends",
                                   "enable.auto.commit": False})
        self._partitions = partitions

    def read(self) -> dict[Partition, int]:
        return {(t, p): self._consumer.get_watermark_offsets(TopicPartition(t, p), timeout=10,
                                                              cached=False)[1]
                for t, p in self._partitions}

    def close(self) -> None:
        self._consumer.close()


def wait_for_a_commit(run: Replicator, conn: psycopg.Connection, timeout_s: float = 60) -> None:
    """Until the freshly started replicator commits something new (it is at work)."""
    deadline = time.monotonic() + timeout_s
    try:
        start = committed(conn, run.flow_id)[0]
    except psycopg.errors.UndefinedTable:
        start = 0
    while True:
        try:
            if committed(conn, run.flow_id)[0] > start:
                return
        except psycopg.errors.UndefinedTable:
            pass
        if run.died():
            raise AssertionError(f"replicator died by itself:\n{run.log_tail()}")
        assert time.monotonic() < deadline, (
            f"no commit within {timeout_s} s of the start: nothing left to do, so a kill "
            f"cannot land mid-work\n{run.log_tail()}")
        time.sleep(0.1)


def kill_at_work(run: Replicator, conn: psycopg.Connection, ends: KafkaEnds,
                 rng: random.Random) -> KillObservation:
    """Start the replicator, let it work a random while, and kill -9 it."""
    run.start()
    wait_for_a_commit(run, conn)
    time.sleep(rng.uniform(0.2, 2.0))
    before = committed(conn, run.flow_id)[0]
    time.sleep(COMMIT_WINDOW_S)
    if run.died():
        raise AssertionError(f"replicator died by itself:\n{run.log_tail()}")
    run.kill9()
    # Kafka's ends after the kill: a flow that keeps up with its input commits up to the ends it
    # was shown a moment before, yet dies with what arrived since
    kafka = ends.read()
    at_death, low = committed(conn, run.flow_id)
    behind = tuple((tp, low.get(tp, 0), end) for tp, end in sorted(kafka.items())
                   if low.get(tp, 0) < end)
    return KillObservation(before, at_death, behind)


def kill_repeatedly(run: Run, partitions: list[Partition], times: int, lose_state_at: int,
                    seed: int) -> None:
    """Kill -9 the replicator `times` times at work (deleting its state directory after kill
    number `lose_state_at`, which must then be rebuilt from Postgres), and fail unless every
    kill landed mid-work."""
    rng = random.Random(seed)
    ends = KafkaEnds(run.bootstrap, partitions)
    kills: list[KillObservation] = []
    try:
        with psycopg.connect(run.dsn, autocommit=True) as conn:
            for attempt in range(times):
                kills.append(kill_at_work(run, conn, ends, rng))
                if attempt == lose_state_at:
                    shutil.rmtree(run.state_dir, ignore_errors=True)
    finally:
        ends.close()
    idle = [k for k in kills if not k.mid_work]
    assert not idle, f"{len(idle)} of {len(kills)} kills landed while nothing was in flight: {idle}"
