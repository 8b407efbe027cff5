"""The native consumer's reading thread makes the records of plain messages ahead of the worker
(`cdc_native.Fetcher`, `NativeConsumer.teach`): against the real broker, a batch read that way
decodes exactly as the same messages decoded by the worker itself."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Producer

from operators.decode import Decoder
from operators.events import ChangeEvent, raw_messages
from operators.kafka_source import NativeConsumer
from operators.native_decode import run_events
from operators.settings import Settings
from tests.integration.test_native_shard import TOPICS, message

pytestmark = pytest.mark.integration
SHARDS = 3


def _decoded(decoder, batches: list, shards: int) -> tuple[list, list[list[tuple]]]:
    """What `decode_runs` gives: the other messages, and each shard's runs' events."""
    others, runs = decoder.decode_runs(batches, shards)
    events = [sorted((pair for run in shard_runs for pair in run_events(run)), key=_position)
              for shard_runs in runs]
    return others, events


def _position(pair: tuple) -> int:
    return pair[0]


def test_records_made_ahead_decode_as_the_worker_decodes_them(kafka_bootstrap, make_topic):
    topic = make_topic("ahead")
    plain = [message(TOPICS[0], n, "cud"[n % 3], n % 7, n + 2)._replace(topic=topic)
             for n in range(300)]
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for msg in plain[:100] + [m._replace(value=None) for m in plain[:5]] + plain[100:]:
        producer.produce(topic, msg.value, msg.key, partition=0)  # 5 tombstones: not planned
    assert producer.flush(30) == 0
    decoder = Decoder("public", {}, None, native=True)
    assert type(decoder.decode(plain[0])) is ChangeEvent  # it learns the topic's plan

    consumer = NativeConsumer(Settings(topics=topic, kafka_bootstrap=kafka_bootstrap,
                                       flow_id="ahead-test", shards=SHARDS))
    consumer.teach(decoder.newest_plans())
    consumer.add(topic, 0, 0)
    batches: list = []
    deadline = time.monotonic() + 30
    while sum(map(len, batches)) < 305 and time.monotonic() < deadline:
        batches += consumer.take(topic, 0)
    consumer.remove(topic, 0)

    made_ahead = sum(batch.ahead for batch in batches)
    assert made_ahead == 300, "every plain message made ahead"
    messages = list(raw_messages(batches))
    assert [m.offset for m in messages] == list(range(305))
    # a made message's buffer lacks the schema bytes; its value is put together when read
    assert [m.value for m in messages] == [m.value for m in plain[:100]] + [None] * 5 + [
        m.value for m in plain[100:]]
    # records made for another shard count are not used: every message is read again
    assert _decoded(decoder, batches, SHARDS + 1) == _decoded(decoder, messages, SHARDS + 1)
    ahead = _decoded(decoder, batches, SHARDS)
    assert sum(batch.ahead for batch in batches) == 0, "the decoder took them"
    assert ahead == _decoded(decoder, messages, SHARDS)
    others, events = ahead
    assert [p for p, _ in others] == list(range(100, 105)) and all(e is None for _, e in others)
    assert sum(map(len, events)) == 300
    assert all(type(e) is ChangeEvent and e.topic == topic for shard in events for _, e in shard)
