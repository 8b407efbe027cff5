"""The source tables of the live chain, random values for them, and the column-by-column comparison
of a source table with its replicated target.

Every column names how to read it on each side so that psycopg returns equal Python values when
the replication is right; where Debezium's encoding loses information the reading says how
(docs/types.md has the same table for users).
"""

from __future__ import annotations

import base64
import ipaddress
import random
import struct
import uuid
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import psycopg
from psycopg import sql

Generate = Callable[[random.Random], Any]


@dataclass(frozen=True)
class Column:
    """A source column: its type, a value generator and how to read it back on both sides."""

    name: str
    pg_type: str
    generate: Generate
    source_sql: str = "{}"
    """Select expression on the source, `{}` is the column."""
    target_value: Callable[[Any], Any] | None = None
    """Applied in Python to what the target returns, and to what the decoder makes of a message
    (e.g. WKB → coordinates): both are the same Python value when replication is right."""
    replicated: bool = True
    """False for a type the connector does not emit at all (the target has no such column)."""


def _text(rng: random.Random) -> str:
    alphabet = "abcxyz ÄÖü€😀'\",\\{}[]\t\n"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))


def _float32(rng: random.Random) -> float:
    return struct.unpack("f", struct.pack("f", rng.uniform(-1e6, 1e6)))[0]


def _numeric(rng: random.Random) -> Decimal:
    scale = rng.randint(0, 12)
    return Decimal(rng.randint(-10**20, 10**20)).scaleb(-scale)


def _timestamp(rng: random.Random) -> datetime:
    start = datetime(1900, 1, 1)
    return start + timedelta(microseconds=rng.randrange(200 * 365 * 86_400 * 10**6))


def _timetz(rng: random.Random) -> str:
    offset = rng.choice(["+00", "+02", "-05:30", "+14", "-12"])
    return f"{_time(rng).isoformat()}{offset}"


def _time(rng: random.Random) -> time:
    return (datetime(2000, 1, 1) + timedelta(microseconds=rng.randrange(86_400 * 10**6))).time()


def _interval(rng: random.Random) -> str:
    parts = [f"{rng.randint(-3, 3)} years", f"{rng.randint(-11, 11)} mons",
             f"{rng.randint(-40, 40)} days", f"{rng.randint(-30, 30)} hours",
             f"{rng.randint(0, 59)} minutes", f"{rng.randint(0, 59_999_999) / 10**6} seconds"]
    return " ".join(rng.sample(parts, rng.randint(1, len(parts))))


def _inet(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}/" \
               f"{rng.choice([8, 16, 24, 32])}"
    return f"2001:db8::{rng.randint(0, 0xffff):x}/{rng.choice([64, 128])}"


def _cidr(rng: random.Random) -> str:
    return f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.0/24"


def _macaddr(rng: random.Random) -> str:
    return ":".join(f"{rng.randint(0, 255):02x}" for _ in range(6))


def _bits(width: int) -> Generate:
    return lambda rng: "".join(rng.choice("01") for _ in range(width))


def _json(rng: random.Random) -> str:
    # Extra spaces and repeated keys: what `json` keeps and `jsonb` normalizes.
    return rng.choice(['{"b": 1,  "a": [1, 2.50, null]}', '{"k": "x", "k": "y"}', '[]',
                       f'{{"n": {rng.randint(-99, 99)}, "s": "{rng.choice("aé☃")}"}}'])


def _point(rng: random.Random) -> str:
    return f"({rng.uniform(-180, 180):.6f},{rng.uniform(-90, 90):.6f})"


def _points(count: int) -> Generate:
    return lambda rng: ",".join(_point(rng) for _ in range(count))


def _circle(rng: random.Random) -> str:
    return f"<{_point(rng)},{rng.uniform(0, 10):.3f}>"


def wkb_point(wkb: bytes) -> list[float]:
    """The coordinates of a WKB point (either byte order)."""
    order = "<" if wkb[0] == 1 else ">"
    (kind,) = struct.unpack(order + "I", wkb[1:5])
    if kind != 1:
        raise ValueError(f"WKB geometry type {kind} is not a point")
    return list(struct.unpack(order + "dd", wkb[5:21]))


def inet_text(text: str) -> str:
    """An address as Postgres' `inet::text` writes it (the connector omits a host's /32)."""
    return str(ipaddress.ip_interface(text))


def toast_text(rng: random.Random) -> str:
    """Incompressible text long enough to be stored out of line (TOASTed)."""
    return base64.b64encode(rng.randbytes(rng.randint(6_000, 12_000))).decode()


MOOD = "mood"  # the enum type's name on the source
MOOD_VALUES = ("sad", "ok", "happy", "very happy")

# Every common Postgres type, with the readings documented in docs/types.md.
ALLTYPES: tuple[Column, ...] = (
    Column("c_smallint", "smallint", lambda r: r.randint(-32768, 32767)),
    Column("c_integer", "integer", lambda r: r.randint(-2**31, 2**31 - 1)),
    Column("c_bigint", "bigint", lambda r: r.randint(-2**63, 2**63 - 1)),
    Column("c_real", "real", _float32),
    Column("c_double", "double precision", lambda r: r.uniform(-1e300, 1e300)),
    Column("c_numeric_scaled", "numeric(12,3)",
           lambda r: Decimal(r.randint(-10**12 + 1, 10**12 - 1)).scaleb(-3)),
    Column("c_numeric", "numeric", _numeric),
    Column("c_money", "money", lambda r: f"{r.randint(-10**9, 10**9) / 100:.2f}",
           source_sql="{}::numeric"),
    Column("c_boolean", "boolean", lambda r: r.random() < 0.5),
    Column("c_text", "text", _text),
    Column("c_varchar", "varchar(20)", lambda r: _text(r)[:20]),
    Column("c_char", "char(5)", lambda r: _text(r)[:5].rstrip()),
    Column("c_bytea", "bytea", lambda r: r.randbytes(r.randint(0, 40))),
    Column("c_uuid", "uuid", lambda r: uuid.UUID(int=r.getrandbits(128))),
    Column("c_json", "json", _json, source_sql="{}::jsonb"),
    Column("c_jsonb", "jsonb", _json),
    Column("c_date", "date", lambda r: date(1900, 1, 1) + timedelta(days=r.randint(0, 73_000))),
    Column("c_time", "time", _time),
    Column("c_timetz", "timetz", _timetz, source_sql="{} AT TIME ZONE 'UTC'"),
    Column("c_timestamp", "timestamp", _timestamp),
    Column("c_timestamptz", "timestamptz",
           lambda r: _timestamp(r).replace(tzinfo=timezone(timedelta(hours=r.randint(-12, 14))))),
    Column("c_interval", "interval", _interval),
    Column("c_inet", "inet", _inet, source_sql="{}::text", target_value=inet_text),
    Column("c_cidr", "cidr", _cidr, source_sql="{}::text"),
    Column("c_macaddr", "macaddr", _macaddr, source_sql="{}::text"),
    Column("c_enum", MOOD, lambda r: r.choice(MOOD_VALUES), source_sql="{}::text"),
    Column("c_int_array", "integer[]",
           lambda r: [None if r.random() < 0.1 else r.randint(-999, 999)
                      for _ in range(r.randint(0, 5))]),
    Column("c_text_array", "text[]",
           lambda r: [None if r.random() < 0.1 else _text(r) for _ in range(r.randint(0, 4))]),
    Column("c_bit1", "bit(1)", _bits(1), source_sql="{} = B'1'"),
    Column("c_bit", "bit(12)", _bits(12)),
    Column("c_varbit", "bit varying(16)", lambda r: _bits(r.randint(1, 16))(r),
           source_sql="lpad({}::text, 16, '0')"),
    Column("c_point", "point", _point,
           source_sql="CASE WHEN {0} IS NOT NULL THEN array[{0}[0], {0}[1]] END",
           target_value=wkb_point),
    # Debezium emits no value and no schema field for the other geometric types.
    Column("c_line", "line", lambda r: f"{{1,-1,{r.randint(-9, 9)}}}", replicated=False),
    Column("c_lseg", "lseg", lambda r: f"[{_points(2)(r)}]", replicated=False),
    Column("c_box", "box", _points(2), replicated=False),
    Column("c_path", "path", lambda r: f"[{_points(3)(r)}]", replicated=False),
    Column("c_polygon", "polygon", lambda r: f"({_points(3)(r)})", replicated=False),
    Column("c_circle", "circle", _circle, replicated=False),
)
DOC = Column("doc", "text", toast_text)
"""Large text that later updates mostly leave unchanged (REPLICA IDENTITY DEFAULT)."""

ACCOUNTS: tuple[Column, ...] = (
    Column("balance", "numeric(14,2)",
           lambda r: Decimal(r.randint(-10**9, 10**9)).scaleb(-2)),
    Column("note", "text", _text),
)
"""A table with a composite key (`region`, `id`) that the workload truncates."""


@dataclass(frozen=True)
class Table:
    name: str
    key: tuple[tuple[str, str], ...]
    columns: tuple[Column, ...]

    def ddl(self) -> sql.Composed:
        parts = [sql.SQL("{} {} NOT NULL").format(sql.Identifier(n), sql.SQL(t))
                 for n, t in self.key]
        parts += [sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.pg_type))
                  for c in self.columns]
        parts.append(sql.SQL("PRIMARY KEY ({})").format(
            sql.SQL(", ").join(sql.Identifier(n) for n, _ in self.key)))
        return sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(self.name),
                                                      sql.SQL(", ").join(parts))

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    @property
    def replicated(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.replicated)


ALLTYPES_TABLE = Table("alltypes", (("id", "bigint"),), (*ALLTYPES, DOC))
ACCOUNTS_TABLE = Table("accounts", (("region", "text"), ("id", "integer")), ACCOUNTS)
TABLES = (ALLTYPES_TABLE, ACCOUNTS_TABLE)


def create_source_schema(conn: psycopg.Connection) -> None:
    """The enum type and the tables, on a fresh source database."""
    conn.execute(sql.SQL("CREATE TYPE {} AS ENUM ({})").format(
        sql.Identifier(MOOD), sql.SQL(", ").join(sql.Literal(v) for v in MOOD_VALUES)))
    for table in TABLES:
        conn.execute(table.ddl())


def random_values(rng: random.Random, columns: tuple[Column, ...],
                  null_share: float = 0.12) -> dict[str, Any]:
    """A value (or NULL) for each of `columns`."""
    return {c.name: None if rng.random() < null_share else c.generate(rng) for c in columns}


def insert(conn: psycopg.Connection, table: Table, key: tuple[Any, ...],
           values: dict[str, Any]) -> None:
    names = [n for n, _ in table.key] + list(values)
    types = [t for _, t in table.key] + [table.column(n).pg_type for n in values]
    conn.execute(sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, names)),
        sql.SQL(", ").join(sql.SQL("%s::{}").format(sql.SQL(t)) for t in types)),
        [*key, *values.values()])


def update(conn: psycopg.Connection, table: Table, key: tuple[Any, ...],
           values: dict[str, Any]) -> int:
    """SET only `values`' columns (the others, e.g. a TOASTed one, stay unchanged)."""
    sets = sql.SQL(", ").join(
        sql.SQL("{} = %s::{}").format(sql.Identifier(n), sql.SQL(table.column(n).pg_type))
        for n in values)
    return conn.execute(sql.SQL("UPDATE {} SET {} WHERE {}").format(
        sql.Identifier(table.name), sets, _key_match(table)),
        [*values.values(), *key]).rowcount


def update_key(conn: psycopg.Connection, table: Table, key: tuple[Any, ...],
               new_key: tuple[Any, ...]) -> int:
    sets = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(n)) for n, _ in table.key)
    return conn.execute(sql.SQL("UPDATE {} SET {} WHERE {}").format(
        sql.Identifier(table.name), sets, _key_match(table)), [*new_key, *key]).rowcount


def delete(conn: psycopg.Connection, table: Table, key: tuple[Any, ...]) -> int:
    return conn.execute(sql.SQL("DELETE FROM {} WHERE {}").format(
        sql.Identifier(table.name), _key_match(table)), key).rowcount


def _key_match(table: Table) -> sql.Composed:
    return sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(n))
                                 for n, _ in table.key)


# --- comparison -----------------------------------------------------------------------------


def read_rows(conn: psycopg.Connection, schema: str, table: Table,
              side: str) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """key → the replicated non-key columns, read as `side` ('source' or 'target') says."""
    keys = [sql.Identifier(n) for n, _ in table.key]
    exprs = [sql.SQL(c.source_sql if side == "source" else "{}").format(sql.Identifier(c.name))
             for c in table.replicated]
    query = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(keys + exprs),
                                                sql.Identifier(schema, table.name))
    width = len(keys)
    rows = {}
    for row in conn.execute(query):
        values = list(row[width:])
        if side == "target":
            values = [v if v is None or c.target_value is None else c.target_value(v)
                      for c, v in zip(table.replicated, values, strict=True)]
        rows[tuple(row[:width])] = tuple(values)
    return rows


def differences(source: psycopg.Connection, target: psycopg.Connection, target_schema: str,
                table: Table,
                may_be_null: Mapping[str, Set[tuple[Any, ...]]] = MappingProxyType({}),
                limit: int = 10) -> list[str]:
    """Every row missing on either side, and every column whose values differ (up to `limit`),
    except a NULL in the target where `may_be_null[column]` holds the row's key."""
    want = read_rows(source, "public", table, "source")
    got = read_rows(target, target_schema, table, "target")
    found = [f"{table.name} {key}: missing in target" for key in want.keys() - got.keys()]
    found += [f"{table.name} {key}: not in source" for key in got.keys() - want.keys()]
    for key in sorted(want.keys() & got.keys()):
        for column, w, g in zip(table.replicated, want[key], got[key], strict=True):
            if w != g and not (g is None and key in may_be_null.get(column.name, ())):
                found.append(f"{table.name} {key} {column.name}: source {w!r:.120} "
                             f"target {g!r:.120}")
    return sorted(found)[:limit] + ([f"... {len(found) - limit} more"] if len(found) > limit
                                    else [])
