"""The decoder's native fast path (`native/src/lib.rs`, the `cdc_native` module).

The Python decoder (`operators/decode.py`) stays the reference. Each message it decodes into a
change event from a JSON envelope with schemas teaches this module a plan for the message's
topic: the exact schema bytes of its value and key, its table and columns. The topic's next
messages are tried against its plans first; a plan either gives the event (the same values the
Python decoder would give) or declines, and a declined message is decoded by Python, with its
DLQ record if it is bad. What a plan declines: other schema bytes (a new schema version), a
truncate, schema change or message op, a null Kafka key, a value that does not convert, JSON it
cannot read. Avro and schemaless JSON are not planned (the Python decoder handles them).

A planned event also carries its state key (`row_id`, for integer and string keys) and, for an
upsert with every column, its stage row for the writer (`copy_row`).

`decode_runs` goes one step further for a batch: a plain event (a state key, and a delete or an
upsert whose every column has a native `COPY` text) stays a native record, and a batch's records
of one topic and shard travel as one `Run` to the shard, which decides and stages them natively
(`operators/native_shard.py`). `run_events` makes a run's change events when Python needs them.
"""

from __future__ import annotations

import copyreg
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from operators.events import ChangeEvent, Op, RawMessage, TableSchema, raw_message
from operators.keys import state_key_prefix
from operators.pg_writer import stage_columns
from operators.settings import ConfigError
from schemas.debezium_types import FieldType

try:
    from cdc_native import FastPlan, Fetched, NativeBatch, Run
except ImportError:  # not built: FastPath() says how to build it or turn it off
    FastPlan = Fetched = NativeBatch = Run = None

_ENVELOPE_HEAD = b'{"schema":'
_MAX_PLANS_PER_TOPIC = 4  # topics whose messages alternate schema versions keep each plan


def native_kind(ft: FieldType) -> Any:
    """A column's kind for a plan: its converter's native twin, or the converter itself."""
    return ft.native or ft.convert


class NativeShape(NamedTuple):
    """What a plan is built from: a shape of the Python decoder. A column's kind is its
    `FieldType.native` twin, or the Python converter when it has none."""

    schema: TableSchema
    key: tuple[tuple[str, Any], ...]  # (name, kind)
    columns: tuple[tuple[str, Any, tuple[Any, ...]], ...]  # (name, kind, TOAST placeholder forms)


class _TopicPlan(NamedTuple):
    plan: FastPlan
    value_prefix: bytes
    key_prefix: bytes
    schema: TableSchema


class FastPath:
    """Plans per topic, most recently learned first."""

    def __init__(self) -> None:
        if FastPlan is None:
            raise ConfigError(
                "REPLICATE_NATIVE_DECODE: the native decoder is not installed: build it with "
                "`pip install ./native` (needs Rust's cargo), or set REPLICATE_NATIVE_DECODE=false")
        self._plans: dict[str, list[_TopicPlan]] = {}

    def decode(self, msg: RawMessage) -> ChangeEvent | None:
        """The change event, or None: the Python decoder decides."""
        plans = self._plans.get(msg.topic)
        if plans is None or msg.key is None or msg.value is None:
            return None
        return _decode_by(plans, msg)

    def decode_runs(self, messages: list[Any], shards: int,
                    reference: Callable[[RawMessage], Any]) -> tuple[list[tuple[int, Any]],
                                                                     list[list[Run]]]:
        """The runs of each shard, and `(position, decoded)` of every other message in order.

        `messages` are `Fetched` batches and `RawMessage`s (which become batches here). The
        newest plan of a batch's topic reads the batch at once, in parallel, without the
        interpreter lock; the older plans, then `reference` (the Python decoder), decode what it
        declines, in turn. A shard's events of one batch stay in offset order: where two plans
        (schema versions) made runs for one shard, their events are returned among the others
        instead, each in its place. A topic without a plan yet has its messages decoded by
        `reference` until one of them teaches it a plan, so even a topic's first batch mostly
        runs native.
        """
        others: list[tuple[int, Any]] = []
        runs: list[list[Run]] = [[] for _ in range(shards)]
        base = 0
        for batch in _fetched_batches(messages):
            others += self._decode_batch(batch, base, shards, reference, runs)
            base += len(batch)
        others.sort(key=_position)
        return others, runs

    def _decode_batch(self, batch: Fetched, base: int, shards: int,
                      reference: Callable[[RawMessage], Any], runs: list[list[Run]],
                      ) -> list[tuple[int, Any]]:
        """`decode_runs` of one batch: adds its runs to `runs`, returns its other messages."""
        topic = batch.topic
        others: list[tuple[int, Any]] = []
        indexes: list[int] | None = None  # what the next plan reads (None: the whole batch);
        # after the first plan, always a list
        if topic not in self._plans:  # the Python decoder may learn one from any message
            for index in range(len(batch)):
                others.append((base + index, reference(raw_message(batch, index))))
                if topic in self._plans:
                    break
            indexes = list(range(index + 1, len(batch)))
            if not indexes:
                return others
        made: list[list[Run]] = [[] for _ in range(shards)]  # this batch's runs, per shard
        for plan in self._plans[topic]:
            batch_runs, rest = plan.plan.decode_runs(batch, base, shards, indexes)
            for shard_runs, run in zip(made, batch_runs, strict=True):
                if run is not None:
                    shard_runs.append(run)
            indexes = []
            for position, parts in rest:
                if parts is None:
                    indexes.append(position - base)
                else:
                    offset = batch.offset(position - base)
                    others.append((position, _change_event(plan.schema, topic, batch.partition,
                                                           offset, parts)))
            if not indexes:
                break
        others += [(base + index, reference(raw_message(batch, index))) for index in indexes]
        for shard_runs, batch_runs in zip(runs, made, strict=True):
            if len(batch_runs) == 1:
                shard_runs += batch_runs
            else:  # runs of two plans interleave: their events go in offset order as Python's
                others += [pair for run in batch_runs for pair in run_events(run)]
        return others

    def newest(self) -> dict[str, FastPlan]:
        """Each topic's most recently learned plan."""
        return {topic: plans[0].plan for topic, plans in self._plans.items()}

    def learn(self, msg: RawMessage, value_prefix: bytes, key_prefix: bytes,
              shape: NativeShape) -> None:
        """`msg` was decoded by Python with `shape`; `value_prefix` and `key_prefix` are the
        envelope bytes before its payloads, when the schemas were recognised by their bytes."""
        if not (value_prefix.startswith(_ENVELOPE_HEAD) and key_prefix.startswith(_ENVELOPE_HEAD)
                and msg.value is not None and msg.value.startswith(value_prefix)
                and msg.key is not None and msg.key.startswith(key_prefix)):
            return
        plans = self._plans.setdefault(msg.topic, [])
        if any(p.value_prefix == value_prefix and p.key_prefix == key_prefix
               and p.schema is shape.schema for p in plans):
            return
        schema = shape.schema
        plan = FastPlan(value_prefix, key_prefix, state_key_prefix(schema.table),
                        list(shape.key), list(shape.columns),
                        list(stage_columns(schema.key, tuple(c.name for c in schema.columns))),
                        schema)
        plans.insert(0, _TopicPlan(plan, value_prefix, key_prefix, shape.schema))
        del plans[_MAX_PLANS_PER_TOPIC:]


def _decode_by(plans: list[_TopicPlan], msg: RawMessage) -> ChangeEvent | None:
    """The event of the first plan that decodes `msg`, or None."""
    for plan in plans:
        parts = plan.plan.decode(msg.value, msg.key)
        if parts is not None:
            return _event(plan.schema, msg, parts)
    return None


class RunEvents(list):
    """A run's change events: what a run becomes when bytewax sends it to another process
    (it pickles what it sends, and a run refers to its process's plan)."""


def _pickled_run(run: Run) -> tuple[type[RunEvents], tuple[list[ChangeEvent]]]:
    return RunEvents, ([event for _, event in run_events(run)],)


if Run is not None:
    copyreg.pickle(Run, _pickled_run)


def _position(pair: tuple[int, Any]) -> int:
    return pair[0]


def _fetched_batches(messages: list[Any]) -> Iterator[Fetched]:
    """`messages` as `Fetched` batches: consecutive `RawMessage`s of a partition become one."""
    group: list[RawMessage] = []
    for item in messages:
        if group and (type(item) is not RawMessage or item.topic != group[0].topic
                      or item.partition != group[0].partition):
            yield _fetched(group)
            group = []
        if type(item) is RawMessage:
            group.append(item)
        else:
            yield item
    if group:
        yield _fetched(group)


def _fetched(messages: list[RawMessage]) -> Fetched:
    first = messages[0]
    return Fetched(first.topic, first.partition, [(m.offset, m.key, m.value) for m in messages])


def run_events(run: Run) -> list[tuple[int, ChangeEvent]]:
    """`(position in its decode batch, change event)` of each record of `run`."""
    schema, topic = run.schema, run.topic
    return [(position, _change_event(schema, topic, partition, offset, parts))
            for position, partition, offset, parts in run.events()]


def _event(schema: TableSchema, msg: RawMessage, parts: tuple) -> ChangeEvent:
    return _change_event(schema, msg.topic, msg.partition, msg.offset, parts)


def _change_event(schema: TableSchema, topic: str, partition: int, offset: int,
                  parts: tuple) -> ChangeEvent:
    deleted, version, key, values, row_id, copy_row = parts
    return ChangeEvent(schema.table, schema.key, key, Op.DELETE if deleted else Op.UPSERT,
                       version, values, schema, topic, partition, offset, row_id or b"",
                       copy_row)
