"""Canonical key bytes and the stable shard of a (table, primary key).

The same bytes are produced from a decoded event and from a row read back from Postgres (the
decoder converts values to the Python types psycopg returns), which is what lets a shard rebuild
its state from the target tables.
"""

from __future__ import annotations

import ipaddress
import zlib
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:  # events.py computes each event's state key with this module
    from operators.events import TableName


_ADDRESSES = (ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Interface,
              ipaddress.IPv6Interface, ipaddress.IPv4Network, ipaddress.IPv6Network)


class UnsupportedKey(TypeError):
    """A key column holds a value no state key can be made of (e.g. an `interval`)."""


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, _ADDRESSES):
        return str(value)  # Postgres' text form of `inet` and `cidr`
    raise TypeError


def key_json(key: tuple[Any, ...]) -> bytes:
    """The key as a JSON array: what `cdc.stale_events.key` and `cdc.tombstones.key` hold."""
    try:
        return orjson.dumps(key, default=_default)
    except orjson.JSONEncodeError:
        kinds = ", ".join(type(v).__name__ for v in key)
        raise UnsupportedKey(f"no state key can be made of values of types ({kinds})") from None


def state_key_prefix(table: TableName) -> str:
    """What every state key of `table` starts with."""
    return f"{table}\x00"


def state_key(table: TableName, key: tuple[Any, ...]) -> bytes:
    """Bytes that identify one row of one table in a shard's state store."""
    return state_key_prefix(table).encode() + key_json(key)


def key_json_of(state_key_bytes: bytes) -> bytes:
    """The key's JSON inside a state key (table names cannot contain NUL), without re-encoding."""
    return state_key_bytes.partition(b"\x00")[2]


def shard_of(state_key_bytes: bytes, shards: int) -> int:
    """Stable across processes and runs (unlike Python's `hash`)."""
    return zlib.crc32(state_key_bytes) % shards


def shard_of_position(topic: str, partition: int, offset: int, shards: int) -> int:
    """Shard for an item without a key (a DLQ record): a hash of its Kafka position."""
    return zlib.crc32(f"{topic}\x00{partition}\x00{offset}".encode()) % shards
