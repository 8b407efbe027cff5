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


def first_start_partitions(conn: psycopg.Connection, flow_id: str,
                           partitions: list[tuple[str, int]]) -> set[tuple[str, int]]:
    """The partitions of the flow's first start (recorded by the first start that lists them):
    `REPLICATE_START=latest` applies to those only, so that a topic or partition found later
    starts at its beginning instead of losing what it held before this start.

    A flow whose earlier runs recorded none (they predate `cdc.flow_partitions`) has offsets:
    the partitions those runs read are its first start's, not today's listing, in which a
    topic created since would otherwise count as one and start at its end."""
    with conn.transaction():
        recorded = conn.execute(
            "SELECT partitions_recorded_at IS NOT NULL FROM cdc.flows WHERE flow_id = %s "
            "FOR UPDATE", (flow_id,)).fetchone()
        if recorded is not None and not recorded[0]:
            ran_before = conn.execute(
                "INSERT INTO cdc.flow_partitions (flow_id, topic, partition) "
                "SELECT DISTINCT flow_id, topic, partition FROM cdc.offsets WHERE flow_id = %s "
                "ON CONFLICT DO NOTHING", (flow_id,)).rowcount
            if not ran_before:
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO cdc.flow_partitions (flow_id, topic, partition) "
                        "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                        [(flow_id, topic, partition) for topic, partition in partitions])
            conn.execute("UPDATE cdc.flows SET partitions_recorded_at = now() WHERE flow_id = %s",
                         (flow_id,))
        rows = conn.execute("SELECT topic, partition FROM cdc.flow_partitions WHERE flow_id = %s",
                            (flow_id,)).fetchall()
    return {(topic, partition) for topic, partition in rows}


def committed_starts(conn: psycopg.Connection, flow_id: str) -> dict[tuple[str, int], int]:
    """Per partition with committed offsets, where the source would start it (the minimum
    over its shards)."""
    rows = conn.execute(
        "SELECT topic, partition, min(next_offset) FROM cdc.offsets WHERE flow_id = %s "
        "GROUP BY topic, partition", (flow_id,)).fetchall()
    return {(topic, partition): offset for topic, partition, offset in rows}


def record_gap(conn: psycopg.Connection, flow_id: str, topic: str, partition: int,
               expected: int, earliest: int) -> None:
    """Record that offsets [expected, earliest) of a partition were skipped (Kafka no longer held
    them), and move every shard's offset of it below `earliest` there, in one transaction: a
    restart never seeks to an offset that is gone, and recording the same gap again (a retry
    after a lost answer) is harmless (ON CONFLICT DO NOTHING)."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO cdc.gaps (flow_id, topic, partition, expected_offset, earliest_offset) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (flow_id, topic, partition, expected, earliest))
        conn.execute(
            "UPDATE cdc.offsets SET next_offset = %s, updated_at = now() "
            "WHERE flow_id = %s AND topic = %s AND partition = %s AND next_offset < %s",
            (earliest, flow_id, topic, partition, earliest))


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
