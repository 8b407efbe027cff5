"""Debezium's SQL Server connector: changes ordered by (commit_lsn, change_lsn, event_serial_no);
snapshot rows carry nulls after commit_lsn and sort below the changes committed after them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from formats.dialect import SourceDialect
from operators.versions import sqlserver_version


class SqlServerDialect(SourceDialect):
    connector = "sqlserver"
    native = True

    def version(self, source: Mapping[str, Any], snapshot_point: Callable[[], int]) -> bytes:
        return sqlserver_version(source.get("commit_lsn"), source.get("change_lsn"),
                                 source.get("event_serial_no"))
