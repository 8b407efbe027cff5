"""A worker's committer: the pending batches of all its shards in one Postgres transaction.

Bytewax calls a worker's sink parts one after another on one thread, so the shards a worker owns
can share one connection and one transaction. Committing them together turns up to S small
transactions (each a commit flush and a dozen round trips) into one, and S small merges per table
into one. Each shard still has its own commit sequence, offsets and undo record, so recovery and
reassignment stay per shard.

A commit is due when the worker holds `REPLICATE_BATCH_SIZE` units, when its oldest unit is
`REPLICATE_BATCH_MS` old, when only progress markers have waited `MARKER_ONLY_FLUSH_S`, or at
epoch close.
"""

from __future__ import annotations

import threading
import time

import psycopg

from operators import metrics
from operators.events import TruncateEvent
from operators.pg_session import PgSession, flow_key, thread_session
from operators.retry import retrying
from operators.settings import Settings
from operators.shard import Position, Shard, Unit, refused_to_dlq

MARKER_ONLY_FLUSH_S = 5.0
Work = tuple[Shard, list[Unit], dict[Position, int]]
_local = threading.local()


class Committer:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.session: PgSession = thread_session(settings)
        self._shards: list[Shard] = []
        self._units = 0
        self._since: float | None = None  # oldest pending unit or marker

    def register(self, shard: Shard) -> None:
        retrying(f"shard {shard.number}: open", lambda: shard.bring_in_step(self.session.conn),
                 on_retry=self.session.reset, cap_s=self._settings.retry_max_s)
        self._shards.append(shard)

    def unregister(self, shard: Shard) -> None:
        self._shards.remove(shard)

    def accepted(self, units: int) -> None:
        """A shard buffered `units` more units (or only markers, when 0)."""
        self._units += units
        if self._since is None:
            self._since = time.monotonic()

    def commit_if_due(self) -> None:
        if self._since is None:
            return
        age = time.monotonic() - self._since
        if (self._units >= self._settings.batch_size
                or (self._units and age >= self._settings.batch_ms / 1000)
                or age >= MARKER_ONLY_FLUSH_S):
            self.commit_all()

    def commit_all(self) -> None:
        """Commit everything every shard of this worker holds."""
        work = [(shard, *shard.pending.take()) for shard in self._shards
                if shard.pending.since is not None]
        self._units, self._since = 0, None
        plain = [w for w in work if not any(type(u) is TruncateEvent for u in w[1])]
        for shard, units, markers in work:
            if any(type(u) is TruncateEvent for u in units):
                self._commit_around_truncates(shard, units, markers)
        if plain:
            self._commit(plain)

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
        to the DLQ alone, so the rest still lands."""
        work = [w for w in work if w[1] or w[2]]
        if not work:
            return
        try:
            retrying("commit", lambda: self._commit_once(work), on_retry=self._after_failure,
                     cap_s=self._settings.retry_max_s)
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            self._after_failure()
            if len(work) > 1:
                for one in work:
                    self._commit([one])
                return
            shard, units, markers = work[0]
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
        conn, tables = self.session.conn, self.session.tables
        batches = [shard.prepare(units, markers, conn, tables) for shard, units, markers in work]
        self.session.writer.write(batches)
        for (shard, _, _), batch in zip(work, batches, strict=True):
            shard.confirm(batch)
        metrics.COMMITS.inc()
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
        for batch in batches:
            metrics.EVENTS.labels("applied").inc(batch.applied)
            metrics.EVENTS.labels("duplicate").inc(batch.duplicates)
            metrics.EVENTS.labels("stale").inc(len(batch.stale))
            metrics.EVENTS.labels("dlq").inc(len(batch.dlq))

    def _after_failure(self) -> None:
        """Every shard re-checks its state against Postgres before its next commit."""
        metrics.RETRIES.labels("commit").inc()
        for shard in self._shards:
            shard.in_step = False
        self.session.reset()


def thread_committer(settings: Settings) -> Committer:
    """The calling worker thread's committer for this flow."""
    committers: dict[tuple[str, str, str], Committer] = _local.__dict__.setdefault(
        "committers", {})
    key = flow_key(settings)
    committer = committers.get(key)
    if committer is None:
        committer = committers[key] = Committer(settings)
    return committer
