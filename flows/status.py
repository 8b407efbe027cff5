"""How far a flow is behind Kafka: `python -m flows.status` (reads the `REPLICATE_*` settings).

For each source partition: the committed position (the minimum over the flow's shards of
`cdc.offsets.next_offset`), Kafka's end offset, and the lag between them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import psycopg
from confluent_kafka import Consumer, TopicPartition

from operators.settings import ConfigError, Settings, kafka_client_config, load_settings

WATERMARK_TIMEOUT_S = 10


@dataclass(frozen=True, slots=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None  # None: no shard has a row yet (or not every shard)
    end: int

    @property
    def lag(self) -> int:
        return self.end - (self.committed or 0)


def flow_lag(settings: Settings, partitions: list[tuple[str, int]]) -> list[PartitionLag]:
    """Lag of each of `partitions` for the flow of `settings`."""
    with psycopg.connect(settings.pg_dsn) as conn:
        rows = conn.execute(
            "SELECT topic, partition, count(*), min(next_offset) FROM cdc.offsets "
            "WHERE flow_id = %s GROUP BY topic, partition", (settings.flow_id,)).fetchall()
    committed = {(t, p): low if n == settings.shards else None for t, p, n, low in rows}
    consumer = Consumer(kafka_client_config(settings) | {"group.id": "cdc-replicator-status"})
    try:
        return [
            PartitionLag(t, p, committed.get((t, p)), consumer.get_watermark_offsets(
                TopicPartition(t, p), timeout=WATERMARK_TIMEOUT_S)[1])
            for t, p in partitions
        ]
    finally:
        consumer.close()


def caught_up(lags: list[PartitionLag]) -> bool:
    return all(lag.committed is not None and lag.lag <= 0 for lag in lags)


def main() -> None:
    from operators.kafka_source import list_partitions

    try:
        settings = load_settings()
        lags = flow_lag(settings, list_partitions(settings))
    except ConfigError as exc:
        print(f"status: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"flow {settings.flow_id}: {sum(x.lag for x in lags)} messages behind")
    print(f"{'topic':<50} {'part':>4} {'committed':>12} {'end':>12} {'lag':>10}")
    for x in lags:
        shown = "-" if x.committed is None else str(x.committed)
        print(f"{x.topic:<50} {x.partition:>4} {shown:>12} {x.end:>12} {x.lag:>10}")


if __name__ == "__main__":
    main()
