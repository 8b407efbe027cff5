"""The snapshots each topic partition holds: where a snapshot's rows start, and the source
position they were read at (`SourceDialect.snapshot_point`).

A Postgres change streamed without `source.sequence[0]` (the first transaction after the
connector's snapshot) ranks after the latest snapshot before it in its partition
(docs/architecture.md, "Versions"). That is a fact about the topic's content, not about how far
the flow got, so it is kept in `cdc.snapshot_points` apart from the offsets: recorded before the
batch that showed it goes on (a restart between the snapshot rows and that transaction reads it
back), and looked up by offset, so a replayed older change ranks after its own snapshot, not a
later one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from operators.pg_session import connect
from operators.retry import retrying
from operators.settings import Settings

Point = tuple[str, int, int, int]  # topic, partition, first offset, snapshot position


class SnapshotPoints:
    """Per (topic, partition): `{snapshot position: offset of its first row seen}`; `load`
    (called once, on the first lookup) gives the points recorded before."""

    def __init__(self, load: Callable[[], Iterable[Point]] | None = None) -> None:
        self._load = load
        self._points: dict[tuple[str, int], dict[int, int]] = {}
        self._new: dict[tuple[str, int, int], int] = {}  # (topic, partition, point) → offset

    def saw(self, topic: str, partition: int, offset: int, point: int) -> None:
        """A snapshot row read at `point` is at `offset`."""
        if self._merge(topic, partition, offset, point):
            self._new[(topic, partition, point)] = offset

    def before(self, topic: str, partition: int, offset: int) -> int:
        """The position of the latest snapshot whose rows start at or before `offset`; 0 if
        none."""
        if self._load is not None:
            load, self._load = self._load, None
            for known in load():
                self._merge(*known)
        points = self._points.get((topic, partition), {})
        return max((point for point, first in points.items() if first <= offset), default=0)

    def take_new(self) -> list[Point]:
        """The points seen since the last call (to record them)."""
        new = [(topic, partition, offset, point)
               for (topic, partition, point), offset in self._new.items()]
        self._new.clear()
        return new

    def _merge(self, topic: str, partition: int, offset: int, point: int) -> bool:
        """Whether this lowered (or made) the point's first offset."""
        points = self._points.setdefault((topic, partition), {})
        if points.get(point, offset + 1) <= offset:
            return False
        points[point] = offset
        return True


def stored_points(settings: Settings) -> SnapshotPoints:
    """The flow's points, read from `cdc.snapshot_points` on the first lookup."""

    def load() -> list[Point]:
        with connect(settings.pg_dsn) as conn:
            return [(topic, partition, offset, int(point)) for topic, partition, offset, point in
                    conn.execute("SELECT topic, partition, first_offset, point "
                                 "FROM cdc.snapshot_points WHERE flow_id = %s",
                                 (settings.flow_id,))]

    return SnapshotPoints(lambda: retrying("read snapshot points", load,
                                           cap_s=settings.retry_max_s))


def record_new_points(points: SnapshotPoints, settings: Settings) -> None:
    """Record the points seen since the last call; a repeat keeps the lowest first offset."""
    new = points.take_new()
    if not new:
        return

    def record() -> None:
        with connect(settings.pg_dsn) as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO cdc.snapshot_points (flow_id, topic, partition, first_offset, point) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (flow_id, topic, partition, point) DO "
                "UPDATE SET first_offset = LEAST(cdc.snapshot_points.first_offset, "
                "EXCLUDED.first_offset)", [(settings.flow_id, *point) for point in new])

    retrying("record snapshot points", record, cap_s=settings.retry_max_s)
