"""Version encoding: a byte string per change that sorts in the connector's per-key order.

Python compares `bytes` the way Postgres compares `bytea` (unsigned, byte by byte, shorter prefix
first), so one encoding serves RocksDB, Python and the SQL version guard. Byte 0 names the scheme;
versions of different schemes never meet for the same key.

    0x01 Postgres     after, lsn: 8 bytes big-endian each; `after` is the commit LSN the
                      change's transaction follows (docs/architecture.md, "Versions")
    0x02 SQL Server   commit_lsn, change_lsn, event_serial_no; each field is 0x00 (null, sorts
                      lowest) or 0x01 + payload: LSNs 10 bytes, serial 8 bytes offset-binary
    0x03 write time   Cassandra/ScyllaDB `ts_us` as 8 bytes offset-binary

Every field has a fixed width once present, so the encodings are prefix-free and byte order equals
tuple order. Postgres versions written before `after` was added (`0x01 || lsn`, 9 bytes) still
meet new ones in state and tables: their LSN compares with the new `after`, which is at least the
commit of any change streamed before it (docs/architecture.md, "Versions").
"""

from __future__ import annotations

from typing import Any

PG = 0x01
SQLSERVER = 0x02
WRITETIME = 0x03

_INT64_BIAS = 1 << 63
_NULL = b"\x00"
_PRESENT = b"\x01"
_LSN_WIDTHS = (8, 8, 4)  # hex digits of the three parts of `00000027:00000758:0005`


def pg_version(after: int, lsn: int) -> bytes:
    """Postgres: a change ranks by the commit it follows (`after`), then by its WAL position."""
    return (bytes((PG,)) + pg_lsn(after, "sequence[0]").to_bytes(8, "big")
            + pg_lsn(lsn, "lsn").to_bytes(8, "big"))


def pg_lsn(value: Any, name: str) -> int:
    """`value` as a Postgres LSN (an unsigned 64-bit WAL position); ValueError names the field."""
    if type(value) is not int or not 0 <= value < 1 << 64:
        raise ValueError(f"source.{name} must be an unsigned 64-bit integer, got {value!r}")
    return value


def sqlserver_version(commit_lsn: str | None, change_lsn: str | None, serial: int | None) -> bytes:
    """SQL Server: (commit_lsn, change_lsn, event_serial_no); snapshot rows have nulls."""
    return (
        bytes((SQLSERVER,))
        + _optional(commit_lsn, _lsn_bytes, "commit_lsn")
        + _optional(change_lsn, _lsn_bytes, "change_lsn")
        + _optional(serial, _int64_bytes, "event_serial_no")
    )


def writetime_version(ts_us: int) -> bytes:
    """Cassandra/ScyllaDB: the write time in µs (may be negative in principle)."""
    return bytes((WRITETIME,)) + _int64_bytes(ts_us, "ts_us")


def describe_version(version: bytes) -> str:
    """A readable form for audit rows, e.g. `pg:after=123000,lsn=123456`; never raises."""
    try:
        return _describe(version)
    except (IndexError, ValueError):
        return f"unknown:{version.hex()}"


def _describe(v: bytes) -> str:
    kind = v[0]
    if kind == PG and len(v) == 17:
        return f"pg:after={int.from_bytes(v[1:9], 'big')},lsn={int.from_bytes(v[9:], 'big')}"
    if kind == PG and len(v) == 9:  # the LSN alone: rows written before `after` was added
        return f"pg:lsn={int.from_bytes(v[1:], 'big')}"
    if kind == WRITETIME and len(v) == 9:
        return f"writetime:ts_us={_int64_text(v[1:])}"
    if kind == SQLSERVER:
        pos = 1
        parts = []
        for name, width, text in (
            ("commit", 10, _lsn_text),
            ("change", 10, _lsn_text),
            ("serial", 8, _int64_text),
        ):
            if v[pos] == 0:
                parts.append(f"{name}=null")
                pos += 1
                continue
            payload = v[pos + 1 : pos + 1 + width]
            if len(payload) != width:
                raise ValueError("truncated")
            parts.append(f"{name}={text(payload)}")
            pos += 1 + width
        if pos == len(v):
            return "sqlserver:" + ",".join(parts)
    raise ValueError("not a known encoding")


def _optional(value: Any, encode: Any, name: str) -> bytes:
    return _NULL if value is None else _PRESENT + encode(value, name)


def _lsn_bytes(lsn: Any, name: str) -> bytes:
    parts = lsn.split(":") if isinstance(lsn, str) else ()
    if len(parts) != 3 or any(len(p) != w for p, w in zip(parts, _LSN_WIDTHS, strict=False)):
        raise ValueError(f"source.{name} must look like '00000027:00000758:0005', got {lsn!r}")
    try:
        return bytes.fromhex("".join(parts))
    except ValueError:
        raise ValueError(f"source.{name} is not hexadecimal: {lsn!r}") from None


def _lsn_text(payload: bytes) -> str:
    h = payload.hex()
    return f"{h[:8]}:{h[8:16]}:{h[16:]}"


def _int64_text(payload: bytes) -> str:
    return str(int.from_bytes(payload, "big") - _INT64_BIAS)


def _int64_bytes(value: Any, name: str) -> bytes:
    if type(value) is not int or not -_INT64_BIAS <= value < _INT64_BIAS:
        raise ValueError(f"source.{name} must be a 64-bit integer, got {value!r}")
    return (value + _INT64_BIAS).to_bytes(8, "big")
