"""Resident memory of shard state vs number of distinct keys (DESIGN invariant 6).

Opens `--shards` state stores in one process, as the replicator does, commits `--keys` distinct
keys through them in batches, and prints one JSON line per checkpoint with the keys written and
the process's resident memory. Used by tests/integration/test_memory.py and the benchmarks.

    python -m benchmarks.state_memory --keys 1000000 --dir /tmp/state
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import orjson

from operators.events import TableName
from operators.keys import shard_of, state_key
from operators.lww import KeyState
from operators.pg_writer import new_commit_id
from operators.state_store import ShardStateStore
from operators.versions import pg_version


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure(keys: int, shards: int, directory: Path, batch: int = 5000,
            checkpoints: int = 10) -> list[dict[str, int]]:
    stores = [ShardStateStore(directory / f"shard-{k:05d}") for k in range(shards)]
    table = TableName("public", "customers")
    every = max(batch, keys // checkpoints)
    results = [{"keys": 0, "rss": rss_bytes()}]
    for start in range(0, keys, batch):
        per_shard: list[dict[bytes, KeyState]] = [{} for _ in range(shards)]
        for key in range(start, min(keys, start + batch)):
            skey = state_key(table, (key,))
            per_shard[shard_of(skey, shards)][skey] = KeyState(pg_version(0, key + 1), False)
        for store, states in zip(stores, per_shard, strict=True):
            if states:
                store.commit(store.seq + 1, new_commit_id(), states, {}, dict.fromkeys(states))
        done = min(keys, start + batch)
        if done % every == 0 or done == keys:
            results.append({"keys": done, "rss": rss_bytes()})
            print(orjson.dumps(results[-1]).decode(), flush=True)
    for store in stores:
        store.close()
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=64)
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        measure(args.keys, args.shards, args.dir or Path(scratch))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
