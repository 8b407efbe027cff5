"""Invariants 4 and 7 together: undecodable messages arriving among good ones while the
replicator is killed -9 again and again each end up in `cdc.dlq` exactly once, with their raw
bytes and reason, and the good ones still equal the oracle."""

from __future__ import annotations

import time

import orjson
import psycopg
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from benchmarks.replicator_run import Run, assert_matches_oracle
from benchmarks.workload import WorkloadSpec, create_workload_topics, generate, produce
from tests.integration.kills import BackgroundProducer, kill_repeatedly
from tests.unit import debezium_samples as ds

pytestmark = pytest.mark.integration
PARTITIONS = 2
POISON_PER_PARTITION = 400
POISON_RATE = 30  # messages/s: the poison keeps arriving through every kill
GOOD_RATE = 550  # 20k events over ~36 s: rows still arrive at the fourth kill (the poison alone
# is too little to keep the flow behind)
_ENVELOPE = {"op": "c", "source": ds.pg_source(), "after": {"id": 1}}
# (key, value, the DLQ reason the test expects): each defect alone, in a message the decoder
# rejects before it needs a target table
POISON = [
    (b"k", b'{"op": "c", ', "malformed_json"),
    (b"k", b"[1, 2]", "malformed_envelope"),
    (b"k", orjson.dumps({**_ENVELOPE, "op": "x"}), "unknown_op"),
    (b"k", orjson.dumps({"op": "c", "after": {"id": 1}}), "missing_source"),
    (b"k", orjson.dumps({**_ENVELOPE, "source": {"connector": "mysql"}}), "bad_version"),
    (b"k", orjson.dumps({**_ENVELOPE, "after": None}), "missing_after"),
    (b"id=1", orjson.dumps(_ENVELOPE), "malformed_key"),
]


@pytest.fixture
def run(kafka_bootstrap, pg_dsn, tmp_path):
    run = Run(kafka_bootstrap, pg_dsn, tmp_path / "state")
    yield run
    run.cleanup()


def _expected_poison(topic: str) -> dict[tuple[str, int, int], tuple[bytes, bytes, str]]:
    """Position -> (key, value, reason): partition p's message i is POISON[(i + p) % 7],
    each value made unique by a trailing space count that cannot change its reason."""
    expected = {}
    for partition in range(PARTITIONS):
        for offset in range(POISON_PER_PARTITION):
            key, value, reason = POISON[(offset + partition) % len(POISON)]
            expected[(topic, partition, offset)] = (key, value + b" " * (offset % 3), reason)
    return expected


def _produce_poison(bootstrap: str, expected: dict[tuple[str, int, int], tuple]) -> None:
    """At POISON_RATE, each message at its expected offset."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    landed: list[tuple[int, int]] = []  # (expected offset, offset it landed at)
    started = time.monotonic()
    for sent, ((topic, partition, offset), (key, value, _)) in enumerate(
            sorted(expected.items(), key=lambda item: (item[0][2], item[0][1]))):
        producer.produce(topic, value=value, key=key, partition=partition,
                         on_delivery=lambda err, msg, want=offset: landed.append(
                             (want, -1 if err else msg.offset())))
        producer.poll(0)
        time.sleep(max(0.0, started + sent / POISON_RATE - time.monotonic()))
    assert producer.flush(30) == 0
    assert all(want == got for want, got in landed), "a poison message landed off its offset"


def test_poison_lands_in_the_dlq_exactly_once_through_kill_9s(run):
    workload = generate(WorkloadSpec(topic_prefix=run.prefix, seed=29, events=20_000, keys=4_000,
                                     partitions=PARTITIONS, tables=("customers", "orders")))
    run.topics += workload.topics
    create_workload_topics(workload, run.bootstrap)
    poison_topic = f"{run.prefix}.inventory.poison"
    admin = AdminClient({"bootstrap.servers": run.bootstrap})
    admin.create_topics([NewTopic(poison_topic, num_partitions=PARTITIONS)])[poison_topic].result(
        timeout=30)
    run.topics.append(poison_topic)
    expected = _expected_poison(poison_topic)
    good = BackgroundProducer(lambda: produce(workload, run.bootstrap, create_topics=False,
                                              rate=GOOD_RATE))
    poison = BackgroundProducer(lambda: _produce_poison(run.bootstrap, expected))
    good.start()
    poison.start()
    poison_partitions = [(poison_topic, p) for p in range(PARTITIONS)]
    kill_repeatedly(run, sorted(workload.arrivals) + poison_partitions, times=4, lose_state_at=1,
                    seed=29)
    run.start()
    good.join(timeout_s=120)
    poison.join(timeout_s=120)
    run.wait_caught_up(workload)
    with psycopg.connect(run.dsn, autocommit=True) as conn:
        assert run.partitions_behind(conn, dict.fromkeys(poison_partitions,
                                                         POISON_PER_PARTITION)) == []
        rows = conn.execute('SELECT topic, partition, "offset", raw_key, raw_value, error_type '
                            "FROM cdc.dlq WHERE flow_id = %s AND topic = %s",
                            (run.flow_id, poison_topic)).fetchall()
    assert run.stop() == [0]
    got = {(t, p, o): (bytes(k), bytes(v), reason) for t, p, o, k, v, reason in rows}
    assert len(rows) == len(got), "a poison message is in the DLQ twice"
    assert got.keys() == expected.keys(), (f"{len(expected.keys() - got.keys())} missing, "
                                           f"{len(got.keys() - expected.keys())} unexpected")
    wrong = [(pos, got[pos], want) for pos, want in expected.items() if got[pos] != want]
    assert not wrong, f"{len(wrong)} DLQ rows differ, e.g. {wrong[:3]}"
    assert_matches_oracle(run, workload, dlq_topics=(poison_topic,))
