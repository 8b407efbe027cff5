"""Backpressure: keep each source partition within a window of what the flow has committed.

Bytewax has no backpressure of its own, so a source that reads faster than Postgres commits would
pile every message of a backlog up in memory. A partition may read at most its share of
`REPLICATE_MAX_IN_FLIGHT` messages past its committed position (the minimum over the flow's
shards of `cdc.offsets`); past that it pauses, re-reading the committed position from Postgres
at most every `CHECK_INTERVAL_S`. Reading the position from Postgres, not from process memory,
keeps this right when the shards live in other processes of a cluster. The budget is for the
whole flow, shared equally by its partitions, so memory does not grow with the partition count.
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg

from operators.pg_session import connect
from operators.settings import Settings

log = logging.getLogger(__name__)
CHECK_INTERVAL_S = 0.05
MIN_WINDOW = 500  # messages: below this a partition would stall between commits
_local = threading.local()


def _probe_connection(dsn: str) -> psycopg.Connection:
    """The calling thread's own connection for position checks (the committer's connection may
    be busy with a transaction on its background thread)."""
    conn = _local.__dict__.get(dsn)
    if conn is None or conn.closed:
        conn = _local.__dict__[dsn] = connect(dsn)
    return conn


class CommitWindow:
    """One partition's share of the flow's in-flight budget."""

    def __init__(self, settings: Settings, topic: str, partition: int, committed: int,
                 partitions: int) -> None:
        self._settings = settings
        self._topic, self._partition = topic, partition
        self._committed = committed
        self._limit = max(MIN_WINDOW, settings.max_in_flight // max(1, partitions))
        self._next_check = 0.0

    def allows(self, next_offset: int) -> bool:
        """May the partition read on from `next_offset`?"""
        limit = self._limit
        if next_offset - self._committed < limit:
            return True
        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + CHECK_INTERVAL_S
        try:
            row = _probe_connection(self._settings.pg_dsn).execute(
                "SELECT min(next_offset) FROM cdc.offsets "
                "WHERE flow_id = %s AND topic = %s AND partition = %s",
                (self._settings.flow_id, self._topic, self._partition),
            ).fetchone()
        except psycopg.Error as exc:  # Postgres is away: stay paused, reconnect next time
            log.debug("commit window check failed: %s", exc)
            _local.__dict__.pop(self._settings.pg_dsn, None)
            return False
        if row and row[0] is not None:
            self._committed = row[0]
        return next_offset - self._committed < limit
