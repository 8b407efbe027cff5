"""The dialect of each connector, picked by a change's `source.connector`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from formats.cassandra import CassandraDialect
from formats.debezium.postgres import PostgresDialect
from formats.debezium.sqlserver import SqlServerDialect
from formats.dialect import SourceDialect
from formats.scylla import ScyllaDialect

DIALECTS: dict[str, SourceDialect] = {d.connector: d for d in (
    PostgresDialect(), SqlServerDialect(), ScyllaDialect(), CassandraDialect())}


def dialect_for(source: Mapping[str, Any]) -> SourceDialect:
    """The dialect of `source.connector`; ValueError for a connector without one."""
    connector = source.get("connector")
    dialect = DIALECTS.get(connector) if isinstance(connector, str) else None
    if dialect is None:
        expected = " or ".join(repr(name) for name in DIALECTS)
        raise ValueError(f"source.connector {connector!r} has no version scheme (expected "
                         f"{expected})")
    return dialect
