"""The `kafka-read` baseline: how fast this broker hands the backlog to a Python consumer.

A confluent-kafka consumer with the replicator's own fetch settings (`FETCH_TUNING`) reads every
message of the topics and does nothing with them. It bounds any consumer of the same topics on
this machine from above, so a replicator close to it is limited by Kafka, not by its own work.
Exits when its position is at the end of every partition and prints one JSON line.

    python -m benchmarks.kafka_read --topics a,b --group G [--bootstrap ..]
"""

from __future__ import annotations

import argparse
import json
import time

from confluent_kafka import Consumer, TopicPartition

from operators.kafka_source import FETCH_TUNING

POLL_BATCH = 10_000


def partition_ends(consumer: Consumer, topics: list[str]) -> dict[tuple[str, int], int]:
    """(topic, partition) → its end offset now: where a baseline consumer is done."""
    meta = consumer.list_topics(timeout=30)
    return {(t, p): consumer.get_watermark_offsets(TopicPartition(t, p), timeout=30)[1]
            for t in topics for p in meta.topics[t].partitions}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--topics", required=True)
    ap.add_argument("--group", required=True)
    a = ap.parse_args(argv)
    topics = a.topics.split(",")
    consumer = Consumer({"bootstrap.servers": a.bootstrap, "group.id": a.group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "isolation.level": "read_committed"} | FETCH_TUNING)
    ends = partition_ends(consumer, topics)
    consumer.subscribe(topics)
    position = dict.fromkeys(ends, 0)
    messages = payload_bytes = 0
    first = cpu_first = None
    while any(position[tp] < end for tp, end in ends.items()):
        batch = consumer.consume(POLL_BATCH, timeout=0.5)
        if batch and first is None:
            first, cpu_first = time.monotonic(), time.process_time()
        for m in batch:
            if m.error():
                raise SystemExit(f"kafka error: {m.error()}")
            position[(m.topic(), m.partition())] = m.offset() + 1
            payload_bytes += len(m.value() or b"") + len(m.key() or b"")
        messages += len(batch)
    done, cpu_done = time.monotonic(), time.process_time()
    consumer.close()
    print(json.dumps({"messages": messages, "bytes": payload_bytes,
                      "seconds_from_first_message": done - first if first else None,
                      "cpu_seconds": cpu_done - cpu_first if cpu_first else None}))


if __name__ == "__main__":
    main()
