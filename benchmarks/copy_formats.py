"""Text against binary `COPY` for the writer's rows: client CPU and wall time per row.

The shard writer stages rows with psycopg's text `COPY`; binary `COPY` is the usual suggestion
for a faster load. Its Postgres thread holds the interpreter lock while it formats rows, so what
counts here is the client's CPU per row. Rows have the reference workload's shape (key, the six
value columns, the jsonb key and the bytea version); the two formats alternate so that drift in
the machine's speed hits both. Both formats must stage the same rows (checked each round): in
binary, psycopg dumps a `str` for a jsonb column as a JSON string, so the key's JSON text has to
be wrapped to go through as is.

    python -m benchmarks.copy_formats --rows 200000 --rounds 3
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from operators.settings import DEV_PG_DSN

COLUMNS = ("id int8, name text, qty int4, price numeric(12,2), seen timestamp, active bool, "
           "total int8, _cdc_key jsonb, _cdc_version bytea")
BINARY_TYPES = ["int8", "text", "int4", "numeric", "timestamp", "bool", "int8", "jsonb", "bytea"]
KEY_AT = BINARY_TYPES.index("jsonb")


def _as_is(text: str) -> str:
    return text


def rows(count: int, seed: int = 7) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    start = datetime(2024, 1, 1)
    return [(i, f"name-{i}-{rng.random():.6f}", rng.randint(0, 10**6),
             Decimal(rng.randint(0, 10**9)) / 100,
             start + timedelta(microseconds=rng.randint(0, 10**13)), bool(i % 2),
             rng.randint(0, 10**12), f"[{i}]", (i * 16 + 1).to_bytes(12, "big"))
            for i in range(count)]


def copy_once(conn: psycopg.Connection, data: list[tuple[Any, ...]],
              binary: bool) -> tuple[float, float]:
    """(wall s, client CPU s) to COPY `data` into the session's stage table and commit."""
    conn.execute("TRUNCATE copy_formats_stage")
    wall, cpu = time.perf_counter(), time.process_time()
    statement = "COPY copy_formats_stage FROM STDIN" + (" (FORMAT BINARY)" if binary else "")
    with conn.cursor().copy(statement) as copy:
        if binary:
            copy.set_types(BINARY_TYPES)
            for row in data:  # binary jsonb would dump the key's JSON text as a JSON string
                copy.write_row((*row[:KEY_AT], Jsonb(row[KEY_AT], dumps=_as_is), row[KEY_AT + 1]))
        else:
            for row in data:
                copy.write_row(row)
    conn.commit()
    return time.perf_counter() - wall, time.process_time() - cpu


def staged_digest(conn: psycopg.Connection) -> str:
    """What the stage table holds, as one hash: both formats must load the same rows."""
    row = conn.execute("SELECT md5(string_agg(s::text, ',' ORDER BY id)) "
                       "FROM copy_formats_stage s").fetchone()
    return row[0] if row else ""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dsn", default=DEV_PG_DSN)
    args = parser.parse_args(argv)
    data = rows(args.rows)
    with psycopg.connect(args.dsn) as conn:
        conn.execute(f"CREATE TEMP TABLE copy_formats_stage ({COLUMNS})")
        for round_ in range(1, args.rounds + 1):
            digests = set()
            for binary in (False, True):
                wall, cpu = copy_once(conn, data, binary)
                digests.add(staged_digest(conn))
                print(f"round {round_} {'binary' if binary else 'text':6s}: "
                      f"{wall / args.rows * 1e6:5.2f} µs/row wall, "
                      f"{cpu / args.rows * 1e6:5.2f} µs/row client CPU", flush=True)
            if len(digests) != 1:
                raise SystemExit("copy_formats: text and binary COPY loaded different rows")


if __name__ == "__main__":
    main()
