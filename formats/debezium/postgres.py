"""Debezium's Postgres connector: changes ordered by the commit their transaction follows, then by
`source.lsn` (docs/architecture.md, "Versions"); an unchanged TOASTed column (`REPLICA IDENTITY
DEFAULT`) arrives as a placeholder whose form depends on the column's type
(tests/fixtures/debezium/README.md, "Unchanged TOAST placeholders")."""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from formats.dialect import SourceDialect
from operators.versions import pg_lsn, pg_version

TOAST = "__debezium_unavailable_value"
_RAW = TOAST.encode()
_BASE64 = base64.b64encode(_RAW).decode()
_MAP = {TOAST: TOAST}  # hstore, hstore.handling.mode=map
_HSTORE_JSON = orjson.dumps(_MAP).decode()  # hstore, hstore.handling.mode=json
_INTS = list(_RAW)  # integer[], date[], bigint[]
# uuid[]: Java's UUID.nameUUIDFromBytes of the placeholder (an MD5 name-based UUID)
_UUID_FORM = str(uuid.UUID(bytes=hashlib.md5(_RAW).digest(), version=3))
_TEXTS = frozenset((TOAST, _BASE64, _HSTORE_JSON))
_CONTAINERS = ([TOAST], [_BASE64], [_UUID_FORM], _INTS, _MAP)
_JSON = "io.debezium.data.Json"
_UUID = "io.debezium.data.Uuid"
# `source.snapshot` of the rows of an initial (or blocking) snapshot, all read at one LSN; an
# incremental snapshot's rows ("incremental") are deduplicated within the stream by the connector
# and rank as streamed changes
SNAPSHOT_ROWS = frozenset(("true", "first", "first_in_data_collection",
                           "last_in_data_collection", "last"))


class PostgresDialect(SourceDialect):
    connector = "postgresql"
    native = True

    def version(self, source: Mapping[str, Any], snapshot_point: Callable[[], int]) -> bytes:
        """A snapshot row ranks at its snapshot's LSN, below every change of it; a streamed
        change after the commit its transaction follows (`source.sequence[0]`), or, for the
        first transaction streamed without one, after the latest snapshot (or its own LSN)."""
        lsn = pg_lsn(source.get("lsn"), "lsn")
        if source.get("snapshot") in SNAPSHOT_ROWS:
            return pg_version(lsn, 0)
        after = last_commit_lsn(source.get("sequence"))
        return pg_version(max(snapshot_point(), lsn) if after is None else after, lsn)

    def snapshot_point(self, source: Mapping[str, Any]) -> int | None:
        if source.get("snapshot") in SNAPSHOT_ROWS:
            return pg_lsn(source.get("lsn"), "lsn")
        return None

    def toast_placeholders(self, field: Mapping[str, Any], binary: bool) -> tuple[Any, ...]:
        """None, one, or for a Json string two forms (json/jsonb and hstore in json mode share
        the schema)."""
        wire = field.get("type")
        if wire == "string":
            return (TOAST, _HSTORE_JSON) if field.get("name") == _JSON else (TOAST,)
        if wire == "bytes":
            return (_RAW if binary else _BASE64,)
        if wire == "map":
            keys, values = field.get("keys", {"type": "string"}), field.get("values")
            return (_MAP,) if _is_string(keys) and _is_string(values) else ()
        items = field.get("items")
        if wire == "array" and isinstance(items, dict):
            elem = items.get("type")
            if elem == "string":
                return ([_UUID_FORM],) if items.get("name") == _UUID else ([TOAST],)
            if elem == "bytes":
                return ([_RAW if binary else _BASE64],)
            if elem in ("int32", "int64"):
                return (_INTS,)
        return ()

    def is_toast(self, value: Any) -> bool:
        if type(value) is str:
            return value in _TEXTS
        return (type(value) is list or type(value) is dict) and value in _CONTAINERS


def last_commit_lsn(sequence: Any) -> int | None:
    """`source.sequence`, `["<lastCommitLsn>","<lsn>"]` as text: the commit LSN of the transaction
    streamed before this one; None when absent or null."""
    if sequence is None:
        return None
    try:
        pair = orjson.loads(sequence) if isinstance(sequence, str) else None
    except orjson.JSONDecodeError:
        pair = None
    if type(pair) is not list or len(pair) != 2:
        raise ValueError("source.sequence must be a JSON array [lastCommitLsn, lsn] as text, "
                         f"got {sequence!r}")
    last = pair[0]
    if last is None:
        return None
    if type(last) is not str or not (last.isascii() and last.isdigit()):
        raise ValueError(f"source.sequence[0] must be an LSN in decimal digits, got {last!r}")
    return pg_lsn(int(last), "sequence[0]")


def _is_string(schema: Any) -> bool:
    """`schema` is a Connect string schema (an Avro map's keys have none: they are strings)."""
    return isinstance(schema, dict) and schema.get("type") == "string"
