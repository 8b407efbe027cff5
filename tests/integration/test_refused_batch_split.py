"""A batch Postgres refuses is split until the refused event stands alone; no part commits an
offset past an event that another part still holds, whatever order the shard got them in."""

from __future__ import annotations

import dataclasses
import uuid

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from psycopg import sql

from benchmarks.replicator_run import drop_flows
from operators.decode import Decoder
from operators.events import ChangeEvent, DlqRecord
from operators.native_decode import Run
from operators.settings import Settings
from operators.shard_sink import ShardPartition
from tests.integration.test_native_shard import TOPICS, message
from tests.integration.test_shard_sink import TOPIC, Things, rows

pytestmark = pytest.mark.integration
REFUSED_QTY = 666  # the run's column is an integer: a CHECK constraint refuses this value


def _flow(pg_dsn: str, tmp_path, topic: str) -> Settings:
    name = f"split{uuid.uuid4().hex[:10]}"
    return Settings(topics=topic, pg_dsn=pg_dsn, state_dir=tmp_path / name, flow_id=name,
                    target_schema=name, shards=1, batch_size=1000)


def _dlq(settings: Settings) -> list[tuple[int, int, str]]:
    with psycopg.connect(settings.pg_dsn) as conn:
        return conn.execute('SELECT partition, "offset", error_type FROM cdc.dlq '
                            'WHERE flow_id = %s ORDER BY 1, 2', (settings.flow_id,)).fetchall()


def _offsets(settings: Settings) -> dict[int, int]:
    with psycopg.connect(settings.pg_dsn) as conn:
        return dict(conn.execute("SELECT partition, next_offset FROM cdc.offsets "
                                 "WHERE flow_id = %s", (settings.flow_id,)).fetchall())


def test_a_dlq_record_ahead_of_a_run_with_a_refused_row_loses_none_of_the_runs_events(
        pg_dsn, tmp_path):
    """The decode step's order: the DLQ record of offset 10 ahead of the run of offsets 0-9,
    whose row at offset 6 Postgres refuses."""
    topic = TOPICS[0]
    settings = _flow(pg_dsn, tmp_path, topic)
    decoder = Decoder(settings.target_schema, {}, None, native=True)
    teacher = decoder.decode(message(topic, 0, "c", 100, 1)._replace(partition=1))
    assert type(teacher) is ChangeEvent  # and the topic has a plan now
    shard = ShardPartition(settings, 0)
    try:
        shard.write_batch([[teacher]])
        shard.snapshot()  # the table exists from here on
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER TABLE {} ADD CHECK (qty <> {})").format(
                sql.Identifier(settings.target_schema, "things"), sql.Literal(REFUSED_QTY)))
        others, runs = decoder.decode_runs(
            [message(topic, n, "u", n, 10 + n, **({"qty": REFUSED_QTY} if n == 6 else {}))
             for n in range(10)], 1)
        assert others == [] and [type(r) for r in runs[0]] == [Run] and len(runs[0][0]) == 10
        bad = DlqRecord(topic, 0, 10, b"k", b"{", "malformed_json", "bad")
        shard.write_batch([[bad, *runs[0]]])
        shard.snapshot()
        assert set(rows(pg_dsn, teacher.table)) == {100, *(k for k in range(10) if k != 6)}
        assert _dlq(settings) == [(0, 6, "write_refused"), (0, 10, "malformed_json")]
        assert _offsets(settings) == {0: 11, 1: 1}
    finally:
        shard.close()
        drop_flows(pg_dsn, settings.flow_id)


EVENTS = {0: 8, 1: 5}  # events per partition, at offsets 0..n-1
offsets = st.sampled_from([(p, o) for p, n in EVENTS.items() for o in range(n)])


# No shrinking: each example costs a dozen commits; the failing example is printed as found.
@hypothesis_settings(max_examples=25, deadline=None,
                     phases=[Phase.explicit, Phase.reuse, Phase.generate],
                     suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(refused=st.sets(offsets, min_size=1, max_size=2), dlq=st.sets(offsets, max_size=2),
       order=st.randoms(use_true_random=False))
def test_any_order_of_a_refused_batch_lands_every_event_or_its_dlq_row(pg_dsn, tmp_path,
                                                                       refused, dlq, order):
    """Events and DLQ records of two partitions in any order, some rows refused (a smallint
    out of range): each event is in the table or has one DLQ row, and the offsets end past
    the last of each partition."""
    settings = _flow(pg_dsn, tmp_path, TOPIC)
    things = Things(settings.target_schema)
    units: list[ChangeEvent | DlqRecord] = []
    for partition, count in EVENTS.items():
        for offset in range(count):
            if (partition, offset) in dlq - refused:
                units.append(DlqRecord(TOPIC, partition, offset, b"k", b"{", "malformed_json",
                                       "bad"))
                continue
            key = partition * 100 + offset
            event = things.event(key, 10, qty=100_000 if (partition, offset) in refused else 1)
            units.append(dataclasses.replace(event, partition=partition, offset=offset))
    order.shuffle(units)
    shard = ShardPartition(settings, 0)
    try:
        shard.write_batch([units])
        shard.snapshot()
        written = {e.key[0] for e in units if type(e) is ChangeEvent
                   and (e.partition, e.offset) not in refused}
        assert set(rows(pg_dsn, things.table)) == written
        assert _dlq(settings) == sorted([(p, o, "write_refused") for p, o in refused]
                                        + [(p, o, "malformed_json") for p, o in dlq - refused])
        assert _offsets(settings) == EVENTS
    finally:
        shard.close()
        drop_flows(pg_dsn, settings.flow_id)
