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
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from operators import tracing
from operators.events import ProgressMarker, RawMessage
from operators.flow_control import CommitWindow
from operators.log_format import log_context
from operators.offset_gaps import (
    METADATA_TIMEOUT_S,
    WatermarkProbe,
    check_offset_gaps,
    gap_end,
    watermarks,
)
from operators.offsets import first_start_partitions, partition_start
from operators.pg_session import connect
from operators.retry import retrying
from operators.settings import ConfigError, Settings, StartPosition, kafka_client_config
from operators.source_watch import NOTE_INTERVAL_S, WATCH

try:
    from cdc_native import Fetcher
except ImportError:  # not built: the flow reads with the Python client, or says how to build it
    Fetcher = None

log = logging.getLogger(__name__)
SourceItem = RawMessage | ProgressMarker | Any  # Any: a cdc_native.Fetched batch
IDLE_WAIT = timedelta(milliseconds=20)
FETCH_WAIT_S = 0.001  # how long a fetch waits for a first message
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
        # an offset Kafka no longer holds stops the partition (`WorkerConsumer.take` settles
        # it) instead of jumping silently to the partition's end
        "auto.offset.reset": "error",
    }


class WorkerConsumer(ABC):
    """One Kafka consumer for every partition a worker reads.

    A librdkafka consumer costs a few threads and tens of MB of buffers; one per partition made
    those the largest part of the process's memory. Parts pull their own messages out of the
    shared fetches; a part past its in-flight window pauses its partition.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._paused: set[tuple[str, int]] = set()
        self._fetched_any = False
        self._positions: dict[tuple[str, int], int] = {}  # the offset after what was taken
        self._suspects: set[tuple[str, int]] = set()  # to check since an offset was reset
        self._probe = WatermarkProbe(settings)  # their checks' client, closed after the last

    def add(self, topic: str, partition: int, start: int) -> None:
        """Start reading a partition at offset `start`."""
        self._positions[(topic, partition)] = start
        self._assign(topic, partition, start)

    def remove(self, topic: str, partition: int) -> None:
        """Stop reading a partition; the last one closes the client."""
        del self._positions[(topic, partition)]
        self._checked(topic, partition)
        self._unassign(topic, partition)
        if not self._positions:
            self._close()

    @abstractmethod
    def _assign(self, topic: str, partition: int, start: int) -> None:
        """Start fetching a partition at offset `start`."""

    @abstractmethod
    def _unassign(self, topic: str, partition: int) -> None:
        """Stop fetching a partition."""

    @abstractmethod
    def _close(self) -> None:
        """Close the client."""

    @abstractmethod
    def _taken(self, topic: str, partition: int) -> list[SourceItem]:
        """What was fetched of one partition since it was last taken."""

    @abstractmethod
    def _fetch(self) -> int:
        """Fetch what there is of any partition, waiting up to `FETCH_WAIT_S` for a message;
        how many messages came."""

    @abstractmethod
    def _pause(self, topic: str, partition: int, held: bool) -> None:
        """Pause (or resume) fetching one partition."""

    @abstractmethod
    def known_end(self, topic: str, partition: int) -> int | None:
        """The partition's end offset as the last fetch told it (librdkafka's cached high
        watermark; the last stable offset under `read_committed`), None before any fetch."""

    @abstractmethod
    def teach(self, plans: dict[str, Any]) -> None:
        """The decoder's newest plan of each topic (`NativeConsumer` reads ahead with them)."""

    def take(self, topic: str, partition: int) -> list[SourceItem]:
        """The messages fetched for one partition; fetches for all when it has none. Each
        item has the `next_offset` after its messages (a `ProgressMarker` past a gap)."""
        taken = self._taken(topic, partition)
        if not taken:
            fetched = self._fetch()
            if fetched and not self._fetched_any:
                self._fetched_any = True  # the benchmark times a backlog from this line
                log.info("source: first messages fetched")
            taken = self._taken(topic, partition)
        key = (topic, partition)
        if taken:
            self._positions[key] = taken[-1].next_offset
        elif key in self._suspects:
            taken = self._settle(topic, partition)
            self._checked(topic, partition)
        return taken

    def _offsets_reset(self) -> None:
        """librdkafka stopped a partition whose fetch offset is out of range; the native
        consumer is not told which, so each partition is checked once it has nothing left to
        take."""
        self._suspects = set(self._positions)

    def _settle(self, topic: str, partition: int) -> list[SourceItem]:
        """A partition with nothing left to take, after an offset reset: if Kafka no longer
        holds its next offset, stop or go on from the earliest one (`gap_end`)."""
        low = gap_end(self._settings, self._probe, topic, partition,
                      self._positions[(topic, partition)])
        if low is None:
            return []
        self._unassign(topic, partition)
        self._assign(topic, partition, low)
        self._positions[(topic, partition)] = low
        return [ProgressMarker(topic, partition, low, False)]

    def _checked(self, topic: str, partition: int) -> None:
        """A suspect needs no check any more; the last one closes the probe's client."""
        self._suspects.discard((topic, partition))
        if not self._suspects:
            self._probe.close()

    def hold(self, topic: str, partition: int, held: bool) -> None:
        """Pause (or resume) fetching one partition."""
        key = (topic, partition)
        if held != (key in self._paused):
            self._pause(topic, partition, held)
            if held:
                self._paused.add(key)
            else:
                self._paused.discard(key)


class PythonConsumer(WorkerConsumer):
    """The confluent-kafka client: a `RawMessage` per message."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._consumer = Consumer(worker_consumer_config(settings))
        self._buffers: dict[tuple[str, int], list[SourceItem]] = {}

    def _assign(self, topic: str, partition: int, start: int) -> None:
        self._buffers[(topic, partition)] = []
        self._consumer.incremental_assign([TopicPartition(topic, partition, start)])

    def _taken(self, topic: str, partition: int) -> list[SourceItem]:
        key = (topic, partition)
        taken, self._buffers[key] = self._buffers[key], []
        return taken

    def _pause(self, topic: str, partition: int, held: bool) -> None:
        change = self._consumer.pause if held else self._consumer.resume
        change([TopicPartition(topic, partition)])

    def teach(self, plans: dict[str, Any]) -> None:
        pass  # it makes no records ahead: the decoder reads every message itself

    def known_end(self, topic: str, partition: int) -> int | None:
        try:
            _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                           cached=True)
        except KafkaException:  # nothing cached yet
            return None
        return high if high >= 0 else None

    def _fetch(self) -> int:
        buffers = self._buffers
        messages = self._consumer.consume(self._settings.poll_batch_size, FETCH_WAIT_S)
        for msg in messages:
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._AUTO_OFFSET_RESET:
                    self._offsets_reset()
                if error.code() == KafkaError._PARTITION_EOF or not error.fatal():
                    log.warning("source: %s", error)
                    continue
                raise KafkaException(error)
            topic, partition = msg.topic(), msg.partition()
            buffers[(topic, partition)].append(
                RawMessage(topic, partition, msg.offset(), msg.key(), msg.value()))
        return len(messages)

    def _unassign(self, topic: str, partition: int) -> None:
        self._consumer.incremental_unassign([TopicPartition(topic, partition)])
        del self._buffers[(topic, partition)]

    def _close(self) -> None:
        self._consumer.close()


class NativeConsumer(WorkerConsumer):
    """librdkafka from native code (`cdc_native.Fetcher`): a thread of its own reads ahead
    (copying each partition's messages into one buffer, and making the records of the plain ones
    with the plans the decoder `teach`es it); a part takes a `Fetched` batch, no Python object
    per message."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._fetcher = native_fetcher(settings)
        self._taught: dict[str, Any] = {}

    def _assign(self, topic: str, partition: int, start: int) -> None:
        self._fetcher.add(topic, partition, start)

    def _taken(self, topic: str, partition: int) -> list[SourceItem]:
        fetched = self._fetcher.take(topic, partition)
        return [] if fetched is None else [fetched]

    def _pause(self, topic: str, partition: int, held: bool) -> None:
        self._fetcher.hold(topic, partition, held)

    def known_end(self, topic: str, partition: int) -> int | None:
        return self._fetcher.known_end(topic, partition)

    def teach(self, plans: dict[str, Any]) -> None:
        for topic, plan in plans.items():
            if self._taught.get(topic) is not plan:
                self._fetcher.teach(topic, plan)
                self._taught[topic] = plan

    def _fetch(self) -> int:
        count, warnings = self._fetcher.fetch(int(FETCH_WAIT_S * 1000))
        for warning in warnings:
            log.warning("source: %s", warning)
        if self._fetcher.offsets_reset():
            self._offsets_reset()
        return count

    def _unassign(self, topic: str, partition: int) -> None:
        self._fetcher.remove(topic, partition)

    def _close(self) -> None:
        self._fetcher.close()


def native_fetcher(settings: Settings) -> Any:
    """A `cdc_native.Fetcher` with the worker consumer's configuration; a property the native
    client does not take is a `ConfigError` naming the way out."""
    config = [(name, str(value).lower() if isinstance(value, bool) else str(value))
              for name, value in worker_consumer_config(settings).items()]
    try:
        return Fetcher(config, settings.shards)
    except ValueError as exc:
        raise ConfigError(f"REPLICATE_NATIVE_FETCH: {exc} (set REPLICATE_NATIVE_FETCH=false to "
                          "read with the Python client)") from None


def reads_natively(settings: Settings) -> bool:
    """Whether the worker consumers are `NativeConsumer`s."""
    return settings.native_decode and settings.native_fetch


_local = threading.local()


def running_consumer(settings: Settings) -> WorkerConsumer | None:
    """The calling worker thread's consumer for this flow, if its source has made one."""
    return _local.__dict__.get("consumers", {}).get(settings.flow_id)


def worker_consumer(settings: Settings) -> WorkerConsumer:
    """The calling worker thread's consumer for this flow."""
    consumers: dict[str, WorkerConsumer] = _local.__dict__.setdefault("consumers", {})
    consumer = consumers.get(settings.flow_id)
    if consumer is None:
        kind = NativeConsumer if reads_natively(settings) else PythonConsumer
        consumer = consumers[settings.flow_id] = kind(settings)
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
        self._caught_up = False
        self._started = False
        self._note_due = 0.0
        WATCH.opened(topic, partition)
        log.info("source %s[%d]: starting at offset %d", topic, partition, start,
                 extra={"topic": topic, "partition": partition})

    def next_batch(self) -> list[SourceItem]:
        if not self._started:
            # The first batch is only the start position: its marker reaches every shard, so
            # bytewax builds the shard parts (opens their stores) while the consumer reads ahead,
            # not when the first messages are already waiting.
            self._started = True
            self._marker_due = time.monotonic() + self._settings.marker_ms / 1000
            return [ProgressMarker(self._topic, self._partition, self._next_offset, False)]
        allowed = self._window.allows(self._next_offset)
        self._consumer.hold(self._topic, self._partition, not allowed)
        traced = tracing.recording()
        polled_at = time.time_ns() if traced else 0
        batch: list[SourceItem] = self._consumer.take(self._topic, self._partition)
        if batch:
            if traced:  # a span per poll that brought messages
                tracing.finished_span("poll", polled_at, {
                    "cdc.topic": self._topic, "cdc.partition": self._partition,
                    "cdc.offset": self._next_offset, "cdc.next_offset": batch[-1].next_offset})
            self._next_offset = batch[-1].next_offset
        self._idle = not batch
        caught_up = not batch and allowed and self._read_to_end()
        now = time.monotonic()
        if now >= self._note_due:  # for lag and end-to-end latency (operators/source_watch.py)
            self._note_due = now + NOTE_INTERVAL_S
            WATCH.note(self._topic, self._partition, batch,
                       self._consumer.known_end(self._topic, self._partition))
        if now >= self._marker_due or caught_up != self._caught_up:
            batch.append(ProgressMarker(self._topic, self._partition, self._next_offset,
                                        caught_up))
            self._marker_due = now + self._settings.marker_ms / 1000
        self._caught_up = caught_up
        return batch

    def _read_to_end(self) -> bool:
        """Whether this part has read all its partition holds, as far as the last fetch knows."""
        end = self._consumer.known_end(self._topic, self._partition)
        return end is not None and self._next_offset >= end

    def next_awake(self) -> datetime | None:
        return datetime.now(UTC) + IDLE_WAIT if self._idle else None

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        WATCH.closed(self._topic, self._partition)
        self._consumer.remove(self._topic, self._partition)


class KafkaCdcSource(FixedPartitionedSource[SourceItem, None]):
    """Reads `partitions` (resolved once at start, see `list_partitions`). Made before the flow
    runs, so what stops it here (`ConfigError`) is one line: a committed offset Kafka no longer
    holds (`check_offset_gaps`), a setting the native client refuses."""

    def __init__(self, settings: Settings, partitions: list[tuple[str, int]]) -> None:
        self._settings = settings
        self._partitions = partitions
        if reads_natively(settings):
            native_fetcher(settings)  # a setting the native client refuses fails the start

        def first_start() -> set[tuple[str, int]]:
            with connect(settings.pg_dsn) as conn:
                return first_start_partitions(conn, settings.flow_id, partitions)

        self._first_start = retrying("record the flow's partitions", first_start,
                                     cap_s=settings.retry_max_s)
        check_offset_gaps(settings, partitions)

    def list_parts(self) -> list[str]:
        WATCH.expect(self._partitions)  # the dataflow runs: for the readiness check
        return [part_name(t, p) for t, p in self._partitions]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> KafkaPartition:
        topic, partition = parse_part_name(for_part)
        settings = self._settings

        def start_offset() -> int:
            with connect(settings.pg_dsn) as conn:
                return partition_start(conn, settings.flow_id, settings.shards, topic, partition,
                                       self._initial_offset(topic, partition))

        with log_context(topic=topic, partition=partition):
            start = retrying(f"source {topic}[{partition}]: read start offset", start_offset,
                             cap_s=settings.retry_max_s)
        return KafkaPartition(settings, topic, partition, start, len(self._partitions))

    def _initial_offset(self, topic: str, partition: int) -> Callable[[], int]:
        """`REPLICATE_START=latest` applies to the partitions of the flow's first start; one
        found later (a new topic, an added partition) starts at its beginning: what it holds
        was written after that start."""
        latest = (self._settings.start is StartPosition.LATEST
                  and (topic, partition) in self._first_start)

        def resolve() -> int:
            low, high = watermarks(self._settings, [(topic, partition)])[(topic, partition)]
            return high if latest else low

        return resolve

