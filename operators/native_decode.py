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

ScyllaDB's legacy format has plans of its own (`CellPlan`, `native/src/cell_decode.rs`), learned
the same way from the `CellChange`s the Python decoder makes (`learn_cells`): a topic's cell plans
are among its plans, and their records travel as `CellRun`s in the same per-shard lists, whose
`CellChange`s `run_events` gives back. The source's consumer is taught Debezium plans only.
"""

from __future__ import annotations

import copyreg
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from operators.events import ChangeEvent, Op, RawMessage, TableSchema, raw_message
from operators.keys import state_key_prefix
from operators.pg_writer import stage_columns
from operators.settings import ConfigError
from schemas.cql_types import CqlType
from schemas.cql_types import native_kind as cql_native_kind
from schemas.debezium_types import FieldType

if TYPE_CHECKING:  # formats.cells imports operators
    from formats.cells import CellChange

try:
    from cdc_native import CellPlan, CellRun, FastPlan, Fetched, NativeBatch, Run
except ImportError:  # not built: FastPath() says how to build it or turn it off
    CellPlan = CellRun = FastPlan = Fetched = NativeBatch = Run = None

_ENVELOPE_HEAD = b'{"schema":'
_MAX_PLANS_PER_TOPIC = 4  # topics whose messages alternate schema versions keep each plan
_NATIVE_CELL_CHANGES = ("write", "row_delete")  # the `CellKind`s a `CellRun` holds
_NATIVE_KEY_KINDS = ("int", "str")  # key values a state key is made of natively
_MAX_UNPLANNED = 1024


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
    plan: FastPlan | CellPlan
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
        self._unplanned: set[tuple[str, bytes, bytes]] = set()  # cell schemas without a plan

    def decode(self, msg: RawMessage) -> ChangeEvent | None:
        """The change event, or None: the Python decoder decides."""
        plans = self._plans.get(msg.topic)
        if plans is None or msg.key is None or msg.value is None:
            return None
        return _decode_by(plans, msg)

    def decode_runs(self, messages: list[Any], shards: int,
                    reference: Callable[[RawMessage], Any],
                    ) -> tuple[list[tuple[int, Any]], list[list[Run | CellRun]]]:
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
        runs: list[list[Run | CellRun]] = [[] for _ in range(shards)]
        base = 0
        for batch in _fetched_batches(messages):
            others += self._decode_batch(batch, base, shards, reference, runs)
            base += len(batch)
        others.sort(key=_position)
        return others, runs

    def _decode_batch(self, batch: Fetched, base: int, shards: int,
                      reference: Callable[[RawMessage], Any],
                      runs: list[list[Run | CellRun]]) -> list[tuple[int, Any]]:
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
        made: list[list[Run | CellRun]] = [[] for _ in range(shards)]  # this batch's, per shard
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
        """Each topic's most recently learned Debezium plan (what the consumer is taught)."""
        newest: dict[str, FastPlan] = {}
        for topic, plans in self._plans.items():
            plan = next((p.plan for p in plans if type(p.plan) is FastPlan), None)
            if plan is not None:
                newest[topic] = plan
        return newest

    def learn(self, msg: RawMessage, value_prefix: bytes, key_prefix: bytes,
              shape: NativeShape) -> None:
        """`msg` was decoded by Python with `shape`; `value_prefix` and `key_prefix` are the
        envelope bytes before its payloads, when the schemas were recognised by their bytes."""
        if not _enveloped(msg, value_prefix, key_prefix) or self._known(
                msg.topic, value_prefix, key_prefix, shape.schema):
            return
        schema = shape.schema
        plan = FastPlan(value_prefix, key_prefix, state_key_prefix(schema.table),
                        list(shape.key), list(shape.columns),
                        list(stage_columns(schema.key, tuple(c.name for c in schema.columns))),
                        schema)
        self._add(msg.topic, _TopicPlan(plan, value_prefix, key_prefix, schema))

    def learn_cells(self, msg: RawMessage, value_prefix: bytes, key_prefix: bytes,
                    change: CellChange, columns: Mapping[str, CqlType],
                    decode: Callable[[RawMessage], Any]) -> None:
        """`msg` was decoded by Python into `change`, a write or row delete of a legacy
        ScyllaDB message whose columns (key columns too, in the schema's order) `columns`
        handles; `decode` is that decoder, which gives a `CellRun`'s changes back. No plan
        where a column has no native twin."""
        topic = msg.topic
        if (change.kind.value not in _NATIVE_CELL_CHANGES or change.schema is None
                or not _enveloped(msg, value_prefix, key_prefix)
                or (topic, value_prefix, key_prefix) in self._unplanned
                or self._known(topic, value_prefix, key_prefix, change.schema)):
            return
        kinds = {name: cql_native_kind(ctype) for name, ctype in columns.items()}
        key = [(name, kinds.get(name)) for name in change.key_columns]
        if None in kinds.values() or any(k is None or k[0] not in _NATIVE_KEY_KINDS
                                         for _, k in key):
            if len(self._unplanned) >= _MAX_UNPLANNED:
                self._unplanned.clear()
            self._unplanned.add((topic, value_prefix, key_prefix))
            return
        regular = [(name, kinds[name], ctype.pg_type == "timestamptz")
                   for name, ctype in columns.items() if name not in change.key_columns]

        def reread(topic: str, partition: int, offset: int, key: bytes, value: bytes) -> Any:
            return decode(RawMessage(topic, partition, offset, key, value))

        plan = CellPlan(value_prefix, key_prefix, state_key_prefix(change.table), key, regular,
                        change.schema, reread)
        self._add(topic, _TopicPlan(plan, value_prefix, key_prefix, change.schema))

    def _known(self, topic: str, value_prefix: bytes, key_prefix: bytes,
               schema: TableSchema) -> bool:
        """The topic has a plan of these schemas already."""
        return any(p.value_prefix == value_prefix and p.key_prefix == key_prefix
                   and p.schema is schema for p in self._plans.get(topic, ()))

    def _add(self, topic: str, plan: _TopicPlan) -> None:
        plans = self._plans.setdefault(topic, [])
        plans.insert(0, plan)
        del plans[_MAX_PLANS_PER_TOPIC:]


def _enveloped(msg: RawMessage, value_prefix: bytes, key_prefix: bytes) -> bool:
    """`msg`'s key and value are JSON envelopes that start with these schema bytes."""
    return (value_prefix.startswith(_ENVELOPE_HEAD) and key_prefix.startswith(_ENVELOPE_HEAD)
            and msg.value is not None and msg.value.startswith(value_prefix)
            and msg.key is not None and msg.key.startswith(key_prefix))


def _decode_by(plans: list[_TopicPlan], msg: RawMessage) -> ChangeEvent | None:
    """The event of the first plan that decodes `msg`, or None (cell plans only make runs)."""
    for plan in plans:
        if type(plan.plan) is not FastPlan:
            continue
        parts = plan.plan.decode(msg.value, msg.key)
        if parts is not None:
            return _event(plan.schema, msg, parts)
    return None


class RunEvents(list):
    """A run's change events: what a run becomes when bytewax sends it to another process
    (it pickles what it sends, and a run refers to its process's plan)."""


def _pickled_run(run: Run | CellRun) -> tuple[type[RunEvents], tuple[list[Any]]]:
    return RunEvents, ([event for _, event in run_events(run)],)


if Run is not None:
    copyreg.pickle(Run, _pickled_run)
    copyreg.pickle(CellRun, _pickled_run)


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


def is_run(unit: object) -> bool:
    """A run of native records: of row events (`Run`) or of cell changes (`CellRun`)."""
    return type(unit) is Run or type(unit) is CellRun


def run_events(run: Run | CellRun) -> list[tuple[int, ChangeEvent | CellChange]]:
    """`(position in its decode batch, change event)` of each record of `run`; a `CellRun`'s
    events are its `CellChange`s."""
    if type(run) is CellRun:
        return run.changes()
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
