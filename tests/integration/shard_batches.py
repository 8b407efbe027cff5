"""Feed a shard sink batch by batch, reopening it (or losing its state) between batches."""

from __future__ import annotations

import shutil
from collections.abc import Sequence

from operators.events import ShardItem
from operators.settings import Settings
from operators.shard_sink import ShardPartition


def write_in_batches(config: Settings, batches: Sequence[list[ShardItem]],
                     restarts: Sequence[str]) -> None:
    """Write each batch in its own `write_batch` and snapshot; after batch i, the action
    `restarts[i % len(restarts)]`: "keep", "reopen", or "lose state" (the state directory is
    deleted, so the shard rebuilds it from Postgres)."""
    shard = ShardPartition(config, 0)
    for i, batch in enumerate(batches):
        shard.write_batch([batch])
        shard.snapshot()
        action = restarts[i % len(restarts)]
        if action != "keep":
            shard.close()
            if action == "lose state":
                shutil.rmtree(config.state_dir, ignore_errors=True)
            shard = ShardPartition(config, 0)
    shard.close()
