"""An update whose column carries Debezium's unchanged-TOAST placeholder keeps the stored value of
that column in Postgres, for every form of the placeholder (tests/unit/test_toast_placeholders.py
has the forms), whether the Python decoder or the native fast path decoded it."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg import sql

from benchmarks.replicator_run import drop_flows
from operators.decode import Decoder
from operators.events import ChangeEvent
from operators.settings import Settings
from operators.shard_sink import ShardPartition
from tests.unit.test_toast_placeholders import CASES, json_message

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(pg_dsn, tmp_path):
    name = f"toast{uuid.uuid4().hex[:10]}"
    yield Settings(topics="srv.inventory.docs", pg_dsn=pg_dsn, state_dir=tmp_path, flow_id=name,
                   target_schema=name, shards=1, batch_size=1000)
    drop_flows(pg_dsn, name)


@pytest.mark.parametrize("native", [False, True])
def test_a_placeholder_update_keeps_the_stored_value_and_writes_the_rest(settings, native):
    decoder = Decoder(settings.target_schema, {}, None, native=native)
    events, stored = [], {}
    # jsonb[] is left out: the writer wraps only jsonb/json columns' values in `Jsonb`, so it
    # cannot write a jsonb[] column's value (a list of dicts) at all
    for index, case in enumerate(c for name, c in CASES.items() if name != "jsonb[]"):
        topic = f"srv.inventory.docs_{index}"
        real = decoder.decode(json_message(case, case.value, 1, topic=topic))
        placeholder = json_message(case, case.toast, 2, topic=topic)
        if native:  # the fast path itself takes the placeholder message
            assert decoder._fast.decode(placeholder) is not None  # type: ignore[union-attr]
        events += [real, decoder.decode(placeholder)]
        assert isinstance(real, ChangeEvent) and real.values is not None
        stored[f"docs_{index}"] = real.values["doc"]
    shard = ShardPartition(settings, 0)
    try:
        shard.write_batch([events])
        shard.snapshot()
    finally:
        shard.close()
    with psycopg.connect(settings.pg_dsn) as conn:
        rows = {table: conn.execute(sql.SQL("SELECT doc, note FROM {}.{}").format(
            sql.Identifier(settings.target_schema), sql.Identifier(table))).fetchall()
            for table in stored}
    assert rows == {table: [(doc, "note 2")] for table, doc in stored.items()}
