"""The local Cassandra (infra/cassandra.sh, started by `make infra-up`) is usable for
reconciliation and type tests: CDC tables can be created, and cell write times and TTLs read
back as written."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import pytest
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    Session,
)
from cassandra.policies import DCAwareRoundRobinPolicy

pytestmark = [pytest.mark.integration, pytest.mark.cassandra]

CASSANDRA_HOST = os.environ.get("TEST_CASSANDRA_HOST", "127.0.0.1")
CASSANDRA_PORT = int(os.environ.get("TEST_CASSANDRA_PORT", "9042"))
TIMEOUT_S = 10.0
TTL_S = 3600


@pytest.fixture(scope="module")
def cassandra_session() -> Iterator[Session]:
    """A session on the local node; fails (not skips) with what to run when nothing answers."""
    profile = ExecutionProfile(
        load_balancing_policy=DCAwareRoundRobinPolicy(local_dc="datacenter1"),
        request_timeout=TIMEOUT_S,
    )
    cluster = Cluster(
        [CASSANDRA_HOST],
        port=CASSANDRA_PORT,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        connect_timeout=TIMEOUT_S,
        control_connection_timeout=TIMEOUT_S,
    )
    try:
        session = cluster.connect()
    except NoHostAvailable as exc:
        cluster.shutdown()
        pytest.fail(f"Cassandra does not answer on {CASSANDRA_HOST}:{CASSANDRA_PORT} ({exc}); "
                    "run make infra-up")
    try:
        yield session
    finally:
        cluster.shutdown()


@pytest.fixture
def keyspace(cassandra_session: Session) -> Iterator[str]:
    """A fresh SimpleStrategy keyspace (replication factor 1), dropped at teardown."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    cassandra_session.execute(
        f"CREATE KEYSPACE {name} "
        "WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}"
    )
    try:
        yield name
    finally:
        cassandra_session.execute(f"DROP KEYSPACE IF EXISTS {name}")


def test_a_table_created_with_cdc_keeps_cdc_enabled(cassandra_session: Session,
                                                    keyspace: str) -> None:
    cassandra_session.execute(f"CREATE TABLE {keyspace}.t (id int PRIMARY KEY, v text) "
                              "WITH cdc = true")
    row = cassandra_session.execute(
        "SELECT cdc FROM system_schema.tables WHERE keyspace_name = %s AND table_name = 't'",
        (keyspace,),
    ).one()
    assert row is not None and row.cdc is True


def test_a_row_written_with_a_ttl_reads_back_its_write_times_and_remaining_ttl(
    cassandra_session: Session, keyspace: str
) -> None:
    cassandra_session.execute(f"CREATE TABLE {keyspace}.t (id int PRIMARY KEY, a text, b int) "
                              "WITH cdc = true")
    before_us = time.time_ns() // 1000
    cassandra_session.execute(f"INSERT INTO {keyspace}.t (id, a) VALUES (1, 'x') USING TTL {TTL_S}")
    after_us = time.time_ns() // 1000
    explicit_us = before_us - 5_000_000
    cassandra_session.execute(
        f"UPDATE {keyspace}.t USING TIMESTAMP {explicit_us} SET b = 7 WHERE id = 1"
    )

    row = cassandra_session.execute(
        f"SELECT a, b, WRITETIME(a) AS wa, TTL(a) AS ta, WRITETIME(b) AS wb, TTL(b) AS tb "
        f"FROM {keyspace}.t WHERE id = 1"
    ).one()

    assert (row.a, row.b) == ("x", 7)
    # The server stamps microseconds since the epoch; a client-given timestamp is kept as given.
    assert before_us - 1_000_000 <= row.wa <= after_us + 1_000_000
    assert row.wb == explicit_us
    assert TTL_S - 60 <= row.ta <= TTL_S
    assert row.tb is None


def test_a_cell_whose_ttl_ran_out_reads_as_null_and_a_row_with_no_live_cell_is_gone(
    cassandra_session: Session, keyspace: str
) -> None:
    cassandra_session.execute(f"CREATE TABLE {keyspace}.t (id int PRIMARY KEY, a text, b int) "
                              "WITH cdc = true")
    cassandra_session.execute(f"INSERT INTO {keyspace}.t (id, a, b) VALUES (1, 'kept', 1)")
    cassandra_session.execute(f"UPDATE {keyspace}.t USING TTL 1 SET b = 2 WHERE id = 1")
    cassandra_session.execute(f"INSERT INTO {keyspace}.t (id, a) VALUES (2, 'brief') USING TTL 1")
    time.sleep(2.2)

    rows = {r.id: (r.a, r.b) for r in cassandra_session.execute(f"SELECT * FROM {keyspace}.t")}
    assert rows == {1: ("kept", None)}
