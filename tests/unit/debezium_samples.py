"""Builders for realistic Debezium JSON messages (Postgres and SQL Server connectors).

`pg_message(...)` / `sqlserver_message(...)` return a `RawMessage` as the Kafka source would read
it, with the JSON converter's `schemas.enable` true (default) or false.
"""

from __future__ import annotations

from typing import Any

import orjson

from operators.events import RawMessage

PG_TOPIC = "dbserver1.inventory.customers"
SQLSERVER_TOPIC = "server1.testDB.dbo.orders"


def field(column: str, type_: str, /, optional: bool = True, **extra: Any) -> dict[str, Any]:
    """One Connect field schema: `field("price", "bytes", name="...Decimal", parameters={...})`."""
    return {"type": type_, "optional": optional, "field": column, **extra}


def decimal_field(name: str, scale: int, precision: int | None = None) -> dict[str, Any]:
    params = {"scale": str(scale)}
    if precision is not None:
        params["connect.decimal.precision"] = str(precision)
    return field(
        name, "bytes", name="org.apache.kafka.connect.data.Decimal", version=1, parameters=params
    )


# customers(id int PK, first_name text, email varchar, balance numeric(10,2),
#           created_at timestamp(6), birthday date, bio text (toastable), tags text[])
CUSTOMER_FIELDS = [
    field("id", "int32", optional=False),
    field("first_name", "string"),
    field("email", "string"),
    decimal_field("balance", 2, 10),
    field("created_at", "int64", name="io.debezium.time.MicroTimestamp", version=1),
    field("birthday", "int32", name="io.debezium.time.Date", version=1),
    field("bio", "string"),
    field("tags", "array", items={"type": "string", "optional": True}),
]


def customer_row(id_: int = 1001, **changes: Any) -> dict[str, Any]:
    row = {
        "id": id_,
        "first_name": "Sally",
        "email": "sally@example.com",
        "balance": "BNI=",  # 12.34
        "created_at": 1529507596945104,  # 2018-06-20 15:13:16.945104
        "birthday": 19884,  # 2024-06-10
        "bio": "likes long walks",
        "tags": ["a", "b"],
    }
    row.update(changes)
    return row


def pg_source(lsn: int | None = 33842008, table: str = "customers", **extra: Any) -> dict[str, Any]:
    return {
        "version": "2.7.3.Final",
        "connector": "postgresql",
        "name": "dbserver1",
        "ts_ms": 1718000000000,
        "snapshot": "false",
        "db": "postgres",
        "sequence": f'["33841900","{lsn}"]',
        "schema": "inventory",
        "table": table,
        "txId": 780,
        "lsn": lsn,
        "xmin": None,
        **extra,
    }


PG_SOURCE_SCHEMA = {
    "type": "struct",
    "optional": False,
    "name": "io.debezium.connector.postgresql.Source",
    "field": "source",
    "fields": [
        field("version", "string", optional=False),
        field("connector", "string", optional=False),
        field("name", "string", optional=False),
        field("ts_ms", "int64", optional=False),
        field(
            "snapshot",
            "string",
            name="io.debezium.data.Enum",
            version=1,
            parameters={"allowed": "true,last,false,incremental"},
            default="false",
        ),
        field("db", "string", optional=False),
        field("sequence", "string"),
        field("schema", "string", optional=False),
        field("table", "string", optional=False),
        field("txId", "int64"),
        field("lsn", "int64"),
        field("xmin", "int64"),
    ],
}


def sqlserver_source(
    commit_lsn: str | None = "00000027:00000758:0005",
    change_lsn: str | None = "00000027:00000758:0003",
    event_serial_no: int | None = 1,
    table: str = "orders",
) -> dict[str, Any]:
    return {
        "version": "2.7.3.Final",
        "connector": "sqlserver",
        "name": "server1",
        "ts_ms": 1718000000000,
        "snapshot": "false" if change_lsn else "true",
        "db": "testDB",
        "sequence": None,
        "schema": "dbo",
        "table": table,
        "change_lsn": change_lsn,
        "commit_lsn": commit_lsn,
        "event_serial_no": event_serial_no,
    }


SQLSERVER_SOURCE_SCHEMA = {
    "type": "struct",
    "optional": False,
    "name": "io.debezium.connector.sqlserver.Source",
    "field": "source",
    "fields": [
        field("version", "string", optional=False),
        field("connector", "string", optional=False),
        field("name", "string", optional=False),
        field("ts_ms", "int64", optional=False),
        field("snapshot", "string", name="io.debezium.data.Enum", version=1),
        field("db", "string", optional=False),
        field("sequence", "string"),
        field("schema", "string", optional=False),
        field("table", "string", optional=False),
        field("change_lsn", "string"),
        field("commit_lsn", "string"),
        field("event_serial_no", "int64"),
    ],
}

# orders(order_id int, line_no smallint, PK (order_id, line_no), amount money,
#        placed_at datetimeoffset, ref uniqueidentifier)
ORDER_FIELDS = [
    field("order_id", "int32", optional=False),
    field("line_no", "int16", optional=False),
    decimal_field("amount", 4, 19),
    field("placed_at", "string", name="io.debezium.time.ZonedTimestamp", version=1),
    field("ref", "string"),
]


def order_row(order_id: int = 7, line_no: int = 1, **changes: Any) -> dict[str, Any]:
    row = {
        "order_id": order_id,
        "line_no": line_no,
        "amount": "AYag",  # 10.0000 at scale 4 (unscaled 100000)
        "placed_at": "2024-06-10T08:30:00.1234567Z",
        "ref": "6F9619FF-8B86-D011-B42D-00C04FC964FF",
    }
    row.update(changes)
    return row


def envelope(
    op: str,
    source: dict[str, Any],
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "before": before,
        "after": after,
        "source": source,
        "op": op,
        "ts_ms": 1718000000123,
        "transaction": None,
    }


def envelope_schema(
    row_fields: list[dict[str, Any]], source_schema: dict[str, Any], name: str
) -> dict[str, Any]:
    row = {"type": "struct", "optional": True, "name": f"{name}.Value", "fields": row_fields}
    return {
        "type": "struct",
        "optional": False,
        "name": f"{name}.Envelope",
        "version": 2,
        "fields": [
            {**row, "field": "before"},
            {**row, "field": "after"},
            source_schema,
            field("op", "string", optional=False),
            field("ts_ms", "int64"),
            {
                "type": "struct",
                "optional": True,
                "name": "event.block",
                "version": 1,
                "field": "transaction",
                "fields": [
                    field("id", "string", optional=False),
                    field("total_order", "int64", optional=False),
                    field("data_collection_order", "int64", optional=False),
                ],
            },
        ],
    }


def key_doc(
    key: dict[str, Any], key_fields: list[dict[str, Any]], name: str, schemas: bool
) -> dict[str, Any]:
    if not schemas:
        return key
    schema = {"type": "struct", "optional": False, "name": f"{name}.Key", "fields": key_fields}
    return {"schema": schema, "payload": key}


def raw(
    topic: str,
    value: Any,
    key: Any = None,
    offset: int = 42,
    partition: int = 0,
) -> RawMessage:
    """A RawMessage; dicts/lists are JSON-encoded, bytes and None pass through."""

    def encode(doc: Any) -> bytes | None:
        return doc if doc is None or isinstance(doc, bytes) else orjson.dumps(doc)

    return RawMessage(topic, partition, offset, encode(key), encode(value))


def pg_message(
    op: str,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    *,
    schemas: bool = True,
    lsn: int = 33842008,
    offset: int = 42,
    topic: str = PG_TOPIC,
) -> RawMessage:
    """A customers change; the Kafka key is the id of `after` (or `before`)."""
    payload = envelope(op, pg_source(lsn), before, after)
    row = after if after is not None else before
    key = None if row is None else {"id": row["id"]}
    key_fields = [field("id", "int32", optional=False)]
    value: Any = payload
    if schemas:
        schema = envelope_schema(CUSTOMER_FIELDS, PG_SOURCE_SCHEMA, "dbserver1.inventory.customers")
        value = {"schema": schema, "payload": payload}
    key_value = (
        None if key is None else key_doc(key, key_fields, "dbserver1.inventory.customers", schemas)
    )
    return raw(topic, value, key_value, offset)


def sqlserver_message(
    op: str,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    *,
    schemas: bool = True,
    source: dict[str, Any] | None = None,
    offset: int = 42,
) -> RawMessage:
    """An orders change with the composite key (order_id, line_no)."""
    payload = envelope(op, source or sqlserver_source(), before, after)
    row = after if after is not None else before
    key_fields = [
        field("order_id", "int32", optional=False),
        field("line_no", "int16", optional=False),
    ]
    key = None if row is None else {"order_id": row["order_id"], "line_no": row["line_no"]}
    value: Any = payload
    if schemas:
        schema = envelope_schema(ORDER_FIELDS, SQLSERVER_SOURCE_SCHEMA, "server1.testDB.dbo.orders")
        value = {"schema": schema, "payload": payload}
    key_value = (
        None if key is None else key_doc(key, key_fields, "server1.testDB.dbo.orders", schemas)
    )
    return raw(SQLSERVER_TOPIC, value, key_value, offset)


def truncate_message(schemas: bool = True) -> RawMessage:
    """Postgres truncate: null key, no row images."""
    payload = envelope("t", pg_source(33900000))
    value: Any = payload
    if schemas:
        schema = envelope_schema(CUSTOMER_FIELDS, PG_SOURCE_SCHEMA, "dbserver1.inventory.customers")
        value = {"schema": schema, "payload": payload}
    return raw(PG_TOPIC, value, None)


def schema_change_message() -> RawMessage:
    """SQL Server schema-change topic (`<prefix>`): value with `ddl` and `tableChanges`."""
    value = {
        "source": sqlserver_source(),
        "ts_ms": 1718000000000,
        "databaseName": "testDB",
        "schemaName": "dbo",
        "ddl": None,
        "tableChanges": [{"type": "ALTER", "id": '"testDB"."dbo"."orders"', "table": {}}],
    }
    return raw("server1", value, {"databaseName": "testDB"})


def heartbeat_message() -> RawMessage:
    return raw(
        "__debezium-heartbeat.dbserver1", {"ts_ms": 1718000000000}, {"serverName": "dbserver1"}
    )


def transaction_message() -> RawMessage:
    value = {
        "status": "END",
        "id": "571:53195832",
        "event_count": 2,
        "data_collections": [{"data_collection": "inventory.customers", "event_count": 2}],
        "ts_ms": 1718000000000,
    }
    return raw("dbserver1.transaction", value, {"id": "571:53195832"})


def logical_message() -> RawMessage:
    """Postgres `pg_logical_emit_message`: op `m`, no row images."""
    payload = envelope("m", pg_source(33950000))
    payload["message"] = {"prefix": "audit", "content": "aGVsbG8="}
    return raw("dbserver1.message", payload, {"prefix": "audit"})
