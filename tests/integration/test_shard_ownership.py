"""A shard's commit is its sequence number and a random id, in RocksDB and in
`cdc.shard_commits`: two owners of one shard cannot both commit, and a store whose commit N is not
the commit N Postgres holds is not trusted."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from benchmarks.replicator_run import drop_flows
from operators.keys import state_key
from operators.lww import KeyState
from operators.pg_writer import ShardOwnershipError, new_commit_id
from operators.settings import Settings
from operators.shard_sink import ShardPartition
from operators.state_store import ShardStateStore
from operators.versions import pg_version
from tests.integration.test_shard_sink import TOPIC, Things, rows

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(pg_dsn, tmp_path):
    name = f"own{uuid.uuid4().hex[:10]}"
    yield Settings(topics=TOPIC, pg_dsn=pg_dsn, state_dir=tmp_path / "a", flow_id=name,
                   target_schema=name, shards=1)
    drop_flows(pg_dsn, name)


@pytest.fixture
def other_host(settings, tmp_path) -> Settings:
    """The same flow on another host: its own state directory."""
    return settings.model_copy(update={"state_dir": tmp_path / "b"})


def shard_commit(settings: Settings) -> tuple[int, bytes]:
    with psycopg.connect(settings.pg_dsn) as conn:
        return conn.execute("SELECT seq, commit_id FROM cdc.shard_commits WHERE flow_id = %s",
                            (settings.flow_id,)).fetchone()


def store_of(settings: Settings) -> ShardStateStore:
    return ShardStateStore(settings.state_dir / settings.flow_id / "shard-00000")


def test_a_second_owner_of_a_shard_fails_loudly_instead_of_committing(settings, other_host):
    things = Things(settings.target_schema)
    with ThreadPoolExecutor(1) as host_b:  # another worker: its own connection and committer
        first = ShardPartition(settings, 0)
        second = host_b.submit(ShardPartition, other_host, 0).result()
        first.write_batch([[things.event(1, 10)]])
        first.snapshot()
        committed = shard_commit(settings)
        host_b.submit(second.write_batch, [[things.event(1, 20)]]).result()
        with pytest.raises(ShardOwnershipError, match="another process committed"):
            host_b.submit(second.snapshot).result()
        assert shard_commit(settings) == committed
        assert rows(settings.pg_dsn, things.table) == {1: ("v10", 1)}
        first.write_batch([[things.event(2, 30)]])  # the first owner goes on
        first.close()
        assert rows(settings.pg_dsn, things.table) == {1: ("v10", 1), 2: ("v30", 1)}
        host_b.submit(second.shard.close).result()
        reopened = host_b.submit(ShardPartition, other_host, 0).result()  # rebuilt: in step
        assert reopened.shard._store.get_many([state_key(things.table, (2,))]) == [
            KeyState(pg_version(0, 30), False)]
        host_b.submit(reopened.close).result()


def another_owner_committed(settings: Settings, other_host: Settings,
                            own_commits: int) -> tuple[Things, bytes]:
    """Host B's store holds `own_commits` commits of its own to key 1 (versions 99, 98, ...)
    that never reached Postgres; host A then commits its own commit 1 (key 1 at version 10)."""
    things = Things(settings.target_schema)
    key = state_key(things.table, (1,))
    store = store_of(other_host)
    before = None
    for seq in range(1, own_commits + 1):
        state = KeyState(pg_version(0, 100 - seq), False)
        store.commit(seq, new_commit_id(), {key: state}, {}, {key: before})
        before = state
    store.close()
    first = ShardPartition(settings, 0)
    first.write_batch([[things.event(1, 10)]])
    first.close()
    return things, key


def test_a_state_at_the_right_seq_but_another_commit_is_rebuilt(settings, other_host):
    """Host B wrote commit 1 to RocksDB and died before its COMMIT; host A committed its own 1."""
    things, key = another_owner_committed(settings, other_host, own_commits=1)
    with ThreadPoolExecutor(1) as host_b:
        second = host_b.submit(ShardPartition, other_host, 0).result()
        assert second.shard._store.get_many([key]) == [KeyState(pg_version(0, 10), False)]
        # stale against the untrusted state
        host_b.submit(second.write_batch, [[things.event(1, 20)]]).result()
        host_b.submit(second.close).result()
    assert rows(settings.pg_dsn, things.table) == {1: ("v20", 1)}


def test_a_state_one_ahead_of_another_owners_commit_is_rebuilt_not_rolled_back(settings,
                                                                              other_host):
    """Host B's store is at its own commit 2 over its own commit 1; Postgres holds host A's 1:
    undoing B's commit 2 would leave B's commit 1, which Postgres never had."""
    _, key = another_owner_committed(settings, other_host, own_commits=2)
    with ThreadPoolExecutor(1) as host_b:
        second = host_b.submit(ShardPartition, other_host, 0).result()
        assert second.shard._store.get_many([key]) == [KeyState(pg_version(0, 10), False)]
        host_b.submit(second.close).result()
