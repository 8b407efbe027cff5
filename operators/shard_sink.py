"""The shard sink: one bytewax sink part per shard, committed by the worker's committer.

See `operators/shard.py` (a shard's state and LWW step) and `operators/committer.py` (one
Postgres transaction for all of a worker's shards).
"""

from __future__ import annotations

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from operators.committer import Committer, thread_committer
from operators.events import ShardItem
from operators.settings import Settings
from operators.shard import Shard
from operators.state_store import ShardStateStore, StoreMemory

PART_PREFIX = "shard-"


def shard_part_name(shard: int) -> str:
    """Zero-padded so bytewax's ordered partition list is in shard order."""
    return f"{PART_PREFIX}{shard:05d}"


def shard_number(part_name: str) -> int:
    """The shard a sink part name (`shard_part_name`) stands for."""
    return int(part_name[len(PART_PREFIX):])


class ShardPartition(StatefulSinkPartition[list[ShardItem], None]):
    def __init__(self, settings: Settings, number: int) -> None:
        memory = StoreMemory(settings.state_cache_mb, settings.state_write_buffer_mb)
        store = ShardStateStore(
            settings.state_dir / settings.flow_id / shard_part_name(number), memory)
        self.shard = Shard(number, store, settings.flow_id, settings.shards,
                           settings.native_decode)
        self._committer: Committer = thread_committer(settings)
        self._committer.register(self.shard)

    def write_batch(self, values: list[list[ShardItem]]) -> None:
        accept, committer = self.shard.accept, self._committer
        units = sum(accept(items) for items in values)
        if self.shard.pending.since is not None:
            committer.accepted(units)
        for items in values:
            committer.track_sources(self.shard, items)
        committer.commit_if_due()

    def snapshot(self) -> None:
        self._committer.commit_all(wait=True)

    def close(self) -> None:
        self._committer.commit_all(wait=True)
        self._committer.unregister(self.shard)
        self.shard.close()


class ShardSink(FixedPartitionedSink[list[ShardItem], None]):
    """`(shard part name, items)` pairs in."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def list_parts(self) -> list[str]:
        return [shard_part_name(k) for k in range(self._settings.shards)]

    def part_fn(self, item_key: str) -> int:
        return shard_number(item_key)

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> ShardPartition:
        return ShardPartition(self._settings, shard_number(for_part))
