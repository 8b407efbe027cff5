"""Rows written before dotted table names were quoted are carried over at flow start."""

from __future__ import annotations

import uuid

import pytest

from benchmarks.replicator_run import drop_flows
from operators.events import TableName
from operators.table_name_upgrade import upgrade_quoted_table_names
from schemas.control import ensure_control_schema

pytestmark = pytest.mark.integration


@pytest.fixture
def flow(pg_dsn):
    flow_id = f"tnu{uuid.uuid4().hex[:10]}"
    yield flow_id
    drop_flows(pg_dsn, flow_id)


def test_old_form_rows_of_a_dotted_table_are_renamed_and_its_shards_rebuild(pg_conn, flow):
    ensure_control_schema(pg_conn)
    dotted, plain = TableName(f"{flow}.x", "t"), TableName(flow, "plain")
    old = f"{dotted.schema}.{dotted.name}"
    for table in (dotted, plain):
        pg_conn.execute("INSERT INTO cdc.tables VALUES (%s, %s, %s, %s)",
                        (flow, table.schema, table.name, ["id"]))
    pg_conn.execute("INSERT INTO cdc.tombstones (table_name, key, version) VALUES "
                    "(%s, '[1]', '\\x0105'), (%s, '[2]', '\\x0105'), (%s, '[2]', '\\x0109')",
                    (old, old, str(dotted)))
    pg_conn.execute("INSERT INTO cdc.truncations (table_name, version) VALUES (%s, '\\x0103')",
                    (old,))
    pg_conn.execute("INSERT INTO cdc.shard_commits (flow_id, shard, seq, commit_id) VALUES "
                    "(%s, 0, 4, NULL), (%s, 1, 7, '\\x01')", (flow, flow))

    assert upgrade_quoted_table_names(pg_conn, flow) == 1
    tombstones = pg_conn.execute(
        "SELECT table_name, key::text, version FROM cdc.tombstones WHERE table_name IN (%s, %s) "
        "ORDER BY 2", (old, str(dotted))).fetchall()
    assert tombstones == [(str(dotted), "[1]", b"\x01\x05"), (str(dotted), "[2]", b"\x01\x09")]
    assert pg_conn.execute("SELECT table_name FROM cdc.truncations WHERE table_name IN (%s, %s)",
                           (old, str(dotted))).fetchall() == [(str(dotted),)]
    commits = dict(pg_conn.execute("SELECT shard, commit_id FROM cdc.shard_commits "
                                   "WHERE flow_id = %s", (flow,)).fetchall())
    assert commits[0] is not None and len(commits[0]) == 16, "a legacy shard must rebuild"
    assert commits[1] == b"\x01", "a shard committed in the new form is left alone"
    assert upgrade_quoted_table_names(pg_conn, flow) == 0, "a second start changes nothing"
    pg_conn.execute("DELETE FROM cdc.tombstones WHERE table_name = %s", (str(dotted),))
    pg_conn.execute("DELETE FROM cdc.truncations WHERE table_name = %s", (str(dotted),))


def test_a_flow_without_dotted_names_is_left_alone(pg_conn, flow):
    ensure_control_schema(pg_conn)
    pg_conn.execute("INSERT INTO cdc.tables VALUES (%s, %s, 't', %s)", (flow, flow, ["id"]))
    pg_conn.execute("INSERT INTO cdc.shard_commits (flow_id, shard, seq) VALUES (%s, 0, 3)",
                    (flow,))
    assert upgrade_quoted_table_names(pg_conn, flow) == 0
    assert pg_conn.execute("SELECT commit_id FROM cdc.shard_commits WHERE flow_id = %s",
                           (flow,)).fetchall() == [(None,)]
