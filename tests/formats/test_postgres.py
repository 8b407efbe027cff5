"""The Debezium Postgres dialect against the contract, on both decoders."""

from __future__ import annotations

from formats.debezium.postgres import PostgresDialect
from formats.registry import DIALECTS
from operators.events import RawMessage
from tests.formats.contract import DialectContract
from tests.unit import debezium_samples as ds


class TestPostgres(DialectContract):
    dialect = DIALECTS["postgresql"]

    def message(self, op: str, key: int, rank: int, offset: int) -> RawMessage:
        row = ds.customer_row(key)
        before, after = (row, None) if op == "d" else (None, row)
        return ds.pg_message(op, before, after, lsn=1000 + rank, offset=offset)

    def bad_version(self, offset: int) -> RawMessage:
        msg = ds.pg_message("c", None, ds.customer_row(1), offset=offset)
        return msg._replace(value=msg.value.replace(b'"lsn":33842008', b'"lsn":"x"'))


def test_the_postgres_dialect_is_registered_once() -> None:
    assert isinstance(DIALECTS["postgresql"], PostgresDialect)
