"""What the source parts of this process tell the metrics and the readiness check.

A source part calls `SourceWatch.note` at most every `NOTE_INTERVAL_S` (not per message): its
partition's end offset as the consumer last heard it (for `replicate_lag_messages`, which
`operators/health.py` sets against the committed offsets in Postgres) and the source change time
of the first message of the batch it just read, when the message carries one. A commit that
moves the partition's offset past that message observes the time since the change in
`replicate_end_to_end_seconds`: a sample per partition per interval, taken at the oldest message
of a batch, and timed to the first commit (of any shard of this process) past it, which for
the other shards' events of the partition comes a little early.

The change time is `source.ts_us`, `ts_ns` or `ts_ms` of a JSON message (Debezium's envelope,
with or without Connect schemas); an Avro or otherwise unreadable message gives no sample.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

from operators.events import ProgressMarker, RawMessage, raw_message
from operators.metrics import END_TO_END_SECONDS

if TYPE_CHECKING:
    from operators.pg_writer import ShardBatch

NOTE_INTERVAL_S = 0.1
MAX_SAMPLES = 3000  # per partition: 5 minutes of samples without a commit past them
Position = tuple[str, int]
_UNITS = (("ts_us", 1e6), ("ts_ns", 1e9), ("ts_ms", 1e3))  # per second


def change_time(value: bytes | None) -> float | None:
    """The source change time of a Debezium JSON message, in seconds since the epoch."""
    if not value or value[:1] != b"{":
        return None
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    payload = doc.get("payload") if isinstance(doc.get("payload"), dict) else doc
    source = payload.get("source")
    if not isinstance(source, dict):
        return None
    for name, per_second in _UNITS:
        ts = source.get(name)
        if isinstance(ts, int) and not isinstance(ts, bool):
            return ts / per_second
    return None


def _first_message(items: list[Any]) -> RawMessage | None:
    for item in items:
        if type(item) is RawMessage:
            return item
        if type(item) is not ProgressMarker and len(item):  # a `cdc_native.Fetched` batch
            return raw_message(item, 0)
    return None


class SourceWatch:
    """The partitions this process reads, their end offsets and change-time samples."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.expected: set[Position] | None = None  # the flow's partitions, once listed
        self._open: set[Position] = set()
        self._ends: dict[Position, int] = {}
        self._samples: dict[Position, deque[tuple[int, float]]] = {}  # (offset, change time)

    def expect(self, partitions: Iterable[Position]) -> None:
        """The flow's source listed its partitions: the dataflow runs in this process."""
        self.expected = set(partitions)

    def opened(self, topic: str, partition: int) -> None:
        with self._lock:
            self._open.add((topic, partition))

    def closed(self, topic: str, partition: int) -> None:
        with self._lock:
            self._open.discard((topic, partition))
            self._ends.pop((topic, partition), None)
            self._samples.pop((topic, partition), None)

    def open_partitions(self) -> set[Position]:
        with self._lock:
            return set(self._open)

    def ends(self) -> dict[Position, int]:
        """End offsets of the open partitions, as their parts last noted them."""
        with self._lock:
            return dict(self._ends)

    def note(self, topic: str, partition: int, items: list[Any], end: int | None) -> None:
        """A source part's periodic report: `items` it just read, its partition's `end`."""
        message = _first_message(items)
        changed = None if message is None else change_time(message.value)
        with self._lock:
            if end is not None:
                self._ends[(topic, partition)] = end
            if changed is not None:
                self._samples.setdefault((topic, partition), deque(maxlen=MAX_SAMPLES)).append(
                    (message.offset, changed))  # type: ignore[union-attr]

    def committed(self, batches: list[ShardBatch]) -> None:
        """Observe the samples that `batches` (committed `ShardBatch`es) moved past."""
        now = time.time()
        with self._lock:
            for position, samples in self._samples.items():
                if not samples:
                    continue
                reached = max((b.offsets.get(position, -1) for b in batches), default=-1)
                while samples and samples[0][0] < reached:
                    END_TO_END_SECONDS.observe(max(0.0, now - samples.popleft()[1]))


WATCH = SourceWatch()
