"""Avro keys and values in the Confluent wire format, with their schemas from a schema registry.

A framed message is magic byte 0 and a 4-byte big-endian schema id (or magic byte 1 and a 16-byte
schema GUID), then the Avro binary body. `AvroFrames.split` gives what the JSON path gets from a
Connect JSON envelope: a Connect-style schema (derived once per writer schema), the bytes that
identify it, and the payload as Python values.

Avro logical types are not applied when reading (fastavro would turn a Connect Decimal into a
`Decimal` and a Connect Timestamp into a `datetime`): the Connect names Debezium's AvroConverter
writes (`connect.name`, `connect.parameters`, `connect.type`) drive conversion exactly as for
JSON, so both encodings of one change give the same row. An Avro `float` (Connect FLOAT32, e.g.
Postgres `real`) is read as the shortest decimal that is the same float32, as JsonConverter
prints it (215921.84, not the float32's exact 215921.84375). A Connect map whose keys are optional
or not strings, which the converter writes as an array of `io.confluent.connect.avro.MapEntry`
records (Cassandra's `map<text, int>`), has a Connect map schema again; its value stays the list
of `{key, value}` records, which the column's converter reads as a map.
"""

from __future__ import annotations

import io
import struct
import uuid
from collections.abc import Callable
from typing import Any

import fastavro
import orjson

AVRO_MAGIC = (0, 1)  # first byte of a framed message; JSON never starts with either
_ID_LENGTH = {0: 4, 1: 16}

# Avro type → the Connect type name JsonConverter writes for it (FLOAT32 is "float", FLOAT64 is
# "double"), so that a schema reads the same in either encoding.
_CONNECT_TYPES = {
    "int": "int32", "long": "int64", "float": "float", "double": "double",
    "boolean": "boolean", "string": "string", "bytes": "bytes", "enum": "string",
    "fixed": "bytes", "array": "array", "map": "map", "record": "struct",
}
_PRIMITIVES = ("null", "int", "long", "float", "double", "boolean", "string", "bytes")
_FLOAT32 = "cdc-float32"  # the logical type `_for_reading` gives every Avro float
_MAP_ENTRY = "io.confluent.connect.avro.MapEntry"  # the record of a map written as an array


class AvroProblem(Exception):
    """A framed message that cannot be read; `error_type` names the DLQ reason."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


class UnknownSchema(Exception):
    """The registry answered that it has no schema with this id or GUID."""


# `fetch(id_or_guid)` → the writer schema's JSON text; raises UnknownSchema for a missing id and
# retries (or raises) transient registry failures itself.
SchemaFetcher = Callable[[int | str], str]


class _Writer:
    """One writer schema: the fastavro reader's form and the Connect-style form."""

    def __init__(self, schema_text: str) -> None:
        schema = orjson.loads(schema_text)
        self.connect = connect_schema(schema)
        self.parsed = fastavro.parse_schema(_for_reading(schema))


class AvroFrames:
    """Reads framed Avro messages; caches each writer schema by the bytes that identify it."""

    def __init__(self, fetch: SchemaFetcher | None, what: str) -> None:
        self._fetch = fetch
        self._what = what
        self._writers: dict[bytes, _Writer] = {}

    def split(self, raw: bytes) -> tuple[dict[str, Any], bytes, Any]:
        """(Connect-style schema, schema id bytes, payload) of one framed message."""
        magic = raw[0]
        header = raw[: 1 + _ID_LENGTH[magic]]
        writer = self._writers.get(header)
        if writer is None:
            writer = self._writers[header] = self._writer(header)
        try:
            payload = fastavro.schemaless_reader(io.BytesIO(raw[len(header):]), writer.parsed,
                                                 None)
        except (EOFError, ValueError, TypeError, IndexError, UnicodeDecodeError) as exc:
            raise AvroProblem("malformed_avro", f"{self._what} does not match its schema: "
                              f"{type(exc).__name__}: {exc}") from None
        return writer.connect, header, payload

    def _writer(self, header: bytes) -> _Writer:
        if len(header) < (5 if header[0] == 0 else 17):
            raise AvroProblem("malformed_avro",
                              f"{self._what} is {len(header)} bytes, shorter than its header")
        ident: int | str = (int.from_bytes(header[1:], "big") if header[0] == 0
                            else str(uuid.UUID(bytes=header[1:])))
        if self._fetch is None:
            raise AvroProblem("no_schema_registry", f"{self._what} is Avro (schema {ident}) but "
                              "REPLICATE_SCHEMA_REGISTRY_URL is not set")
        try:
            text = self._fetch(ident)
        except UnknownSchema as exc:
            raise AvroProblem("unknown_schema_id", f"{self._what} schema {ident}: {exc}") from None
        try:
            return _Writer(text)
        except (ValueError, TypeError, KeyError, fastavro.schema.SchemaParseException) as exc:
            raise AvroProblem("bad_schema", f"{self._what} schema {ident} cannot be used: "
                              f"{exc}") from None


def is_framed(raw: bytes) -> bool:
    return bool(raw) and raw[0] in AVRO_MAGIC


def _for_reading(schema: Any) -> Any:
    """The schema fastavro reads with: no logical types, but `_FLOAT32` on every float."""
    if schema == "float":
        return {"type": "float", "logicalType": _FLOAT32}
    if isinstance(schema, list):
        return [_for_reading(branch) for branch in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: v for k, v in schema.items() if k != "logicalType"}
    avro_type = out.get("type")
    if avro_type == "float":
        out["logicalType"] = _FLOAT32
    elif isinstance(avro_type, (dict, list)):
        out["type"] = _for_reading(avro_type)
    elif avro_type == "record":
        out["fields"] = [{**f, "type": _for_reading(f["type"])} for f in out.get("fields", ())]
    elif avro_type == "array":
        out["items"] = _for_reading(out.get("items"))
    elif avro_type == "map":
        out["values"] = _for_reading(out.get("values"))
    return out


def _shortest_float32(value: float, *_schemas: Any) -> float:
    """The shortest decimal (Python float) that rounds to the same float32 as `value`."""
    for digits in range(1, 10):
        short = float(f"{value:.{digits}g}")
        try:
            if struct.unpack("f", struct.pack("f", short))[0] == value:
                return short
        except OverflowError:  # rounded up past the largest float32
            continue
    return value  # NaN


fastavro.read.LOGICAL_READERS[f"float-{_FLOAT32}"] = _shortest_float32


def connect_schema(schema: Any) -> dict[str, Any]:
    """The Connect JSON form (`{"type": "struct", "fields": [{"field": ..., "type": ...}]}`) of an
    Avro schema written by a Connect converter. Raises ValueError for what Connect never writes
    (a union of two non-null types)."""
    return _connect(schema, {}, "")


def _connect(schema: Any, named: dict[str, dict[str, Any]], namespace: str) -> dict[str, Any]:
    optional = False
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"]
        if len(branches) != 1:
            raise ValueError(f"union {orjson.dumps(schema).decode()} is not [null, type]")
        optional, schema = len(branches) < len(schema), branches[0]
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            return {"type": _CONNECT_TYPES[schema], "optional": optional}
        full = schema if "." in schema else f"{namespace}.{schema}".lstrip(".")
        defined = named.get(full) or named.get(schema)
        if defined is None:
            raise ValueError(f"type {schema!r} is not defined before its use")
        return {**defined, "optional": optional}
    if not isinstance(schema, dict):
        raise ValueError(f"schema {schema!r} is neither a name, a union nor an object")
    avro_type = schema.get("type")
    if isinstance(avro_type, (dict, list)):  # {"type": {"type": "string", ...}}
        return {**_connect(avro_type, named, namespace), "optional": optional}
    if avro_type not in _CONNECT_TYPES:
        raise ValueError(f"unknown Avro type {avro_type!r}")
    out: dict[str, Any] = {"type": schema.get("connect.type") or _CONNECT_TYPES[avro_type],
                           "optional": optional}
    if "connect.name" in schema:
        out["name"] = schema["connect.name"]
    if isinstance(schema.get("connect.parameters"), dict):
        out["parameters"] = schema["connect.parameters"]
    if avro_type in ("record", "enum", "fixed"):
        name = schema.get("name", "")
        namespace = schema.get("namespace", namespace)
        full = name if "." in name else f"{namespace}.{name}".lstrip(".")
        if avro_type == "record":
            named[full] = out  # before the fields: a record may refer to itself
            out["fields"] = [{"field": f["name"], **_connect(f["type"], named, namespace)}
                             for f in schema.get("fields", ())]
        else:
            named[full] = out
    elif avro_type == "array":
        out["items"] = _connect(schema.get("items"), named, namespace)
        if _avro_name(schema.get("items"), namespace) == _MAP_ENTRY:  # a Connect map
            fields = {f["field"]: {k: v for k, v in f.items() if k != "field"}
                      for f in out.pop("items")["fields"]}
            out.update(type="map", keys=fields["key"], values=fields["value"])
    elif avro_type == "map":
        out["values"] = _connect(schema.get("values"), named, namespace)
    return out


def _avro_name(schema: Any, namespace: str) -> str | None:
    """The full name of a named Avro type, defined here or referred to."""
    if isinstance(schema, str):
        return schema if "." in schema else f"{namespace}.{schema}".lstrip(".")
    if isinstance(schema, dict) and isinstance(schema.get("name"), str):
        name = schema["name"]
        return name if "." in name else f"{schema.get('namespace', namespace)}.{name}".lstrip(".")
    return None
