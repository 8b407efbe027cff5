"""The Debezium Postgres dialect against the contract, on both decoders."""

from __future__ import annotations

import re

import orjson

from formats.debezium.postgres import PostgresDialect
from formats.registry import DIALECTS
from operators.decode import Decoder
from operators.events import DlqRecord, RawMessage
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


def test_a_sequence_that_is_not_a_pair_of_lsns_goes_to_the_dlq_naming_the_field() -> None:
    decoder = Decoder("public", {}, None, native=False)
    for sequence, field in (('["x","5"]', r"sequence\[0\]"), ("[1]", "sequence"),
                            ('["18446744073709551616","5"]', r"sequence\[0\]")):
        msg = ds.pg_message("c", None, ds.customer_row(1))
        msg = msg._replace(value=msg.value.replace(b'"sequence":"[\\"33841900\\",\\"33842008\\"]"',
                                                   orjson.dumps({"sequence": sequence})[1:-1]))
        record = decoder.decode(msg)
        assert isinstance(record, DlqRecord) and record.error_type == "bad_version"
        assert re.search(f"source.{field} must", record.error), record.error
