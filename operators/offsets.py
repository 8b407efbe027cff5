"""Where each flow, shard and source partition stands, as committed in Postgres.

`cdc.offsets` holds, per (flow, shard, topic, partition), the next offset that shard still has to
process. The source starts a partition at the minimum over the flow's shards; each shard skips
what it already committed. When a partition is first seen, its start (earliest or latest, resolved
to a concrete offset once) is written for every shard, so the minimum is always defined.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from operators.settings import ConfigError, Settings


def register_flow(conn: psycopg.Connection, settings: Settings) -> None:
    """Record the flow's shard count at its first start; refuse a different count later."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO cdc.flows (flow_id, shards, start) VALUES (%s, %s, %s) "
            "ON CONFLICT (flow_id) DO NOTHING",
            (settings.flow_id, settings.shards, settings.start.value),
        )
        row = conn.execute("SELECT shards FROM cdc.flows WHERE flow_id = %s",
                           (settings.flow_id,)).fetchone()
    assert row is not None
    if row[0] != settings.shards:
        raise ConfigError(
            f"REPLICATE_SHARDS: flow {settings.flow_id!r} was created with {row[0]} shards; "
            f"the shard count cannot change (got {settings.shards}). Use a new REPLICATE_FLOW_ID "
            "to start over with another count."
        )


def partition_start(
    conn: psycopg.Connection,
    flow_id: str,
    shards: int,
    topic: str,
    partition: int,
    initial_offset: Callable[[], int],
) -> int:
    """The offset the source must seek `partition` to: the minimum over all shards."""
    with conn.transaction():
        known, lowest = conn.execute(
            "SELECT count(*), min(next_offset) FROM cdc.offsets "
            "WHERE flow_id = %s AND topic = %s AND partition = %s",
            (flow_id, topic, partition),
        ).fetchone()
        if known == shards:
            return lowest
        start = initial_offset() if lowest is None else min(lowest, initial_offset())
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO cdc.offsets (flow_id, shard, topic, partition, next_offset) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [(flow_id, shard, topic, partition, start) for shard in range(shards)],
            )
        return start if lowest is None else min(lowest, start)


def shard_offsets(conn: psycopg.Connection, flow_id: str, shard: int) -> dict[tuple[str, int], int]:
    rows = conn.execute(
        "SELECT topic, partition, next_offset FROM cdc.offsets WHERE flow_id = %s AND shard = %s",
        (flow_id, shard),
    ).fetchall()
    return {(t, p): o for t, p, o in rows}


def shard_commit(conn: psycopg.Connection, flow_id: str, shard: int) -> tuple[int, bytes | None]:
    """The sequence number and id of the shard's last commit; (0, None) before its first."""
    row = conn.execute(
        "SELECT seq, commit_id FROM cdc.shard_commits WHERE flow_id = %s AND shard = %s",
        (flow_id, shard)).fetchone()
    return (row[0], row[1]) if row else (0, None)
