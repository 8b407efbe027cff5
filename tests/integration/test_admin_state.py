"""`replicate state rebuild` on a real flow's state: a lost and a tampered shard come back equal
to the state the flow had written, and the flow goes on from it, exactly once, without rebuilding
again."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import rocksdict

from benchmarks.replicator_run import Run, assert_matches_oracle
from operators.shard_sink import shard_part_name
from tests.integration.admin_cli import replicate

pytestmark = pytest.mark.integration
SHARDS = 3
UNDO_KEY = b"\x00meta:undo"  # the last commit's undo record: not state, and not rebuilt


@pytest.fixture
def run(kafka_bootstrap, pg_dsn, tmp_path):
    run = Run(kafka_bootstrap, pg_dsn, tmp_path / "state", shards=SHARDS)
    yield run
    run.cleanup()


def shard_dir(run: Run, shard: int) -> Path:
    return run.state_dir / run.flow_id / shard_part_name(shard)


def dump(run: Run, shard: int) -> dict[bytes, bytes]:
    """Every key of a shard's store but its undo record."""
    db = rocksdict.Rdict(str(shard_dir(run, shard)), rocksdict.Options(raw_mode=True))
    try:
        return {k: v for k, v in db.items() if k != UNDO_KEY}
    finally:
        db.close()


def test_state_rebuild_restores_lost_and_tampered_shards_and_the_flow_goes_on(run):
    quiet = dict(out_of_order_pct=0.0, late_after_delete_pct=0.0)  # no stale audit rows: two
    # workloads on one flow then each equal their oracle
    workload = run.make_workload(seed=8, events=1_500, keys=300, tables=("customers", "orders"),
                                 partitions=2, deletes_pct=10.0, **quiet)
    assert workload.oracle.deleted and not workload.oracle.stale
    run.start()
    run.wait_caught_up(workload)
    assert run.stop() == [0]
    before = [dump(run, shard) for shard in range(SHARDS)]
    assert all(len(state) > 50 for state in before)

    shutil.rmtree(shard_dir(run, 0))
    tampered = rocksdict.Rdict(str(shard_dir(run, 1)), rocksdict.Options(raw_mode=True))
    first_key = next(k for k in before[1] if not k.startswith(b"\x00"))
    tampered[first_key] = b"L\x00"  # a version below every real one
    tampered[b"public.ghost\x00[1]"] = b"L\xff"
    tampered.close()

    one = replicate(run, "--json", "state", "rebuild", "--shard", "0")
    assert one.code == 0, one.err
    assert [(s["shard"], s["keys"]) for s in one.json()["shards"]] == [
        (0, len([k for k in before[0] if not k.startswith(b"\x00")]))]
    assert "shard 0:" in one.err  # progress, on stderr beside the JSON
    assert dump(run, 0) == before[0]
    assert dump(run, 1) != before[1]

    every = replicate(run, "state", "rebuild")
    assert every.code == 0, every.err
    assert f"rebuilt {SHARDS} shard(s)" in every.out
    assert [dump(run, shard) for shard in range(SHARDS)] == before

    later = run.make_workload(seed=9, events=500, keys=100, tables=("items",), partitions=2,
                              **quiet)
    run.start()
    run.wait_caught_up(later)
    assert run.stop() == [0]
    assert_matches_oracle(run, workload)
    assert_matches_oracle(run, later)
    assert "rebuilding from Postgres" not in run.log_tail(200), "the rebuilt state was not used"
