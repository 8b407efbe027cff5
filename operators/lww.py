"""Last-write-wins decisions for one batch of change events: pure logic, no I/O.

For each event, in arrival order, compare its version with the key's current version (from the
state store, or from an earlier event of the same batch) and with the table's truncate floor:
greater → applied, equal → duplicate, lower (or at/below the floor) → stale. The batch resolves to
one row write per key (the last applied image, merged over earlier applied images so that columns
missing from a partial image keep their value).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple

from operators.events import ChangeEvent, Op, TableName


class KeyState(NamedTuple):
    """What a shard remembers about one key: the applied version and whether it is deleted."""

    version: bytes
    deleted: bool


class Outcome(Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"


STALE_OLDER = "older than the applied version"
STALE_DELETED = "older than the delete that removed the row"
STALE_TRUNCATED = "at or below a table truncate"


def judge(current: KeyState | None, floor: bytes | None, version: bytes) -> tuple[Outcome, str]:
    """The outcome of one event of `version` given the key's state and its table's floor."""
    if floor is not None and version <= floor and (current is None or current.version <= floor):
        return Outcome.STALE, STALE_TRUNCATED
    if current is None or version > current.version:
        return Outcome.APPLIED, ""
    if version == current.version:
        return Outcome.DUPLICATE, ""
    return Outcome.STALE, STALE_DELETED if current.deleted else STALE_OLDER


@dataclass(slots=True)
class RowWrite:
    """The single write a batch makes for one key: an upsert with merged values, or a delete."""

    event: ChangeEvent
    op: Op
    version: bytes
    values: dict[str, Any] | None


@dataclass(slots=True)
class StaleEvent:
    """An event that lost to the key's applied version or its table's truncate: its audit row."""

    topic: str
    partition: int
    offset: int
    table: TableName
    row_id: bytes
    version: bytes
    applied_version: bytes
    reason: str


@dataclass(slots=True)
class BatchDecision:
    writes: dict[bytes, RowWrite] = field(default_factory=dict)
    stale: list[StaleEvent] = field(default_factory=list)
    duplicates: int = 0
    applied: int = 0
    new_states: dict[bytes, KeyState] = field(default_factory=dict)
    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)  # for metrics:
    # events by (table, op, outcome), `operators/metrics.py` labels


def decide_batch(
    events: list[ChangeEvent],
    states: dict[bytes, KeyState | None],
    floors: dict[str, bytes],
) -> BatchDecision:
    """Resolve a batch. `events` in arrival order; `states` holds the stored state of every
    key (`row_id`) in the batch; `floors` the truncate floor per table name."""
    decision = BatchDecision()
    current = dict(states)
    not_applied: dict[tuple[TableName, Op, Outcome], int] = {}  # rare: counted one by one
    for event in events:
        skey = event.row_id
        floor = floors.get(str(event.table)) if floors else None
        state = current.get(skey)
        if floor is None and (state is None or event.version > state.version):
            outcome = Outcome.APPLIED  # the common case, without a call
        else:
            outcome, reason = judge(state, floor, event.version)
        if outcome is not Outcome.APPLIED:
            tally = (event.table, event.op, outcome)
            not_applied[tally] = not_applied.get(tally, 0) + 1
        if outcome is Outcome.DUPLICATE:
            decision.duplicates += 1
            continue
        if outcome is Outcome.STALE:
            above_floor = state is not None and state.version > (floor or b"")
            applied = state.version if above_floor else floor  # type: ignore[union-attr]
            decision.stale.append(StaleEvent(event.topic, event.partition, event.offset,
                                             event.table, skey, event.version, applied or b"",
                                             reason))
            continue
        decision.applied += 1
        deleted = event.op is Op.DELETE
        current[skey] = decision.new_states[skey] = KeyState(event.version, deleted)
        previous = decision.writes.get(skey)
        if deleted:  # keeps the batch's last image: a soft delete leaves it in the row
            values = previous.values if previous is not None else None
        elif (previous is not None and previous.op is Op.UPSERT
              and not (previous.values or {}).keys() <= (event.values or {}).keys()):
            values = {**(previous.values or {}), **(event.values or {})}
        else:  # shared with the event, never modified (the writer may then use its COPY row)
            values = event.values
        decision.writes[skey] = RowWrite(event, event.op, event.version, values)
    decision.counts = _counts(events, not_applied)
    return decision


def _counts(events: list[ChangeEvent], not_applied: dict[tuple[TableName, Op, Outcome], int],
            ) -> dict[tuple[str, str, str], int]:
    """Events by (table, op, outcome): every event counted by (table, op) at C speed
    (`Counter`), less those that were not applied."""
    counts: dict[tuple[str, str, str], int] = {}
    for (table, op), events_of in Counter((e.table, e.op) for e in events).items():
        counts[(str(table), op.name.lower(), Outcome.APPLIED.value)] = events_of
    for (table, op, outcome), events_of in not_applied.items():
        name, op_name = str(table), op.name.lower()
        counts[(name, op_name, Outcome.APPLIED.value)] -= events_of
        counts[(name, op_name, outcome.value)] = events_of
    return counts
