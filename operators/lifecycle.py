"""Process setup: stopping on SIGTERM/SIGINT or on a setting found unusable while running, the
garbage collector's pace, malloc arenas.

A stop abandons the batch in flight: its Postgres transaction rolls back when the connection
closes, and the next start repairs the shard's RocksDB state from its undo record and replays the
uncommitted offsets. Exactly-once makes this as safe as finishing the batch, and it never blocks a
stop behind a slow or unreachable Postgres.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import sys
from types import FrameType
from typing import NoReturn

log = logging.getLogger(__name__)
# Collect the youngest generation every 200k new container objects instead of 700: every event
# allocates a handful of dicts and tuples, and with Python's default each collection re-walks the
# events still in flight. Measured: about 12% less CPU per message (docs/performance.md).
GC_THRESHOLDS = (200_000, 50, 100)
# glibc gives each thread that allocates its own malloc arena (up to 8 per core), and librdkafka,
# RocksDB, psycopg and bytewax run a dozen threads: freed memory stays in each arena. Two arenas,
# what MALLOC_ARENA_MAX=2 sets, lower the peak RSS (docs/performance.md).
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt parameter number in glibc's malloc.h


def _stop(signum: int, _frame: FrameType | None) -> None:
    log.info("%s received: stopping; uncommitted work will be replayed on the next start",
             signal.Signals(signum).name)
    logging.shutdown()
    os._exit(0)


def stop_for_setting(message: str) -> NoReturn:
    """Stop the process with status 2, as an unusable setting does at start, for one found only
    in the input (e.g. a connector writing no row images): one line naming the setting, and no
    restart by the supervisor, since every restart would stop at the same message. Nothing of
    the batch in flight was committed (as for a stop)."""
    print(f"replicate: {message}", file=sys.stderr, flush=True)
    logging.shutdown()
    os._exit(2)


def install_stop_handlers() -> None:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)


def tune_gc() -> None:
    gc.set_threshold(*GC_THRESHOLDS)


def limit_malloc_arenas() -> bool:
    """Cap glibc's malloc arenas before the first native thread starts, unless MALLOC_ARENA_MAX
    already chose; without glibc (musl, macOS) there is nothing to do. True when capped here."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return libc.mallopt(_M_ARENA_MAX, MALLOC_ARENAS) == 1
