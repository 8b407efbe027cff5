"""Avro encoding of the generated Debezium messages, the way Debezium's AvroConverter writes them:
the Confluent wire format (magic byte 0, 4-byte schema id, Avro binary body), with the key and
value schemas registered under `<topic>-key` and `<topic>-value` in a Confluent-compatible
registry. Like `benchmarks/workload.py`, it imports nothing from the replicator.
"""

from __future__ import annotations

import io
from typing import Any

import fastavro
import orjson

# Connect type (as JsonConverter names it: FLOAT32 is "float", FLOAT64 is "double") → Avro type
_PRIMITIVE = {
    "int8": "int", "int16": "int", "int32": "int", "int64": "long", "float": "float",
    "double": "double", "boolean": "boolean", "string": "string", "bytes": "bytes",
}
DECIMAL = "org.apache.kafka.connect.data.Decimal"


def avro_schema(connect: dict[str, Any], defined: set[str] | None = None) -> Any:
    """The Avro schema AvroConverter derives from a Connect schema (struct → record named after
    the Connect name, optional → `["null", T]`, Connect names and parameters kept as
    `connect.*` properties, Decimal as bytes with the `decimal` logical type)."""
    defined = set() if defined is None else defined
    kind, name = connect["type"], connect.get("name")
    avro: Any
    if kind == "struct":
        if name in defined:  # a record is defined once, then referred to by its full name
            avro = name
        else:
            defined.add(name)
            namespace, _, short = name.rpartition(".")
            avro = {"type": "record", "name": short, "fields": [
                {"name": f["field"], "type": avro_schema(f, defined),
                 **({"default": None} if f.get("optional") else {})}
                for f in connect["fields"]]}
            if namespace:
                avro["namespace"] = namespace
            avro["connect.name"] = name
    else:
        avro = {"type": _PRIMITIVE[kind]}
        if kind in ("int8", "int16"):
            avro["connect.type"] = kind
        if "version" in connect:
            avro["connect.version"] = connect["version"]
        if "parameters" in connect:
            avro["connect.parameters"] = connect["parameters"]
        if name:
            avro["connect.name"] = name
        if name == DECIMAL:
            params = connect["parameters"]
            avro.update(logicalType="decimal", scale=int(params["scale"]),
                        precision=int(params["connect.decimal.precision"]))
        if list(avro) == ["type"]:
            avro = avro["type"]
    return ["null", avro] if connect.get("optional") else avro


class AvroSubjectWriter:
    """Registers one Avro schema under a subject and frames records written with it."""

    def __init__(self, registry_url: str, subject: str, connect: dict[str, Any]) -> None:
        from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

        schema = avro_schema({**connect, "optional": False})
        client = SchemaRegistryClient({"url": registry_url})
        schema_id = client.register_schema(subject, Schema(orjson.dumps(schema).decode(), "AVRO"))
        self.header = b"\x00" + schema_id.to_bytes(4, "big")
        self._parsed = fastavro.parse_schema(schema)

    def frame(self, record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self.header)
        fastavro.schemaless_writer(buf, self._parsed, record)
        return buf.getvalue()
