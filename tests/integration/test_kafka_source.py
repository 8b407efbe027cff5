"""The worker consumers (the Python client's and the native one) and their fetch settings against
the real broker, on a compressed backlog many times the prefetch queue (as a Debezium backlog
with schemas is: its batches compress ~15:1)."""

from __future__ import annotations

import os
import time

import pytest
from confluent_kafka import Producer

from operators.events import ProgressMarker, raw_messages
from operators.kafka_source import FETCH_TUNING, KafkaPartition, NativeConsumer, PythonConsumer
from operators.settings import Settings

pytestmark = pytest.mark.integration
consumers = pytest.mark.parametrize("consumer_kind", [PythonConsumer, NativeConsumer])
MESSAGE_BYTES = 4096
PARTITIONS = 12
# each partition holds as many bytes as the whole prefetch queue
PER_PARTITION = FETCH_TUNING["queued.max.messages.kbytes"] * 1024 // MESSAGE_BYTES
STALL_S = 0.5  # librdkafka's own default backoff after a full queue is 1 s; ours is 10 ms
# A loaded machine may pause the reading thread once; the 1 s default stalled each
# time the worker caught up with the queue, about once per partition's worth of backlog.
STALLS_TOLERATED = 1


def _produce_backlog(bootstrap: str, topic: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20,
                         "compression.type": "lz4", "batch.size": 1_000_000})
    for _ in range(PER_PARTITION):
        # ~15:1 under lz4, like Debezium JSON with schemas: a constant schema, a random row
        value = (os.urandom(128).hex().encode() + b"s" * MESSAGE_BYTES)[:MESSAGE_BYTES]
        for partition in range(PARTITIONS):
            producer.produce(topic, value, partition=partition)
        producer.poll(0)
    assert producer.flush(30) == 0


@consumers
def test_a_backlog_beyond_the_prefetch_queue_is_read_without_stalls(kafka_bootstrap, make_topic,
                                                                     consumer_kind):
    """Once the prefetch queue is full, librdkafka waits `fetch.queue.backoff.ms` before it
    fetches that partition again. At its default that was a 1 s pause each time the worker
    caught up with the queue."""
    backlog = make_topic("prefetch", partitions=PARTITIONS)
    _produce_backlog(kafka_bootstrap, backlog)
    consumer = consumer_kind(Settings(topics=backlog, kafka_bootstrap=kafka_bootstrap,
                                      flow_id="prefetch-test"))
    offsets: dict[int, list[int]] = {}
    for partition in range(PARTITIONS):
        consumer.add(backlog, partition, 0)
        offsets[partition] = []
    stalls: list[float] = []  # gaps between fetches longer than STALL_S
    last = time.monotonic()
    deadline = last + 60
    while sum(map(len, offsets.values())) < PER_PARTITION * PARTITIONS:
        assert time.monotonic() < deadline, "backlog not read in 60 s"
        for partition, read in offsets.items():
            taken = consumer.take(backlog, partition)
            now = time.monotonic()
            if taken:
                if now - last > STALL_S:
                    stalls.append(round(now - last, 2))
                last = now
                read += [m.offset for m in raw_messages(taken)]
    for partition in offsets:
        consumer.remove(backlog, partition)  # the last one closes the consumer

    assert all(read == list(range(PER_PARTITION)) for read in offsets.values()), \
        "every message once, in order"
    assert len(stalls) <= STALLS_TOLERATED, f"the consumer stalled between fetches: {stalls} s"



@consumers
def test_a_message_larger_than_a_partition_fetch_still_arrives(kafka_bootstrap, make_topic,
                                                               consumer_kind):
    """Fetches ask for at most `max.partition.fetch.bytes` per partition; a bigger message (a
    wide row, a large document) must still come through whole, not stall the partition."""
    limit = FETCH_TUNING["max.partition.fetch.bytes"]
    topic = make_topic("large", config={"max.message.bytes": str(16 * limit)})
    big = os.urandom(8 * limit)  # random: compression cannot bring it under the limit
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 16 * limit})
    for value in (b"before", big, b"after"):
        producer.produce(topic, value, partition=0)
    assert producer.flush(30) == 0

    consumer = consumer_kind(Settings(topics=topic, kafka_bootstrap=kafka_bootstrap,
                                      flow_id="large-message-test"))
    consumer.add(topic, 0, 0)
    values: list[bytes | None] = []
    deadline = time.monotonic() + 30
    while len(values) < 3 and time.monotonic() < deadline:
        values += [m.value for m in raw_messages(consumer.take(topic, 0))]
    consumer.remove(topic, 0)

    assert values == [b"before", big, b"after"]


@consumers
def test_a_consumer_knows_where_a_partition_ends_once_it_has_fetched(kafka_bootstrap, make_topic,
                                                                      consumer_kind):
    """`known_end` (librdkafka's cached high watermark) is what tells a part it has caught up:
    unknown before a fetch, the offset after the last message once it was read."""
    topic = make_topic("ends")
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for value in (b"a", b"b", b"c"):
        producer.produce(topic, value, partition=0)
    assert producer.flush(30) == 0

    consumer = consumer_kind(Settings(topics=topic, kafka_bootstrap=kafka_bootstrap,
                                      flow_id="known-end-test"))
    consumer.add(topic, 0, 0)
    assert consumer.known_end(topic, 0) is None
    offsets: list[int] = []
    deadline = time.monotonic() + 30
    while len(offsets) < 3 and time.monotonic() < deadline:
        offsets += [m.offset for m in raw_messages(consumer.take(topic, 0))]
    assert offsets == [0, 1, 2]
    assert consumer.known_end(topic, 0) == 3
    consumer.remove(topic, 0)


@pytest.mark.parametrize("native_fetch", [False, True])
def test_a_part_says_when_it_has_caught_up_and_when_messages_come_again(
        kafka_bootstrap, make_topic, native_fetch):
    """The first batch is the start position alone; then markers on the transitions only (the
    marker period is a minute here): caught up once the part has read what the partition holds,
    not caught up when messages come again."""
    topic = make_topic("caught-up")
    producer = Producer({"bootstrap.servers": kafka_bootstrap})

    def produce(values: list[bytes]) -> None:
        for value in values:
            producer.produce(topic, value, partition=0)
        assert producer.flush(30) == 0

    def read_until(count: int) -> tuple[list[int], list[ProgressMarker]]:
        offsets: list[int] = []
        markers: list[ProgressMarker] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (len(offsets) >= count and markers
                                                   and markers[-1].caught_up):
            for item in part.next_batch():
                if type(item) is ProgressMarker:
                    markers.append(item)
                else:
                    offsets += [m.offset for m in raw_messages([item])]
        return offsets, markers

    produce([b"a", b"b", b"c"])
    settings = Settings(topics=topic, kafka_bootstrap=kafka_bootstrap, marker_ms=60_000,
                        flow_id=f"caught-up-{native_fetch}", native_fetch=native_fetch)
    part = KafkaPartition(settings, topic, 0, 0, 1)
    try:
        time.sleep(1)  # the native consumer has read ahead by now
        # the start position alone first: its marker has bytewax build every shard part
        assert part.next_batch() == [ProgressMarker(topic, 0, 0, caught_up=False)]
        offsets, markers = read_until(3)
        assert offsets == [0, 1, 2]
        assert markers[-1] == ProgressMarker(topic, 0, 3, caught_up=True)
        assert not any(m.caught_up for m in markers[:-1]), "caught up before reading it all"
        assert not any(type(i) is ProgressMarker for _ in range(5) for i in part.next_batch()), \
            "a marker without a transition"
        produce([b"d", b"e"])
        offsets, markers = read_until(2)
        assert offsets == [3, 4]
        assert [m.caught_up for m in markers] == [False, True]
        assert markers[-1].next_offset == 5
    finally:
        part.close()
