"""Cassandra-model changes through the shard sink into real Postgres, against the independent
cell oracle (`benchmarks/cell_oracle.py`): any order, duplicates, batches cut anywhere, the shard
reopened or its state lost between batches."""

from __future__ import annotations

import time
import uuid
from unittest import mock

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from psycopg import sql

from benchmarks import cell_oracle
from benchmarks.replicator_run import drop_flows
from formats.cells import CellChange, CellKind, RangeBound, schema_of
from operators import cell_shard
from operators.decode import Decoder
from operators.events import ProgressMarker, TableName, TableSchema
from operators.native_cells import CellRun
from operators.settings import Settings
from operators.shard_sink import ShardPartition
from operators.target_tables import TargetTables
from schemas.cql_types import column_type
from tests.integration.shard_batches import write_in_batches
from tests.integration.test_native_shard import TOPICS, message
from tests.integration.test_shard_sink import Things

pytestmark = pytest.mark.integration
TOPIC = "scylla.ks.items"
KEY = ("id", "ck")
COLUMNS = ("a", "b")


def _types():
    return {"id": column_type({"type": "int64"}, "bigint"),
            "ck": column_type({"type": "int64"}, "bigint"),
            "a": column_type({"type": "string"}, "text"),
            "b": column_type({"type": "int64"}, "bigint")}


class Items:
    """Changes of table `<schema>.items (id bigint, ck bigint, a text, b bigint,
    PRIMARY KEY (id, ck))`, as the ScyllaDB and Cassandra decoders make them."""

    def __init__(self, schema: str) -> None:
        self.table = TableName(schema, "items")
        self.schema = schema_of(self.table, _types(), KEY)
        self.offset = 0

    def change(self, event: cell_oracle.Event) -> CellChange:
        self.offset += 1
        whole = event.kind in ("write", "row_delete")
        key = event.key if whole else (*event.key, None)
        return CellChange(
            self.table, KEY, key, None if whole else 1, CellKind(event.kind), event.ts_us,
            event.marker, dict(event.cells), TOPIC, 0, self.offset,
            expires_us=dict(event.expiries), marker_expires_us=event.marker_expiry_us,
            schema=self.schema,
            range_start=_bound(event.range_start), range_end=_bound(event.range_end))


def _bound(bound: cell_oracle.Bound | None) -> RangeBound | None:
    return None if bound is None else RangeBound(bound.prefix, bound.inclusive)


def rows(dsn: str, table: TableName) -> dict[tuple, dict]:
    with psycopg.connect(dsn) as conn:
        found = conn.execute(f'SELECT id, ck, a, b FROM "{table.schema}"."{table.name}"')
        return {(i, c): {k: v for k, v in (("a", a), ("b", b)) if v is not None}
                for i, c, a, b in found}


NOW_US = time.time_ns() // 1000
_ts = st.integers(min_value=1, max_value=6)
_key = st.tuples(st.integers(1, 2), st.integers(1, 3))
_value = {"a": st.sampled_from(["x", "y", "yy"]) | st.none(), "b": st.integers(-2, 2) | st.none()}


@st.composite
def events(draw, deletions: bool = True) -> cell_oracle.Event:
    """A write or row delete, or with `deletions` also a partition or range deletion."""
    kinds = ["write", "write", "write", "row_delete"]
    kind = draw(st.sampled_from([*kinds, "partition_delete", "range_delete"] if deletions
                                else kinds))
    ts = NOW_US - 10_000_000 + draw(_ts)
    key = draw(_key)
    if kind == "row_delete":
        return cell_oracle.Event("items", key, 1, kind, ts)
    if kind == "partition_delete":
        return cell_oracle.Event("items", key[:1], 1, kind, ts)
    if kind == "range_delete":
        bound = st.none() | st.builds(lambda ck, inclusive: cell_oracle.Bound((ck,), inclusive),
                                      st.integers(1, 3), st.booleans())
        return cell_oracle.Event("items", key[:1], 1, kind, ts, range_start=draw(bound),
                                 range_end=draw(bound))
    cells = {c: draw(_value[c]) for c in draw(st.sets(st.sampled_from(COLUMNS)))}
    # a TTL either long past (the cell is already expired) or far ahead
    with_ttl = [c for c in sorted(cells) if cells[c] is not None]
    expiries = {c: NOW_US + draw(st.sampled_from([-5_000_000, 3_600_000_000]))
                for c in (draw(st.sets(st.sampled_from(with_ttl))) if with_ttl else ())}
    marker = draw(st.booleans())
    marker_expiry = (NOW_US + draw(st.sampled_from([-5_000_000, 3_600_000_000]))
                     if marker and draw(st.booleans()) else None)
    return cell_oracle.Event("items", key, 1, kind, ts, marker=marker, cells=cells,
                             expiries=expiries, marker_expiry_us=marker_expiry)


@pytest.fixture
def settings(pg_dsn, tmp_path):
    name = f"cells{uuid.uuid4().hex[:10]}"
    yield Settings(topics=TOPIC, pg_dsn=pg_dsn, state_dir=tmp_path, flow_id=name,
                   target_schema=name, shards=1, batch_size=1000)
    drop_flows(pg_dsn, name)


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
@hypothesis_settings(max_examples=60, deadline=None,
                     phases=[Phase.explicit, Phase.reuse, Phase.generate],
                     suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=st.booleans().flatmap(  # without deletions, the native step decides every batch
           lambda deletions: st.lists(events(deletions), min_size=1, max_size=25)),
       data=st.data(),
       restarts=st.lists(st.sampled_from(["keep", "reopen", "lose state"]), min_size=3,
                         max_size=3))
def test_property_postgres_equals_the_cell_oracle(pg_dsn, tmp_path, native, history, data,
                                                  restarts):
    """Every event arrives once or twice, in any order, in batches: the table holds the rows
    Cassandra would show, cell by cell, whether the shard decides natively
    (`operators/native_cells.py`) or in Python."""
    arrivals = data.draw(st.permutations(history + data.draw(
        st.lists(st.sampled_from(history), max_size=5))))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(arrivals)), max_size=3)))
    name = f"cellprop{uuid.uuid4().hex[:10]}"
    config = Settings(topics=TOPIC, pg_dsn=pg_dsn, state_dir=tmp_path / name, flow_id=name,
                      target_schema=name, shards=1, native_decode=native)
    items = Items(name)
    decided = []  # the native step's decisions (None: it declined)
    native_step = cell_shard.decide_cell_runs
    try:
        bounds = [0, *cuts, len(arrivals)]
        batches = []
        for start, end in zip(bounds, bounds[1:], strict=False):
            batches.append([items.change(e) for e in arrivals[start:end]])
            batches[-1].append(ProgressMarker(TOPIC, 0, items.offset + 1))
        with mock.patch.object(cell_shard, "decide_cell_runs",
                               lambda *a: decided.append(native_step(*a)) or decided[-1]):
            write_in_batches(config, batches, restarts)
        plain = all(e.kind in ("write", "row_delete") and not e.expiries
                    and e.marker_expiry_us is None for e in history)
        if native and plain:  # nothing the native step leaves to Python: it decided
            assert decided and None not in decided
        expected = cell_oracle.visible_rows(history, time.time_ns() // 1000).get("items", {})
        assert rows(pg_dsn, items.table) == expected
    finally:
        drop_flows(pg_dsn, name)


def _python_decision_not_expected(*args, **kwargs):
    raise AssertionError("the native cell step should have decided this commit")


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_a_late_write_older_than_a_row_delete_stays_deleted_and_is_audited(settings, native,
                                                                           monkeypatch):
    """Writes and row deletes only: with the native step on, Python decides none of them."""
    settings = settings.model_copy(update={"native_decode": native})
    if native:
        monkeypatch.setattr(cell_shard, "decide_cells", _python_decision_not_expected)
    items = Items(settings.target_schema)
    shard = ShardPartition(settings, 0)
    write = cell_oracle.Event("items", (1, 1), 1, "write", 10, marker=True, cells={"a": "x"})
    delete = cell_oracle.Event("items", (1, 1), 1, "row_delete", 20)
    late = cell_oracle.Event("items", (1, 1), 1, "write", 15, cells={"b": 5})
    newer = cell_oracle.Event("items", (1, 1), 1, "write", 30, cells={"b": 7})
    shard.write_batch([[items.change(write), items.change(delete)]])
    shard.write_batch([[items.change(late), ProgressMarker(TOPIC, 0, 4)]])
    shard.snapshot()
    assert rows(settings.pg_dsn, items.table) == {}
    shard.write_batch([[items.change(newer), ProgressMarker(TOPIC, 0, 5)]])
    shard.snapshot()
    assert rows(settings.pg_dsn, items.table) == {(1, 1): {"b": 7}}
    with psycopg.connect(settings.pg_dsn) as conn:
        stale = conn.execute('SELECT "offset", reason FROM cdc.stale_events WHERE flow_id = %s',
                             (settings.flow_id,)).fetchall()
    assert stale == [(3, "older than the row's cell versions or a deletion covering it")]


def test_a_write_decided_on_versions_postgres_does_not_hold_is_refused_then_redone(settings,
                                                                                  caplog):
    """The SQL guard: a row whose `_cdc_cells` changed behind the shard's back is not written
    over; the commit rolls back, the shard rebuilds its state from Postgres and decides again,
    against the versions Postgres holds: the late write is stale there."""
    items = Items(settings.target_schema)
    shard = ShardPartition(settings, 0)
    shard.write_batch([[items.change(cell_oracle.Event("items", (1, 1), 1, "write", 10,
                                                        cells={"a": "x"})),
                        ProgressMarker(TOPIC, 0, 2)]])
    shard.snapshot()
    table = f'"{items.table.schema}"."{items.table.name}"'
    with psycopg.connect(settings.pg_dsn) as conn:
        conn.execute(f"""UPDATE {table} SET a = 'newer',
                         _cdc_cells = '{{"c": {{"a": [50, 0, 0, "6e6577"]}}}}'""")
    late = items.change(cell_oracle.Event("items", (1, 1), 1, "write", 20, cells={"a": "y"}))
    shard.write_batch([[late, ProgressMarker(TOPIC, 0, 3)]])
    shard.snapshot()
    assert rows(settings.pg_dsn, items.table) == {(1, 1): {"a": "newer"}}
    assert any("rebuilding the state of shards [0]" in r.getMessage() for r in caplog.records)
    with psycopg.connect(settings.pg_dsn) as conn:
        stale = conn.execute('SELECT "offset" FROM cdc.stale_events WHERE flow_id = %s',
                             (settings.flow_id,)).fetchall()
        offset = conn.execute("SELECT next_offset FROM cdc.offsets WHERE flow_id = %s",
                              (settings.flow_id,)).fetchone()
    assert (stale, offset) == ([(late.offset,)], (3,))


def test_cell_changes_beside_native_runs_in_one_commit_are_applied(settings):
    """A shard's commit may hold native runs (Debezium) and cell changes from two decode calls:
    the runs must not take the native path alone, which would commit the cell changes' offsets
    without applying them."""
    decoder = Decoder(settings.target_schema, {}, None, native=True)
    decoder.decode(message(TOPICS[0], 0, "c", 0, 1))  # teaches the native path the schema
    decoded, runs = decoder.decode_runs([message(TOPICS[0], 1, "c", 7, 20)], 1)
    assert runs[0] and not [item for _, item in decoded if item is not None]
    items = Items(settings.target_schema)
    insert = items.change(cell_oracle.Event("items", (1, 1), 1, "write", 10, marker=True,
                                            cells={"a": "x"}))
    shard = ShardPartition(settings, 0)
    shard.write_batch([[*runs[0], insert, ProgressMarker(TOPIC, 0, items.offset + 1)]])
    shard.snapshot()
    shard.close()
    assert rows(settings.pg_dsn, items.table) == {(1, 1): {"a": "x"}}
    with psycopg.connect(settings.pg_dsn) as conn:
        native = conn.execute(f'SELECT id FROM "{settings.target_schema}".things').fetchall()
    assert native == [(7,)]


def test_a_cell_value_postgres_refuses_goes_to_the_dlq_and_the_rest_lands(settings):
    items = Items(settings.target_schema)
    good = items.change(cell_oracle.Event("items", (1, 1), 1, "write", 10, cells={"a": "x"}))
    bad = items.change(cell_oracle.Event("items", (1, 2), 1, "write", 10, cells={"a": "\x00"}))
    shard = ShardPartition(settings, 0)
    shard.write_batch([[good, bad, ProgressMarker(TOPIC, 0, items.offset + 1)]])
    shard.snapshot()
    assert rows(settings.pg_dsn, items.table) == {(1, 1): {"a": "x"}}
    with psycopg.connect(settings.pg_dsn) as conn:
        dlq = conn.execute('SELECT "offset", error_type FROM cdc.dlq WHERE flow_id = %s',
                           (settings.flow_id,)).fetchall()
    assert dlq == [(bad.offset, "write_refused")]


def test_a_table_of_row_changes_refuses_cell_changes_and_back(settings):
    """One table, two kinds of versions: each kind's changes to the other's table go to the DLQ
    (`table_kind_mismatch`) instead of being judged by the wrong guard."""
    items = Items(settings.target_schema)
    things = Things(settings.target_schema)
    cells_into_rows = items.change(cell_oracle.Event("items", (1, 1), 1, "write", 10,
                                                     cells={"a": "x"}))
    cells_into_rows.table = things.table
    cells_into_rows.schema = schema_of(things.table, _types(), KEY)
    shard = ShardPartition(settings, 0)
    shard.write_batch([[things.event(1, 10), ProgressMarker(TOPIC, 0, 2)]])
    shard.write_batch([[items.change(cell_oracle.Event("items", (1, 1), 1, "write", 10,
                                                       cells={"a": "x"}))]])
    rows_into_cells = things.event(2, 11)
    rows_into_cells.table = items.table
    rows_into_cells.schema = TableSchema(items.table, things.schema.columns, ("id",))
    shard.write_batch([[cells_into_rows, rows_into_cells,
                        ProgressMarker(TOPIC, 0, items.offset + things.offset + 10)]])
    shard.snapshot()
    with psycopg.connect(settings.pg_dsn) as conn:
        dlq = conn.execute('SELECT error_type FROM cdc.dlq WHERE flow_id = %s',
                           (settings.flow_id,)).fetchall()
    assert dlq == [("table_kind_mismatch",), ("table_kind_mismatch",)]


def test_rows_the_table_held_before_the_flow_take_cell_changes(settings):
    """A table created by hand with rows: a write to one of them updates it (it has no cell
    versions to guard), a delete of another removes it."""
    schema = settings.target_schema
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'CREATE TABLE "{schema}".items (id bigint, ck bigint, a text, b bigint, '
                     "PRIMARY KEY (id, ck))")
        conn.execute(f"INSERT INTO \"{schema}\".items VALUES (1, 1, 'old', 5), (2, 2, 'old', 6)")
    items = Items(schema)
    shard = ShardPartition(settings, 0)
    shard.write_batch([[items.change(cell_oracle.Event("items", (1, 1), 1, "write", 10,
                                                       cells={"a": "new"})),
                        items.change(cell_oracle.Event("items", (2, 2), 1, "row_delete", 10)),
                        ProgressMarker(TOPIC, 0, 3)]])
    shard.snapshot()
    assert rows(settings.pg_dsn, items.table) == {(1, 1): {"a": "new", "b": 5}}


def test_a_row_kept_alive_by_an_expired_marker_only_is_gone(settings):
    """INSERT ... USING TTL: past the marker's expiry a row with no live cell is gone; before it
    the row exists even with every cell null."""
    items = Items(settings.target_schema)
    now = time.time_ns() // 1000
    shard = ShardPartition(settings, 0)
    shard.write_batch([[items.change(cell_oracle.Event(
        "items", (1, k), 1, "write", 10, marker=True, cells={"a": None},
        marker_expiry_us=now + offset)) for k, offset in ((1, -5_000_000), (2, 3_600_000_000))]
        + [ProgressMarker(TOPIC, 0, 3)]])
    shard.snapshot()
    assert rows(settings.pg_dsn, items.table) == {(1, 2): {}}


def test_expired_rows_are_swept_while_only_native_runs_arrive(settings, monkeypatch):
    """The cell sources went quiet and the row sources' commits all go native: a due sweep still
    runs (the commit goes the Python way)."""
    monkeypatch.setattr(cell_shard, "SWEEP_EVERY_S", 0.0)
    items = Items(settings.target_schema)
    expiry = time.time_ns() // 1000 + 1_500_000
    shard = ShardPartition(settings, 0)
    shard.write_batch([[items.change(cell_oracle.Event(
        "items", (1, 1), 1, "write", 10, cells={"a": "x"}, expiries={"a": expiry})),
        ProgressMarker(TOPIC, 0, 2)]])
    shard.snapshot()
    assert rows(settings.pg_dsn, items.table) == {(1, 1): {"a": "x"}}
    decoder = Decoder(settings.target_schema, {}, None, native=True)
    decoder.decode(message(TOPICS[0], 0, "c", 0, 1))  # teaches the native path the schema
    time.sleep(max(0.0, expiry / 1e6 - time.time()) + 0.1)
    for offset in (1, 2):
        _, runs = decoder.decode_runs([message(TOPICS[0], offset, "c", offset, 20 + offset)], 1)
        assert runs[0]
        shard.write_batch([[*runs[0]]])
        shard.snapshot()
    assert rows(settings.pg_dsn, items.table) == {}


def test_the_expiry_sweep_is_planned_each_time_not_prepared(settings):
    """psycopg prepares a statement run five times, and Postgres then keeps a generic plan: one
    made while the table was empty scanned all of it at every sweep (each shard's, every 5 s)
    once it had grown. The sweep's query must leave no prepared statement behind."""
    items = Items(settings.target_schema)
    shard = ShardPartition(settings, 0)
    write = cell_oracle.Event("items", (1, 1), 1, "write", 10, marker=True, cells={"a": "x"})
    shard.write_batch([[items.change(write), ProgressMarker(TOPIC, 0, items.offset + 1)]])
    shard.snapshot()
    cells = cell_shard.CellShard(0, 1)
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        tables = TargetTables(conn, settings.flow_id, settings.delete_mode)
        table = tables.lookup(items.table)
        for _ in range(8):
            cells._rows(conn, table, KEY, sql.SQL("_cdc_expires_at <= now()"))
        prepared = conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0]
    shard.close()
    assert prepared == 0


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_a_write_decided_ahead_sees_a_partition_delete_still_in_flight(settings, native):
    """The commit after one holding a partition delete is decided while that one is still in
    Postgres: a late write under the deletion must stay deleted there too."""
    settings = settings.model_copy(update={"native_decode": native})
    items = Items(settings.target_schema)
    shard = ShardPartition(settings, 0)
    committer = shard._committer
    first = cell_oracle.Event("items", (1, 1), 1, "write", 10, marker=True, cells={"a": "x"})
    shard.write_batch([[items.change(first), ProgressMarker(TOPIC, 0, items.offset + 1)]])
    committer.commit_all(wait=True)
    delete = cell_oracle.Event("items", (2,), 1, "partition_delete", 100)
    shard.write_batch([[items.change(delete), ProgressMarker(TOPIC, 0, items.offset + 1)]])
    committer.commit_all()  # in flight while the next one is decided
    late = cell_oracle.Event("items", (2, 1), 1, "write", 50, marker=True, cells={"a": "late"})
    shard.write_batch([[items.change(late), ProgressMarker(TOPIC, 0, items.offset + 1)]])
    committer.commit_all(wait=True)
    shard.close()
    assert rows(settings.pg_dsn, items.table) == {(1, 1): {"a": "x"}}


def test_a_refused_value_of_a_native_run_goes_to_the_dlq_and_the_rest_lands(settings):
    """Postgres refuses a commit (a table made before the flow, with a narrower column): the
    commit is split to find the change, which needs the run's changes one by one."""
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(settings.target_schema)))
        conn.execute(sql.SQL("CREATE TABLE {} (id bigint, ck bigint, a varchar(2), b bigint, "
                             "PRIMARY KEY (id, ck))").format(
            sql.Identifier(settings.target_schema, "items")))
    items = Items(settings.target_schema)
    good = items.change(cell_oracle.Event("items", (1, 1), 1, "write", 10, cells={"a": "x"}))
    bad = items.change(cell_oracle.Event("items", (1, 2), 1, "write", 10, cells={"a": "long"}))
    run = CellRun.from_changes([good, bad])
    shard = ShardPartition(settings, 0)
    shard.write_batch([[run, ProgressMarker(TOPIC, 0, items.offset + 1)]])
    shard.snapshot()
    shard.close()
    assert rows(settings.pg_dsn, items.table) == {(1, 1): {"a": "x"}}
    with psycopg.connect(settings.pg_dsn) as conn:
        dlq = conn.execute('SELECT "offset", error_type FROM cdc.dlq WHERE flow_id = %s',
                           (settings.flow_id,)).fetchall()
    assert dlq == [(bad.offset, "write_refused")]
