"""`replicate state rebuild [--shard S]`: rebuild shards' RocksDB state from Postgres.

For a stopped flow, on the host that runs the shards: each shard's store under
`REPLICATE_STATE_DIR/<flow>/` is wiped and loaded with what Postgres committed (the rows'
versions, tombstones and truncate floors, `operators/rebuild.py`), marked with the commit
`cdc.shard_commits` holds, so the next start finds it in step. This is what a shard does by
itself at start when its store is missing or out of step; the command does it on purpose (a
suspect disk) and ahead of the start.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from typing import TypeVar

from flows.admin_common import AdminError, Output, command, open_store, progress, stopped_flow
from operators.offsets import shard_commit
from operators.rebuild import committed_floors, committed_states
from operators.settings import Settings

T = TypeVar("T")


def _counted(items: Iterator[T], counter: list[int]) -> Iterator[T]:
    """`items`, counted into `counter[0]` as they pass."""
    for item in items:
        counter[0] += 1
        yield item


def rebuild(args: argparse.Namespace, settings: Settings) -> Output:
    shards = range(settings.shards) if args.shard is None else [args.shard]
    if args.shard is not None and not 0 <= args.shard < settings.shards:
        raise AdminError(f"--shard {args.shard}: the flow has shards 0 to {settings.shards - 1}")
    done = []
    with stopped_flow(settings) as conn:
        floors = committed_floors(conn, settings.flow_id)
        for shard in shards:
            started = time.monotonic()
            store = open_store(settings, shard)
            try:
                store.clear()
                keys = [0]
                with conn.transaction():
                    seq, commit_id = shard_commit(conn, settings.flow_id, shard)
                    store.load(seq, commit_id, _counted(
                        committed_states(conn, settings.flow_id, shard, settings.shards), keys),
                        floors)
            finally:
                store.close()
            done.append({"shard": shard, "seq": seq, "keys": keys[0],
                         "seconds": round(time.monotonic() - started, 3)})
            progress(args, f"shard {shard}: {keys[0]} keys at commit {seq} "
                           f"({done[-1]['seconds']:.1f} s)")
    data = {"flow_id": settings.flow_id, "shards": done}
    return Output(data, [f"flow {settings.flow_id}: rebuilt {len(done)} shard(s), "
                         f"{sum(d['keys'] for d in done)} keys"])


def add_command(sub: argparse._SubParsersAction) -> None:
    state = sub.add_parser("state", help="the shards' local RocksDB state")
    actions = state.add_subparsers(dest="state_command", required=True)
    parser = actions.add_parser("rebuild", help="rebuild state from Postgres (flow stopped)")
    parser.add_argument("--shard", type=int, help="one shard (default: every shard)")
    parser.set_defaults(handler=command("state rebuild", rebuild))
