"""One Postgres connection per worker thread, shared by the shards that worker owns.

A bytewax worker calls its sink partitions one after another on one thread, so its shards never
need two connections at once. After a failure the session is reset: a new connection, and every
per-connection cache (temp stage tables, table metadata) starts over.
"""

from __future__ import annotations

import threading

import psycopg

from operators.flow_lock import hold_running
from operators.pg_writer import PgShardWriter
from operators.retry import retrying
from operators.settings import Settings
from operators.target_tables import TargetTables
from schemas.control import ensure_control_schema

_local = threading.local()


def connect(dsn: str) -> psycopg.Connection:
    """A connection of the replicator. Its session reads timestamptz values in UTC, as the
    decoder makes them: in another time zone a key read back from a table (a state rebuild)
    would be other state key bytes, and hash to another shard."""
    conn = psycopg.connect(dsn, autocommit=True, application_name="cdc-replicator")
    conn.execute("SET TIME ZONE 'UTC'")
    return conn


class PgSession:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.conn: psycopg.Connection = self._open()

    def _open(self) -> psycopg.Connection:
        return retrying("connect to Postgres", self._open_once, cap_s=self.settings.retry_max_s)

    def _open_once(self) -> psycopg.Connection:
        conn = connect(self.settings.pg_dsn)
        hold_running(conn, self.settings.flow_id)
        ensure_control_schema(conn)
        self.tables = TargetTables(conn, self.settings.flow_id, self.settings.delete_mode)
        self.writer = PgShardWriter(conn, self.settings.flow_id, self.settings.delete_mode)
        return conn

    def close(self) -> None:
        try:
            self.conn.close()
        except psycopg.Error:
            pass

    def reset(self) -> None:
        """Drop the connection and its caches; reconnect (retrying) on next use."""
        self.close()
        self.conn = self._open()


def flow_key(settings: Settings) -> tuple[str, str, str]:
    """What makes two settings the same flow for per-thread sharing."""
    return (settings.pg_dsn, settings.flow_id, settings.delete_mode.value)


def thread_session(settings: Settings) -> PgSession:
    """The calling thread's session for this flow."""
    sessions: dict[tuple[str, str, str], PgSession] = _local.__dict__.setdefault("sessions", {})
    key = flow_key(settings)
    session = sessions.get(key)
    if session is None:
        session = sessions[key] = PgSession(settings)
    return session


def release_thread_session(session: PgSession) -> None:
    """Close `session` (and its flow's advisory lock), and forget it if it is the calling
    thread's."""
    sessions: dict[tuple[str, str, str], PgSession] = _local.__dict__.get("sessions", {})
    key = flow_key(session.settings)
    if sessions.get(key) is session:
        del sessions[key]
    session.close()
