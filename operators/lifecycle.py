"""Stopping on SIGTERM/SIGINT.

A stop abandons the batch in flight: its Postgres transaction rolls back when the connection
closes, and the next start repairs the shard's RocksDB state from its undo record and replays the
uncommitted offsets. Exactly-once makes this as safe as finishing the batch, and it never blocks a
stop behind a slow or unreachable Postgres.
"""

from __future__ import annotations

import logging
import os
import signal
from types import FrameType

log = logging.getLogger(__name__)


def _stop(signum: int, _frame: FrameType | None) -> None:
    log.info("%s received: stopping; uncommitted work will be replayed on the next start",
             signal.Signals(signum).name)
    logging.shutdown()
    os._exit(0)


def install_stop_handlers() -> None:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
