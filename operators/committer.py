"""A worker's committer: the pending batches of all its shards in one Postgres transaction.

Bytewax calls a worker's sink parts one after another on one thread, so the shards a worker owns
can share one connection and one transaction. Committing them together turns up to S small
transactions (each a commit flush and a dozen round trips) into one, and S small merges per table
into one. Each shard still has its own commit sequence, offsets and undo record, so recovery and
reassignment stay per shard.

A commit is due when the worker holds `REPLICATE_BATCH_SIZE` units, when its oldest unit is
`REPLICATE_BATCH_MS` old, or at epoch close. Progress markers alone (offsets that moved past
messages with nothing to apply) wait `MARKER_ONLY_FLUSH_S`, so a topic of heartbeats costs one
small transaction per few seconds; but within `MARKER_ONLY_FLUSH_S` of a commit that carried
units they are the end of a burst or backlog (each partition's last position arrives with its
next marker), and commit after `REPLICATE_BATCH_MS` like units: a restart then replays nothing
of it, and lag reads zero promptly.

A commit is also due at once when the source has caught up with every partition (the last
markers of all say `caught_up`) and the worker holds units, or markers within
`MARKER_ONLY_FLUSH_S` of a commit that carried units: there is nothing to batch them with, and
waiting out `REPLICATE_BATCH_MS` would only add latency (the end of a backlog or burst, a trickle
of events). It waits for the transaction still running, if any: the worker has nothing else to do.
The decode step sends every marker to every shard, after the shard's other items of its step, so
this is judged once every shard of the worker has had its markers: then each holds what its
partitions sent it, and one commit takes it all (judged at the first shard, the others' final
offsets would wait for another commit).

Otherwise, a due commit waits while the previous transaction is still running, so the worker
decodes on instead of blocking, up to `BACKLOG_BATCHES` batches: when Postgres is the slower
side, batches grow and each transaction carries more rows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager

import psycopg
from opentelemetry.trace import Span

from operators import metrics, tracing
from operators.cell_writer import CellVersionConflict
from operators.events import ProgressMarker, TruncateEvent
from operators.log_format import log_context
from operators.native_shard import expand
from operators.pg_session import PgSession, flow_key, release_thread_session, thread_session
from operators.pg_writer import ShardBatch
from operators.retry import is_transient, retrying
from operators.settings import Settings
from operators.shard import Decided, Position, Shard, Unit
from operators.shard_dlq import refused_to_dlq
from operators.source_watch import WATCH

log = logging.getLogger(__name__)

MARKER_ONLY_FLUSH_S = 5.0
BACKLOG_BATCHES = 4  # pending units, in batches, past which a due commit waits for Postgres
REFUSED = (psycopg.DataError, psycopg.IntegrityError)  # a value Postgres will never take
Work = tuple[Shard, list[Unit], dict[Position, int]]
_local = threading.local()


class Committer:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.session: PgSession = thread_session(settings)
        self._shards: list[Shard] = []
        self._units = 0
        self._since: float | None = None  # oldest pending unit or marker
        self._units_committed_at = float("-inf")  # when a commit last carried units
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-commit")
        self._in_flight: tuple[list[Work], list[ShardBatch], Future[None], float] | None = None
        self._caught_up: dict[Position, bool] = {}  # by each partition's last marker
        self._marked: set[int] = set()  # shards that had markers since all last had them
        self._healing = False  # redoing work after a CellVersionConflict

    def register(self, shard: Shard) -> None:
        self.settle()  # the connection is free only between transactions
        with log_context(shard=shard.number):
            retrying(f"shard {shard.number}: open",
                     lambda: shard.bring_in_step(self.session.conn),
                     on_retry=self.session.reset, cap_s=self._settings.retry_max_s)
        self._shards.append(shard)

    def unregister(self, shard: Shard) -> None:
        self.settle()
        self._shards.remove(shard)
        if not self._shards:
            self._close()

    def _close(self) -> None:
        """The last shard left: its writer thread and Postgres session go with it (the flow's
        next shard on this thread makes a new committer), rather than staying for the thread's
        lifetime, one per flow ever opened on it."""
        self._writer.shutdown()
        committers = _local.__dict__.get("committers", {})
        if committers.get(flow_key(self._settings)) is self:
            del committers[flow_key(self._settings)]
        release_thread_session(self.session)

    def accepted(self, units: int) -> None:
        """A shard buffered `units` more units (or only markers, when 0)."""
        self._units += units
        if self._since is None:
            self._since = time.monotonic()

    def track_sources(self, shard: Shard, items: list) -> None:
        """Note the caught-up state of the markers that close `shard`'s `items` (the decode step
        sends every marker to every shard, after the shard's other items)."""
        start = len(items)
        while start and type(items[start - 1]) is ProgressMarker:
            start -= 1
        if start == len(items):
            return
        self._marked.add(shard.number)
        for marker in items[start:]:
            self._caught_up[(marker.topic, marker.partition)] = marker.caught_up

    def commit_if_due(self) -> None:
        marked = len(self._marked) >= len(self._shards)  # every shard has had its markers
        if marked:
            self._marked.clear()
        if self._since is None:
            return
        now = time.monotonic()
        data_recent = self._units > 0 or now - self._units_committed_at < MARKER_ONLY_FLUSH_S
        caught_up = self._caught_up
        if marked and data_recent and caught_up and all(caught_up.values()):  # nothing to read
            self.commit_all()
            return
        batch_size = self._settings.batch_size
        wait_s = self._settings.batch_ms / 1000 if data_recent else MARKER_ONLY_FLUSH_S
        due = self._units >= batch_size or now - self._since >= wait_s
        busy = self._in_flight is not None and not self._in_flight[2].done()
        if due and not (busy and self._units < BACKLOG_BATCHES * batch_size):
            self.commit_all()

    def commit_all(self, wait: bool = False) -> None:
        """Commit everything every shard of this worker holds.

        The Postgres transaction runs on a background thread while the worker goes on decoding
        (psycopg releases the GIL while it waits); the next commit first settles it. With
        `wait`, it is settled before returning. While the previous transaction runs, the
        shards decide what they can of the next commit (`Shard.decide_ahead`): only its RocksDB
        write is left for after the settle.
        """
        work = [(shard, *shard.take()) for shard in self._shards
                if shard.pending.since is not None]
        if self._units:
            self._units_committed_at = time.monotonic()
        self._units, self._since = 0, None
        plain = [w for w in work if w[1] or w[2]]
        truncating = any(type(u) is TruncateEvent for w in plain for u in w[1])
        ahead = None
        if self._in_flight is not None and plain and not truncating:
            tables = self.session.tables
            with _lww_span(plain, ahead=True):
                ahead = [shard.decide_ahead(units, markers, tables)
                         for shard, units, markers in plain]
        if not self.settle():
            ahead = None  # the running commit was redone: decide again
        if truncating:
            for shard, units, markers in plain:
                self._commit_around_truncates(shard, units, markers)
        elif plain:
            self._start(plain, ahead)
        if wait:
            self.settle()

    def _start(self, work: list[Work], ahead: list[Decided | None] | None) -> None:
        """Prepare `work` (LWW, RocksDB) here and write it to Postgres in the background;
        `ahead`: what the shards decided while the previous transaction ran (first try only)."""
        if ahead is not None and None not in ahead:
            self._start_decided(work, ahead)
            return
        decided = ahead

        def prepare() -> list[ShardBatch]:
            nonlocal decided
            try:
                return self._prepare(work, decided)
            finally:
                decided = None  # a retry decides again, once in step

        try:
            batches = retrying("prepare commit", prepare, on_retry=self._after_failure,
                               cap_s=self._settings.retry_max_s)
        except REFUSED:
            self._commit(work)  # the synchronous path isolates what Postgres refuses
            return
        future = self._writer.submit(self._write, batches)
        self._in_flight = (work, batches, future, time.perf_counter())

    def _start_decided(self, work: list[Work], decided: list[Decided]) -> None:
        """Start the transaction of `work`, which every shard decided ahead, at once, and write
        the decisions to RocksDB while its statements run: the transaction waits for them only
        before its COMMIT (a batch is in RocksDB before Postgres commits it, invariant 5), so
        Postgres does not sit idle while the worker writes RocksDB."""
        stored: Future[None] = Future()
        batches = [one.batch for one in decided]
        future = self._writer.submit(self._write, batches, stored.result)
        self._in_flight = (work, batches, future, time.perf_counter())
        try:
            for (shard, _, _), one in zip(work, decided, strict=True):
                shard.write_decided(one)
        except BaseException as exc:
            stored.set_exception(exc)  # the transaction rolls back
            self._in_flight = None
            future.exception()
            raise
        stored.set_result(None)

    def settle(self) -> bool:
        """Wait for the background transaction; confirm it, or redo its work synchronously.
        False when it was redone."""
        if self._in_flight is None:
            return True
        work, batches, future, started = self._in_flight
        self._in_flight = None
        try:
            future.result()
        except Exception as exc:
            if isinstance(exc, CellVersionConflict):
                self._heal(work, exc)
                return False
            if not (is_transient(exc) or isinstance(exc, REFUSED)):
                raise
            if is_transient(exc):  # redone below: a retry `retrying` does not see
                metrics.RETRIES.labels(metrics.POSTGRES).inc()
            self._after_failure()
            self._commit(work)
            return False
        self._confirm(work, batches, started)
        return True

    def _commit_around_truncates(self, shard: Shard, units: list[Unit],
                                 markers: dict[Position, int]) -> None:
        """A truncate commits alone, between what came before and after it."""
        segment: list[Unit] = []
        for unit in units:
            if type(unit) is TruncateEvent:
                self._commit([(shard, segment, {})])
                self._commit([(shard, [unit], {})])
                segment = []
            else:
                segment.append(unit)
        self._commit([(shard, segment, markers)])

    def _commit(self, work: list[Work]) -> None:
        """Commit `work`; a unit Postgres refuses (a bad value) is isolated by bisection and goes
        to the DLQ alone, so the rest still lands.

        A shard's units are split in offset order (they arrive in another: the decode step puts
        DLQ records ahead of runs, and a batch's runs of several partitions follow one
        another), so the first
        half's committed offsets never pass an event of the second half, which `prepare` would
        then drop as already committed. The markers go with the second half."""
        work = [w for w in work if w[1] or w[2]]
        if not work:
            return
        try:
            retrying("commit", lambda: self._commit_once(work), on_retry=self._after_failure,
                     cap_s=self._settings.retry_max_s)
        except CellVersionConflict as exc:
            self._heal(work, exc)
        except REFUSED as exc:
            self._after_failure()
            if len(work) > 1:
                for one in work:
                    self._commit([one])
                return
            shard, units, markers = work[0]
            units = sorted(expand(units), key=_kafka_position)  # a run's events one by one too
            if len(units) > 1:
                half = len(units) // 2
                self._commit([(shard, units[:half], {})])
                self._commit([(shard, units[half:], markers)])
                return
            refused = refused_to_dlq(units[0], exc) if units else None
            if refused is None:
                raise
            self._commit([(shard, [refused], markers)])

    def _commit_once(self, work: list[Work]) -> None:
        started = time.perf_counter()
        batches = self._prepare(work)
        self._write(batches)
        self._confirm(work, batches, started)

    def _write(self, batches: list[ShardBatch],
               before_commit: Callable[[], object] | None = None) -> None:
        """The Postgres transaction of `batches` (`PgWriter.write`), traced."""
        with tracing.span("commit", lambda: tracing.batch_attributes(batches)):
            self.session.writer.write(batches, before_commit)

    def _prepare(self, work: list[Work], decided: list[Decided | None] | None = None,
                 ) -> list[ShardBatch]:
        """LWW and RocksDB for `work`; a shard's decision in `decided` is only written."""
        conn, tables = self.session.conn, self.session.tables
        decided = decided or [None] * len(work)
        with _lww_span(work, ahead=False) as span:
            batches = [shard.prepare(units, markers, conn, tables) if one is None
                       else shard.write_decided(one)
                       for (shard, units, markers), one in zip(work, decided, strict=True)]
            if span.is_recording():
                span.set_attributes(tracing.batch_attributes(batches))
        return batches

    @staticmethod
    def _confirm(work: list[Work], batches: list[ShardBatch], started: float) -> None:
        for (shard, _, _), batch in zip(work, batches, strict=True):
            shard.confirm(batch)
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
        metrics.count_commit(batches)
        WATCH.committed(batches)

    def _heal(self, work: list[Work], conflict: CellVersionConflict) -> None:
        """A shard's cell versions were not Postgres' (`operators/cell_writer.py`): nothing of
        the commit landed. Its shards drop their state, rebuild it from Postgres and decide the
        work again; a second conflict right after (two owners of a shard) stops the flow."""
        if self._healing:
            raise conflict
        log.warning("%s; rebuilding the state of shards %s from Postgres", conflict,
                    sorted(shard.number for shard, _, _ in work))
        self._after_failure()
        for shard, _, _ in work:
            shard.forget_state()
        self._healing = True
        try:
            self._commit(work)
        finally:
            self._healing = False

    def _after_failure(self) -> None:
        """Every shard re-checks its state against Postgres before its next commit."""
        for shard in self._shards:
            shard.distrust()
        self.session.reset()


def _lww_span(work: list[Work], ahead: bool) -> AbstractContextManager[Span]:
    """The span of deciding `work` (LWW, and RocksDB unless `ahead`: decided while the previous
    transaction runs, written after it)."""
    return tracing.span("lww", lambda: {"cdc.shards": [shard.number for shard, _, _ in work],
                                        "cdc.ahead": ahead})


def _kafka_position(unit: Unit) -> tuple[str, int, int]:
    """Where a unit (a single event: no run) stands in its partition, for sorting."""
    return unit.topic, unit.partition, unit.offset


def thread_committer(settings: Settings) -> Committer:
    """The calling worker thread's committer for this flow."""
    committers: dict[tuple[str, str, str], Committer] = _local.__dict__.setdefault(
        "committers", {})
    key = flow_key(settings)
    committer = committers.get(key)
    if committer is None:
        committer = committers[key] = Committer(settings)
    return committer
