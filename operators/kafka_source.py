"""Kafka source: one part per topic partition, started from the offsets in Postgres.

It never commits consumer-group offsets: Postgres is the only commit point. Besides messages it
emits a `ProgressMarker` per partition every `REPLICATE_MARKER_MS`, which keeps idle shards'
offsets moving and wakes shards whose buffers are waiting for their age limit.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from operators.events import ProgressMarker, RawMessage
from operators.flow_control import CommitWindow
from operators.offsets import partition_start
from operators.pg_session import connect
from operators.retry import retrying
from operators.settings import ConfigError, Settings, StartPosition, kafka_client_config

log = logging.getLogger(__name__)
SourceItem = RawMessage | ProgressMarker
IDLE_WAIT = timedelta(milliseconds=20)
METADATA_TIMEOUT_S = 30
FETCH_TUNING = {  # librdkafka settings of the worker consumer (the benchmark's kafka-read too)
    "fetch.wait.max.ms": 50,
    "queued.max.messages.kbytes": 16 * 1024,  # prefetch per worker consumer
    # Once the prefetch queue is full librdkafka waits this long before it fetches that
    # partition again. Its default (1 s) held backlog reads to ~40k messages/s (3.5 kB each),
    # whatever the worker did; 10 ms lets a backlog arrive at ~180k messages/s.
    "fetch.queue.backoff.ms": 10,
    # The queue limit is checked before a fetch, not against its answer: each fetch may bring
    # this much per partition, compressed, on top of a nearly full queue. Debezium JSON with
    # schemas compresses ~13:1, so librdkafka's 1 MB made ~150 MB of overshoot on 12 partitions.
    "max.partition.fetch.bytes": 256 * 1024,
}


def list_partitions(settings: Settings) -> list[tuple[str, int]]:
    """(topic, partition) of every configured topic and every topic matching the pattern.

    Waits (with backoff) while Kafka is unreachable; a named topic that does not exist is a
    configuration error.
    """
    admin = AdminClient(kafka_client_config(settings))
    metadata = retrying(
        "list Kafka topics", lambda: admin.list_topics(timeout=METADATA_TIMEOUT_S),
        cap_s=settings.retry_max_s, transient=lambda exc: isinstance(exc, KafkaException),
    )
    wanted = set(settings.topic_list)
    missing = wanted - set(metadata.topics)
    if missing:
        raise ConfigError(f"REPLICATE_TOPICS: no such topic(s): {', '.join(sorted(missing))}")
    if settings.topic_pattern:
        pattern = re.compile(settings.topic_pattern)
        wanted |= {t for t in metadata.topics if pattern.fullmatch(t) and not t.startswith("__")}
    if not wanted:
        log.warning("no topic matches REPLICATE_TOPIC_PATTERN=%r yet", settings.topic_pattern)
    return sorted((t, p) for t in wanted for p in metadata.topics[t].partitions)


def part_name(topic: str, partition: int) -> str:
    return f"{partition}-{topic}"


def parse_part_name(name: str) -> tuple[str, int]:
    partition, topic = name.split("-", 1)
    return topic, int(partition)


def worker_consumer_config(settings: Settings, environ: dict[str, str] | None = None
                           ) -> dict[str, Any]:
    """`FETCH_TUNING` unless a `REPLICATE_KAFKA_*` setting says otherwise; never overridable:
    what exactly-once rests on (offsets live in Postgres; only committed transactions are read)."""
    return FETCH_TUNING | kafka_client_config(settings, environ) | {
        "group.id": f"cdc-replicator.{settings.flow_id}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
    }


class WorkerConsumer:
    """One Kafka consumer for every partition a worker reads.

    A librdkafka consumer costs a few threads and tens of MB of buffers; one per partition made
    those the largest part of the process's memory. Parts pull their own messages out of the
    shared fetches; a part past its in-flight window pauses its partition.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._consumer = Consumer(worker_consumer_config(settings))
        self._buffers: dict[tuple[str, int], list[RawMessage]] = {}
        self._paused: set[tuple[str, int]] = set()
        self._fetched_any = False

    def add(self, topic: str, partition: int, start: int) -> None:
        self._buffers[(topic, partition)] = []
        self._consumer.incremental_assign([TopicPartition(topic, partition, start)])

    def take(self, topic: str, partition: int) -> list[RawMessage]:
        """The messages fetched for one partition; fetches for all when it has none."""
        key = (topic, partition)
        if not self._buffers[key]:
            self._fetch()
        taken, self._buffers[key] = self._buffers[key], []
        return taken

    def hold(self, topic: str, partition: int, held: bool) -> None:
        """Pause (or resume) fetching one partition."""
        key = (topic, partition)
        if held and key not in self._paused:
            self._consumer.pause([TopicPartition(topic, partition)])
            self._paused.add(key)
        elif not held and key in self._paused:
            self._consumer.resume([TopicPartition(topic, partition)])
            self._paused.discard(key)

    def _fetch(self) -> None:
        buffers = self._buffers
        messages = self._consumer.consume(self._settings.poll_batch_size, 0.001)
        if messages and not self._fetched_any:
            self._fetched_any = True  # the benchmark times a backlog from this line
            log.info("source: first messages fetched")
        for msg in messages:
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF or not error.fatal():
                    log.warning("source: %s", error)
                    continue
                raise KafkaException(error)
            topic, partition = msg.topic(), msg.partition()
            buffers[(topic, partition)].append(
                RawMessage(topic, partition, msg.offset(), msg.key(), msg.value()))

    def remove(self, topic: str, partition: int) -> None:
        self._consumer.incremental_unassign([TopicPartition(topic, partition)])
        del self._buffers[(topic, partition)]
        if not self._buffers:
            self._consumer.close()


_local = threading.local()


def worker_consumer(settings: Settings) -> WorkerConsumer:
    """The calling worker thread's consumer for this flow."""
    consumers: dict[str, WorkerConsumer] = _local.__dict__.setdefault("consumers", {})
    consumer = consumers.get(settings.flow_id)
    if consumer is None:
        consumer = consumers[settings.flow_id] = WorkerConsumer(settings)
    return consumer


class KafkaPartition(StatefulSourcePartition[SourceItem, None]):
    def __init__(self, settings: Settings, topic: str, partition: int, start: int,
                 partitions: int) -> None:
        self._settings = settings
        self._topic, self._partition = topic, partition
        self._consumer = worker_consumer(settings)
        self._consumer.add(topic, partition, start)
        self._next_offset = start
        self._window = CommitWindow(settings, topic, partition, start, partitions)
        self._marker_due = 0.0
        self._idle = False
        log.info("source %s[%d]: starting at offset %d", topic, partition, start)

    def next_batch(self) -> list[SourceItem]:
        allowed = self._window.allows(self._next_offset)
        self._consumer.hold(self._topic, self._partition, not allowed)
        batch: list[SourceItem] = self._consumer.take(self._topic, self._partition)
        if batch:
            self._next_offset = batch[-1].offset + 1
        self._idle = not batch
        now = time.monotonic()
        if now >= self._marker_due:
            batch.append(ProgressMarker(self._topic, self._partition, self._next_offset))
            self._marker_due = now + self._settings.marker_ms / 1000
        return batch

    def next_awake(self) -> datetime | None:
        return datetime.now(UTC) + IDLE_WAIT if self._idle else None

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        self._consumer.remove(self._topic, self._partition)


class KafkaCdcSource(FixedPartitionedSource[SourceItem, None]):
    """Reads `partitions` (resolved once at start, see `list_partitions`)."""

    def __init__(self, settings: Settings, partitions: list[tuple[str, int]]) -> None:
        self._settings = settings
        self._partitions = partitions

    def list_parts(self) -> list[str]:
        return [part_name(t, p) for t, p in self._partitions]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> KafkaPartition:
        topic, partition = parse_part_name(for_part)
        settings = self._settings

        def start_offset() -> int:
            with connect(settings.pg_dsn) as conn:
                return partition_start(conn, settings.flow_id, settings.shards, topic, partition,
                                       self._initial_offset(topic, partition))

        start = retrying(f"source {topic}[{partition}]: read start offset", start_offset,
                         cap_s=settings.retry_max_s)
        return KafkaPartition(settings, topic, partition, start, len(self._partitions))

    def _initial_offset(self, topic: str, partition: int) -> Callable[[], int]:
        def resolve() -> int:
            consumer = Consumer(kafka_client_config(self._settings) | {"group.id": "cdc-probe"})
            try:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=METADATA_TIMEOUT_S)
            finally:
                consumer.close()
            return high if self._settings.start is StartPosition.LATEST else low

        return resolve

