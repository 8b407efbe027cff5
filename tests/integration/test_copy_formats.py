"""The COPY format benchmark compares like with like: both formats stage the same rows."""

from __future__ import annotations

import psycopg
import pytest

from benchmarks.copy_formats import COLUMNS, copy_once, rows, staged_digest

pytestmark = pytest.mark.integration


def test_text_and_binary_copy_stage_the_same_rows(pg_dsn):
    data = rows(500)
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(f"CREATE TEMP TABLE copy_formats_stage ({COLUMNS})")
        digests = []
        for binary in (False, True):
            wall, cpu = copy_once(conn, data, binary)
            assert wall > 0 and cpu > 0
            digests.append(staged_digest(conn))
        assert conn.execute("SELECT count(*) FROM copy_formats_stage").fetchone() == (500,)
    assert digests[0] and digests[0] == digests[1]
