"""`replicate status`: where a flow stands, read from Postgres, Kafka and the local state dir.

Per source partition: the committed position (the minimum over the flow's shards of
`cdc.offsets.next_offset`, as the source would resume), Kafka's end offset and the lag between
them. Per target table: its rows, and the events audited as stale. The DLQ by topic and error
type, with how many rows are still pending. Per shard: its last commit and the size of its
RocksDB state on this host. Reads only; safe while the flow runs.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg import sql

from flows.admin_common import AdminError, Output, command, flow_shards, open_conn
from operators.settings import Settings, kafka_client_config
from operators.shard_sink import shard_part_name

KAFKA_TIMEOUT_S = 10


@dataclass(frozen=True, slots=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None  # None: no shard has a row yet (or not every shard)
    end: int

    @property
    def lag(self) -> int:
        return self.end - (self.committed or 0)


def committed_positions(conn: psycopg.Connection, flow_id: str, shards: int,
                        ) -> dict[tuple[str, int], int | None]:
    """Per partition the flow has offsets for: where it resumes, None while not every shard
    has a row for it."""
    rows = conn.execute(
        "SELECT topic, partition, count(*), min(next_offset) FROM cdc.offsets "
        "WHERE flow_id = %s GROUP BY topic, partition", (flow_id,)).fetchall()
    return {(t, p): low if n == shards else None for t, p, n, low in rows}


def end_offsets(settings: Settings, partitions: list[tuple[str, int]]) -> dict[tuple[str, int],
                                                                               int]:
    """Kafka's end offset of each partition."""
    consumer = Consumer(kafka_client_config(settings) | {"group.id": "cdc-replicator-status"})
    try:
        return {(t, p): consumer.get_watermark_offsets(TopicPartition(t, p),
                                                       timeout=KAFKA_TIMEOUT_S)[1]
                for t, p in partitions}
    finally:
        consumer.close()


def flow_lag(settings: Settings, partitions: list[tuple[str, int]]) -> list[PartitionLag]:
    """Lag of each of `partitions` for the flow of `settings`."""
    with psycopg.connect(settings.pg_dsn) as conn:
        committed = committed_positions(conn, settings.flow_id, settings.shards)
    ends = end_offsets(settings, partitions)
    return [PartitionLag(t, p, committed.get((t, p)), ends[(t, p)]) for t, p in partitions]


def caught_up(lags: list[PartitionLag]) -> bool:
    return all(lag.committed is not None and lag.lag <= 0 for lag in lags)


def kafka_partitions(settings: Settings) -> list[tuple[str, int]]:
    """The partitions of the flow's topics as Kafka lists them now."""
    metadata = AdminClient(kafka_client_config(settings)).list_topics(timeout=KAFKA_TIMEOUT_S)
    pattern = re.compile(settings.topic_pattern) if settings.topic_pattern else None
    topics = {t for t in metadata.topics if t in settings.topic_list
              or (pattern and pattern.fullmatch(t) and not t.startswith("__"))}
    return [(t, p) for t in topics for p in metadata.topics[t].partitions]


def _tables(conn: psycopg.Connection, flow_id: str) -> list[dict[str, object]]:
    stale = dict(conn.execute(
        "SELECT table_name, count(*) FROM cdc.stale_events WHERE flow_id = %s GROUP BY 1",
        (flow_id,)).fetchall())
    found = []
    for schema, name in conn.execute(
            "SELECT table_schema, table_name FROM cdc.tables WHERE flow_id = %s ORDER BY 1, 2",
            (flow_id,)).fetchall():
        ident = sql.Identifier(schema, name)
        exists = conn.execute("SELECT to_regclass(%s)",
                              (ident.as_string(conn),)).fetchone()[0] is not None
        rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(ident)).fetchone()[0] \
            if exists else None
        label = f"{schema}.{name}"
        found.append({"table": label, "rows": rows, "stale": stale.pop(label, 0)})
    found += [{"table": label, "rows": None, "stale": count} for label, count in stale.items()]
    return found


def _dlq(conn: psycopg.Connection, flow_id: str) -> list[dict[str, object]]:
    rows = conn.execute(
        "SELECT topic, error_type, count(*), count(*) FILTER (WHERE replay_status = 'pending') "
        "FROM cdc.dlq WHERE flow_id = %s GROUP BY 1, 2 ORDER BY 1, 2", (flow_id,)).fetchall()
    return [{"topic": t, "error_type": e, "rows": n, "pending": p} for t, e, n, p in rows]


def _dir_bytes(path: Path) -> int | None:
    if not path.is_dir():
        return None
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _shards(conn: psycopg.Connection, settings: Settings, count: int) -> list[dict[str, object]]:
    commits = {shard: (seq, at) for shard, seq, at in conn.execute(
        "SELECT shard, seq, committed_at FROM cdc.shard_commits WHERE flow_id = %s",
        (settings.flow_id,)).fetchall()}
    root = settings.state_dir / settings.flow_id
    return [{"shard": k, "seq": commits.get(k, (0, None))[0],
             "committed_at": commits.get(k, (0, None))[1],
             "state_bytes": _dir_bytes(root / shard_part_name(k))} for k in range(count)]


def status(args: argparse.Namespace, settings: Settings) -> Output:
    with open_conn(settings) as conn:
        count = flow_shards(conn, settings)
        committed = committed_positions(conn, settings.flow_id, count)
        tables = _tables(conn, settings.flow_id)
        dlq = _dlq(conn, settings.flow_id)
        shards = _shards(conn, settings, count)
    try:
        partitions = sorted(set(committed) | set(kafka_partitions(settings)))
        ends = end_offsets(settings, partitions)
    except KafkaException as exc:
        raise AdminError(f"Kafka: {exc.args[0].str() if exc.args else exc}") from None
    lags = [PartitionLag(t, p, committed.get((t, p)), ends[(t, p)]) for t, p in partitions]
    data = {"flow_id": settings.flow_id, "lag": sum(x.lag for x in lags),
            "partitions": [asdict(x) | {"lag": x.lag} for x in lags],
            "tables": tables, "dlq": dlq, "shards": shards}
    return Output(data, _text(data))


def _text(data: dict) -> list[str]:
    lines = [f"flow {data['flow_id']}: {data['lag']} messages behind", "",
             f"{'topic':<50} {'part':>4} {'committed':>12} {'end':>12} {'lag':>10}"]
    for x in data["partitions"]:
        shown = "-" if x["committed"] is None else str(x["committed"])
        lines.append(f"{x['topic']:<50} {x['partition']:>4} {shown:>12} {x['end']:>12} "
                     f"{x['lag']:>10}")
    lines += ["", f"{'table':<50} {'rows':>12} {'stale':>10}"]
    for t in data["tables"]:
        rows = "-" if t["rows"] is None else str(t["rows"])
        lines.append(f"{t['table']:<50} {rows:>12} {t['stale']:>10}")
    lines += ["", f"{'dlq topic':<50} {'error type':<20} {'rows':>8} {'pending':>8}"]
    lines += [f"{d['topic']:<50} {d['error_type']:<20} {d['rows']:>8} {d['pending']:>8}"
              for d in data["dlq"]] or ["(no DLQ rows)"]
    lines += ["", f"{'shard':>5} {'commit':>10} {'state on disk':>14}  last commit"]
    for s in data["shards"]:
        size = "-" if s["state_bytes"] is None else f"{s['state_bytes'] / 2**20:.1f} MB"
        lines.append(f"{s['shard']:>5} {s['seq']:>10} {size:>14}  {s['committed_at'] or '-'}")
    return lines


def add_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("status", help="lag per partition, rows/stale/DLQ per table, shards")
    parser.set_defaults(handler=command("status", status))
