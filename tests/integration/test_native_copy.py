"""The native decoder's stage rows (`ChangeEvent.copy_row`) are the rows psycopg writes for the
same values, byte for byte (but for a float whose shortest digits tie: Python rounds the last
digit to even, Rust up; both read back as the same number), and Postgres stages them as the same
values."""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg._copy_base import TextFormatter
from psycopg.adapt import Transformer

from operators.decode import Decoder
from operators.events import ChangeEvent, RawMessage
from operators.keys import key_json
from operators.pg_writer import stage_columns
from tests.unit import debezium_samples as ds
from tests.unit.test_native_decode import (
    _VALID,
    FIELDS,
    KEY_SCHEMA,
    TOPIC,
    pg_message,
    taught,
    valid_row,
)

pytestmark = pytest.mark.integration

# the columns of test_native_decode's table without a Python converter, and their types
PG_TYPES = {"id": "bigint", "i8": "smallint", "i16": "smallint", "i32": "integer",
            "flag": "boolean", "f32": "real", "f64": "double precision", "name": "text",
            "raw": "bytea", "day": "date", "ts_ms": "timestamp", "ts_us": "timestamp",
            "ts_ns": "timestamp", "t_ms": "time", "t_us": "time", "t_ns": "time",
            "amount": "numeric", "big": "numeric", "tiny": "numeric", "year": "integer",
            "color": "text"}
NATIVE_SCHEMA = ds.envelope_schema([f for f in FIELDS if f["field"] in PG_TYPES],
                                   ds.PG_SOURCE_SCHEMA, "srv.inventory.things")
NO_NUL = {**_VALID, "name": _VALID["name"].filter(lambda s: "\x00" not in s),
          "color": _VALID["color"].filter(lambda s: "\x00" not in s)}


def native_message(row: dict[str, Any]) -> RawMessage:
    payload = {"before": None, "after": row, "source": ds.pg_source(lsn=7), "op": "u",
               "ts_ms": 1, "transaction": None}
    return RawMessage(TOPIC, 0, 0,
                      orjson.dumps({"schema": KEY_SCHEMA, "payload": {"id": row["id"]}}),
                      orjson.dumps({"schema": NATIVE_SCHEMA, "payload": payload}))


def native_row(**changes: Any) -> dict[str, Any]:
    return {**{k: v for k, v in valid_row().items() if k in PG_TYPES}, **changes}


def taught_native_only() -> Decoder:
    decoder = Decoder("public", {}, None, native=True)
    assert type(decoder.decode(native_message(native_row()))) is ChangeEvent
    return decoder


def same_row(native: bytes, psycopg_text: bytes, columns: tuple[str, ...]) -> bool:
    """Equal bytes, or equal but for float fields that read back as the same number."""
    if native == psycopg_text:
        return True
    ours, theirs = native.split(b"\t"), psycopg_text.split(b"\t")
    floats = {i for i, c in enumerate(columns) if PG_TYPES[c] in ("real", "double precision")}
    return len(ours) == len(theirs) and all(
        a == b or (i in floats and float(a) == float(b))
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)))


def psycopg_row(conn: psycopg.Connection, event: ChangeEvent) -> bytes:
    """What the writer's `copy.write_row` sends for `event` without a native row."""
    values = event.values or {}
    columns = stage_columns(event.key_columns, tuple(values))
    formatter = TextFormatter(Transformer.from_context(conn))
    head = formatter.write_row((*[values[c] for c in columns], key_json(event.key).decode(),
                                event.version))
    return bytes(head) + bytes(formatter.end())


@pytest.fixture(scope="module")
def conn(pg_dsn: str):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


def test_no_native_row_for_python_converted_columns_or_partial_images() -> None:
    event = taught().decode(pg_message())
    assert type(event) is ChangeEvent and event.copy_row is None  # ref, at, doc, tags
    partial = taught_native_only().decode(native_message({"id": 1, "name": "x"}))
    assert type(partial) is ChangeEvent and partial.copy_row is None


def test_a_float_whose_shortest_digits_tie_reads_back_the_same(conn) -> None:
    """64.718536376953125 (a float32) is as near ...312 as ...313 at 16 digits."""
    event = taught_native_only().decode(native_message(native_row(f32=64.71853637695312)))
    columns = stage_columns(event.key_columns, tuple(event.values))
    assert same_row(event.copy_row, psycopg_row(conn, event), columns)
    assert not same_row(event.copy_row.replace(b"64.7185363769531", b"64.7185363769539"),
                        psycopg_row(conn, event), columns)


def test_text_with_a_nul_gets_no_native_row(conn) -> None:
    """psycopg refuses NUL in text before sending; the Python row keeps that error the same."""
    event = taught_native_only().decode(native_message(native_row(name="a\x00b")))
    assert type(event) is ChangeEvent and event.copy_row is None
    with pytest.raises(psycopg.DataError, match="NUL"):
        psycopg_row(conn, event)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.builds(dict, **{n: NO_NUL[n] for n in PG_TYPES if n != "id"}), min_size=1,
                max_size=10),
       st.integers(-(1 << 62), 1 << 62))
def test_native_rows_are_psycopgs_rows_and_stage_the_same_values(conn, rows, id_) -> None:
    decoder = taught_native_only()
    events = []
    for n, row in enumerate(rows):
        event = decoder.decode(native_message({**row, "id": id_ + n}))
        if type(event) is not ChangeEvent:
            continue  # a value Python rejects (out of range): no row either way
        assert event.copy_row is not None, f"no native row for {event.values}"
        columns = stage_columns(event.key_columns, tuple(event.values or ()))
        assert same_row(event.copy_row, psycopg_row(conn, event), columns)
        events.append(event)
    if not events:
        return
    columns = stage_columns(events[0].key_columns, tuple(events[0].values))
    defs = ", ".join(f'"{c}" {PG_TYPES[c]}' for c in columns)
    for stage in ("native_stage", "psycopg_stage"):
        conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} ({defs}, k jsonb, v bytea)")
        conn.execute(f"TRUNCATE {stage}")
    for stage, row_of in (("native_stage", lambda e: e.copy_row),
                          ("psycopg_stage", lambda e: psycopg_row(conn, e))):
        with conn.cursor().copy(f"COPY {stage} FROM STDIN") as copy:
            for event in events:
                copy.write(row_of(event))
    differ = conn.execute("SELECT count(*) FROM ((TABLE native_stage EXCEPT ALL TABLE "
                          "psycopg_stage) UNION ALL (TABLE psycopg_stage EXCEPT ALL TABLE "
                          "native_stage)) d").fetchone()
    assert differ == (0,)
    assert conn.execute("SELECT count(*) FROM native_stage").fetchone() == (len(events),)
