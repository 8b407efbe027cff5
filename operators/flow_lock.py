"""Whether a flow is running, told by a Postgres advisory lock rather than by guesswork.

Every connection a running flow writes through (`operators/pg_session.py`) holds the flow's lock
in shared mode for as long as it is open, on whatever host it runs. The admin commands that
change a stopped flow's offsets, DLQ rows or state take the same lock in exclusive mode: they
fail at once while any process of the flow holds it, and a flow starting meanwhile waits at its
first connection until the command is done.
"""

from __future__ import annotations

import psycopg

_LOCK_SPACE = "cdc-replicator:flow"


def hold_running(conn: psycopg.Connection, flow_id: str) -> None:
    """Mark `flow_id` as running while `conn` stays open (waits for an admin command)."""
    conn.execute("SELECT pg_advisory_lock_shared(hashtext(%s), hashtext(%s))",
                 (_LOCK_SPACE, flow_id))


def try_hold_stopped(conn: psycopg.Connection, flow_id: str) -> bool:
    """Keep `flow_id` from starting while `conn` stays open; False if it is running now."""
    row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s), hashtext(%s))",
                       (_LOCK_SPACE, flow_id)).fetchone()
    return bool(row and row[0])
