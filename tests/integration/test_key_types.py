"""A key read back from Postgres makes the same state key as the decoder's key of the same row:
what a state rebuild depends on, for each key type a source can send."""

from __future__ import annotations

import ipaddress
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from operators.keys import key_json

pytestmark = pytest.mark.integration

REF = uuid.UUID("6f9619ff-8b86-d011-b42d-00c04fc964ff")
# (Postgres type, literal, the value a decoder gives for it)
KEYS = [
    ("inet", "10.1.2.3", ipaddress.ip_address("10.1.2.3")),
    ("inet", "2001:db8::1", ipaddress.ip_address("2001:db8::1")),
    ("cidr", "10.1.0.0/16", ipaddress.ip_network("10.1.0.0/16")),
    ("uuid", str(REF), REF),
    ("numeric", "1000", Decimal("1000")),
    ("bytea", "\\x00ff", b"\x00\xff"),
    ("date", "2024-06-10", date(2024, 6, 10)),
    ("timestamptz", "2024-06-10 08:30:00.123456+00", datetime(2024, 6, 10, 8, 30, 0, 123456, UTC)),
    ("text", "a", "a"),
]


@pytest.mark.parametrize(("pg_type", "literal", "decoded"), KEYS, ids=[k[0] for k in KEYS])
def test_a_key_read_back_from_postgres_makes_the_decoders_state_key(pg_conn, pg_type, literal,
                                                                    decoded) -> None:
    (read,) = pg_conn.execute(f"SELECT %s::text::{pg_type}", (literal,)).fetchone()
    assert key_json((read, 1)) == key_json((decoded, 1))
