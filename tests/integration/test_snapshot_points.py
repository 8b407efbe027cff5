"""The decode step records a snapshot's point in `cdc.snapshot_points` before the batch that showed
it goes on, and a restarted step reads it back: the first transaction after the snapshot, decoded
only after the restart, still ranks above the snapshot's rows."""

from __future__ import annotations

import uuid

import psycopg

from operators.decode_step import DecodeStep
from operators.events import ChangeEvent
from operators.native_decode import Run, run_events
from operators.settings import Settings
from schemas.control import ensure_control_schema
from tests.e2e.test_captured_messages import fixture


def decoded(step: DecodeStep, name: str) -> ChangeEvent:
    """The one event the step makes of a captured message (a native run's, or Python's)."""
    (_, (item,)), = step([fixture(name)[1]])
    (event,) = [e for _, e in run_events(item)] if type(item) is Run else [item]
    assert type(event) is ChangeEvent
    return event


def test_a_restarted_decode_step_ranks_the_first_transaction_above_the_snapshot(
        pg_dsn: str) -> None:
    settings = Settings(pg_dsn=pg_dsn, flow_id=f"points_{uuid.uuid4().hex[:8]}",
                        topics=fixture("in_flight_update.json")[1].topic, shards=1,
                        native_decode=True)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        ensure_control_schema(conn)
    snapshot = decoded(DecodeStep(settings), "in_flight_snapshot_row.json")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        recorded = conn.execute("SELECT topic, partition, first_offset, point FROM "
                                "cdc.snapshot_points WHERE flow_id = %s",
                                (settings.flow_id,)).fetchall()
    source = fixture("in_flight_snapshot_row.json")[1]
    assert recorded == [(source.topic, 0, 0, int.from_bytes(snapshot.version[1:9], "big"))]
    restarted = DecodeStep(settings)
    in_flight = decoded(restarted, "in_flight_update.json")
    after = decoded(restarted, "in_flight_next_update.json")
    assert snapshot.version < in_flight.version < after.version
    again = decoded(DecodeStep(settings), "in_flight_snapshot_row.json")  # a replay
    assert again.version == snapshot.version
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM cdc.snapshot_points WHERE flow_id = %s",
                            (settings.flow_id,)).fetchone() == (1,)
        conn.execute("DELETE FROM cdc.snapshot_points WHERE flow_id = %s", (settings.flow_id,))
