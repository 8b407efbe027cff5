"""The Debezium SQL Server dialect against the contract, on both decoders."""

from __future__ import annotations

from formats.registry import DIALECTS
from operators.events import RawMessage
from tests.formats.contract import DialectContract
from tests.unit import debezium_samples as ds


def lsn(rank: int) -> str:
    return f"00000027:{rank:08x}:0005"


class TestSqlServer(DialectContract):
    dialect = DIALECTS["sqlserver"]

    def message(self, op: str, key: int, rank: int, offset: int) -> RawMessage:
        row = ds.order_row(key)
        before, after = (row, None) if op == "d" else (None, row)
        source = ds.sqlserver_source(commit_lsn=lsn(rank), change_lsn=lsn(rank))
        return ds.sqlserver_message(op, before, after, source=source, offset=offset)

    def bad_version(self, offset: int) -> RawMessage:
        source = ds.sqlserver_source(commit_lsn="not-an-lsn")
        return ds.sqlserver_message("c", None, ds.order_row(1), source=source, offset=offset)
