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
"""

from __future__ import annotations

from typing import Any, NamedTuple

from operators.events import ChangeEvent, Op, RawMessage, TableSchema
from operators.keys import state_key_prefix
from operators.pg_writer import stage_columns
from operators.settings import ConfigError
from schemas.debezium_types import FieldType

try:
    from cdc_native import FastPlan
except ImportError:  # not built: FastPath() says how to build it or turn it off
    FastPlan = None

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
    columns: tuple[tuple[str, Any, Any], ...]  # (name, kind, TOAST placeholder or None)


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

    def decode_many(self, messages: list[RawMessage]) -> list[ChangeEvent | None]:
        """`decode` of each message: its topic's newest plan reads the topic's messages at once,
        in parallel, without the interpreter lock; the older plans try what it declines."""
        events: list[ChangeEvent | None] = [None] * len(messages)
        by_topic: dict[str, list[int]] = {}
        for index, msg in enumerate(messages):
            if msg.topic in self._plans and msg.key is not None and msg.value is not None:
                by_topic.setdefault(msg.topic, []).append(index)
        for topic, indexes in by_topic.items():
            newest, *older = self._plans[topic]
            decoded = newest.plan.decode_many([messages[i].value for i in indexes],
                                              [messages[i].key for i in indexes])
            for index, parts in zip(indexes, decoded, strict=True):
                events[index] = (_event(newest.schema, messages[index], parts)
                                 if parts is not None else _decode_by(older, messages[index]))
        return events

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
                        list(stage_columns(schema.key, tuple(c.name for c in schema.columns))))
        plans.insert(0, _TopicPlan(plan, value_prefix, key_prefix, shape.schema))
        del plans[_MAX_PLANS_PER_TOPIC:]


def _decode_by(plans: list[_TopicPlan], msg: RawMessage) -> ChangeEvent | None:
    """The event of the first plan that decodes `msg`, or None."""
    for plan in plans:
        parts = plan.plan.decode(msg.value, msg.key)
        if parts is not None:
            return _event(plan.schema, msg, parts)
    return None


def _event(schema: TableSchema, msg: RawMessage, parts: tuple) -> ChangeEvent:
    deleted, version, key, values, row_id, copy_row = parts
    return ChangeEvent(schema.table, schema.key, key, Op.DELETE if deleted else Op.UPSERT,
                       version, values, schema, msg.topic, msg.partition, msg.offset,
                       row_id or b"", copy_row)
