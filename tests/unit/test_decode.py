from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.decode import Decoder
from operators.decode_step import DecodeStep
from operators.events import (
    ChangeEvent,
    Column,
    DlqRecord,
    Op,
    ProgressMarker,
    RawMessage,
    TableName,
    TruncateEvent,
)
from operators.keys import shard_of
from operators.settings import Settings
from operators.shard_sink import shard_part_name
from operators.versions import pg_version, sqlserver_version
from tests.unit import debezium_samples as ds

CUSTOMERS = TableName("public", "customers")
ORDERS = TableName("public", "orders")
TOAST = "__debezium_unavailable_value"

CUSTOMER_COLUMNS = {
    "id": "integer",
    "first_name": "text",
    "email": "character varying(255)",
    "balance": "numeric(10,2)",
    "created_at": "timestamp without time zone",
    "birthday": "date",
    "bio": "text",
    "tags": "text[]",
}
ORDER_COLUMNS = {
    "order_id": "integer",
    "line_no": "smallint",
    "amount": "numeric(19,4)",
    "placed_at": "timestamp with time zone",
    "ref": "text",
}


class FakeCatalog:
    """In-memory stand-in for `schemas.catalog.TableCatalog`."""

    def __init__(self, tables: dict[TableName, tuple[dict[str, str], tuple[str, ...]]]) -> None:
        self.tables = tables
        self.lookups = 0

    def columns(self, table: TableName) -> dict[str, str] | None:
        self.lookups += 1
        entry = self.tables.get(table)
        return None if entry is None else entry[0]

    def primary_key(self, table: TableName) -> tuple[str, ...]:
        entry = self.tables.get(table)
        return () if entry is None else entry[1]

    def invalidate(self, table: TableName) -> None:
        pass


def catalog() -> Any:
    return FakeCatalog(
        {
            CUSTOMERS: (CUSTOMER_COLUMNS, ("id",)),
            ORDERS: (ORDER_COLUMNS, ("order_id", "line_no")),
        }
    )


def decoder(table_map: dict[str, str] | None = None, with_catalog: bool = True) -> Decoder:
    return Decoder("public", table_map or {}, catalog() if with_catalog else None)


def expected_customer(**changes: Any) -> dict[str, Any]:
    values = {
        "id": 1001,
        "first_name": "Sally",
        "email": "sally@example.com",
        "balance": Decimal("12.34"),
        "created_at": datetime(2018, 6, 20, 15, 13, 16, 945104),
        "birthday": date(2024, 6, 10),
        "bio": "likes long walks",
        "tags": ["a", "b"],
    }
    values.update(changes)
    return values


def change(result: object) -> ChangeEvent:
    assert isinstance(result, ChangeEvent), result
    return result


def dlq(result: object, error_type: str) -> DlqRecord:
    assert isinstance(result, DlqRecord), result
    assert result.error_type == error_type, result.error
    return result


# --- Postgres, schemas.enable=true --------------------------------------------------------------


@pytest.mark.parametrize("op", ["c", "u", "r"])
@pytest.mark.parametrize("schemas", [True, False])
def test_pg_create_update_read_are_upserts(op: str, schemas: bool) -> None:
    before = ds.customer_row(first_name="Sal") if op == "u" else None
    msg = ds.pg_message(op, before, ds.customer_row(), schemas=schemas, offset=7)
    event = change(decoder().decode(msg))
    assert event.table == CUSTOMERS
    assert event.key_columns == ("id",)
    assert event.key == (1001,)
    assert event.op is Op.UPSERT
    assert event.version == pg_version(33842008)
    assert event.values == expected_customer()
    assert (event.topic, event.partition, event.offset) == (ds.PG_TOPIC, 0, 7)


def test_schema_becomes_table_schema_in_field_order() -> None:
    event = change(decoder().decode(ds.pg_message("c", None, ds.customer_row())))
    assert event.schema is not None
    assert event.schema.table == CUSTOMERS
    assert event.schema.key == ("id",)
    assert event.schema.columns == (
        Column("id", "integer"),
        Column("first_name", "text"),
        Column("email", "text"),
        Column("balance", "numeric(10,2)"),
        Column("created_at", "timestamp"),
        Column("birthday", "date"),
        Column("bio", "text"),
        Column("tags", "text[]"),
    )


def test_same_schema_yields_the_same_table_schema_object() -> None:
    dec = decoder()
    a = change(dec.decode(ds.pg_message("c", None, ds.customer_row(1))))
    b = change(dec.decode(ds.pg_message("u", None, ds.customer_row(2, email=None), lsn=5)))
    assert a.schema is b.schema
    assert b.values is not None and b.values["email"] is None


def test_changed_schema_yields_a_new_table_schema() -> None:
    dec = decoder()
    first = change(dec.decode(ds.pg_message("c", None, ds.customer_row())))
    doc = orjson.loads(ds.pg_message("c", None, ds.customer_row()).value or b"")
    for part in doc["schema"]["fields"][:2]:
        part["fields"].append(ds.field("nickname", "string"))
    doc["payload"]["after"]["nickname"] = "S"
    second = change(dec.decode(ds.raw(ds.PG_TOPIC, doc, {"id": 1001})))
    assert second.schema is not first.schema
    assert second.schema is not None and second.schema.columns[-1] == Column("nickname", "text")
    assert second.values is not None and second.values["nickname"] == "S"


def test_known_schema_bytes_skip_parsing_the_schema_and_decode_the_same() -> None:
    dec, fresh = decoder(), decoder()
    first = ds.pg_message("c", None, ds.customer_row(1))
    dec.decode(first)
    assert dec._values._prefixes[ds.PG_TOPIC], "the value schema bytes were not learned"
    later = ds.pg_message("u", None, ds.customer_row(2, first_name="payload"), lsn=9)
    assert change(dec.decode(later)) == change(fresh.decode(later))


def test_known_schema_prefix_with_a_broken_payload_goes_to_dlq() -> None:
    dec = decoder()
    good = ds.pg_message("c", None, ds.customer_row(1))
    dec.decode(good)
    prefix = dec._values._prefixes[ds.PG_TOPIC][0][0]
    broken = RawMessage(good.topic, 0, 7, good.key, prefix + b'{"op": }')
    result = dec.decode(broken)
    assert isinstance(result, DlqRecord) and result.error_type == "malformed_json"


def test_a_column_named_payload_does_not_confuse_the_envelope_split() -> None:
    dec = decoder()
    doc = orjson.loads(ds.pg_message("c", None, ds.customer_row()).value or b"")
    for part in doc["schema"]["fields"][:2]:
        part["fields"].insert(0, ds.field("payload", "string"))
    doc["payload"]["after"]["payload"] = "x"
    for offset in (1, 2):  # the second one takes the learned-prefix path
        event = change(dec.decode(ds.raw(ds.PG_TOPIC, doc, {"id": 1001}, offset=offset)))
        assert event.values is not None and event.values["payload"] == "x"
        assert event.values["first_name"] == doc["payload"]["after"]["first_name"]


@pytest.mark.parametrize("schemas", [True, False])
def test_pg_delete_uses_kafka_key_and_has_no_values(schemas: bool) -> None:
    msg = ds.pg_message(
        "d", {"id": 1001, **dict.fromkeys(list(ds.customer_row())[1:])}, None, schemas=schemas
    )
    event = change(decoder().decode(msg))
    assert event.op is Op.DELETE
    assert event.key == (1001,)
    assert event.values is None
    assert event.version == pg_version(33842008)


@pytest.mark.parametrize("schemas", [True, False])
def test_pg_delete_with_null_kafka_key_falls_back_to_before(schemas: bool) -> None:
    msg = ds.pg_message("d", ds.customer_row(55), None, schemas=schemas)
    event = change(decoder().decode(msg._replace(key=None)))
    assert (event.op, event.key_columns, event.key) == (Op.DELETE, ("id",), (55,))


@pytest.mark.parametrize("schemas", [True, False])
def test_truncate(schemas: bool) -> None:
    event = decoder().decode(ds.truncate_message(schemas))
    assert event == TruncateEvent(CUSTOMERS, pg_version(33900000), ds.PG_TOPIC, 0, 42)


def test_truncate_follows_table_map() -> None:
    event = decoder({ds.PG_TOPIC: "crm.clients"}).decode(ds.truncate_message())
    assert isinstance(event, TruncateEvent)
    assert event.table == TableName("crm", "clients")


@pytest.mark.parametrize("schemas", [True, False])
def test_toast_placeholder_column_is_omitted(schemas: bool) -> None:
    after = ds.customer_row(bio=TOAST, tags=[TOAST])
    event = change(decoder().decode(ds.pg_message("u", None, after, schemas=schemas)))
    assert event.values == {
        k: v for k, v in expected_customer().items() if k not in ("bio", "tags")
    }


def test_toast_placeholder_in_bytea_and_int_array_columns() -> None:
    fields = [
        ds.field("id", "int32", optional=False),
        ds.field("blob", "bytes"),
        ds.field("nums", "array", items={"type": "int32", "optional": True}),
        ds.field("note", "string"),
    ]
    payload = ds.envelope(
        "u",
        ds.pg_source(),
        None,
        {
            "id": 1,
            "blob": "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ==",
            "nums": list(TOAST.encode()),
            "note": "kept",
        },
    )
    schema = ds.envelope_schema(fields, ds.PG_SOURCE_SCHEMA, "dbserver1.inventory.blobs")
    msg = ds.raw("dbserver1.inventory.blobs", {"schema": schema, "payload": payload}, {"id": 1})
    event = change(decoder().decode(msg))
    assert event.values == {"id": 1, "note": "kept"}


def test_table_map_overrides() -> None:
    dec = decoder({ds.PG_TOPIC: "crm.clients", ds.SQLSERVER_TOPIC: "sales_orders"})
    pg = change(dec.decode(ds.pg_message("c", None, ds.customer_row())))
    ss = change(dec.decode(ds.sqlserver_message("c", None, ds.order_row())))
    assert pg.table == TableName("crm", "clients")
    assert pg.schema is not None and pg.schema.table == TableName("crm", "clients")
    assert ss.table == TableName("public", "sales_orders")


# --- SQL Server, composite keys -----------------------------------------------------------------


@pytest.mark.parametrize("schemas", [True, False])
def test_sqlserver_composite_key_and_version(schemas: bool) -> None:
    event = change(
        decoder().decode(ds.sqlserver_message("c", None, ds.order_row(), schemas=schemas))
    )
    assert event.table == ORDERS
    assert event.key_columns == ("order_id", "line_no")
    assert event.key == (7, 1)
    assert event.version == sqlserver_version("00000027:00000758:0005", "00000027:00000758:0003", 1)
    assert event.values == {
        "order_id": 7,
        "line_no": 1,
        "amount": Decimal("10.0000"),
        "placed_at": datetime(2024, 6, 10, 8, 30, 0, 123456, tzinfo=UTC),
        "ref": "6F9619FF-8B86-D011-B42D-00C04FC964FF",
    }


def test_sqlserver_snapshot_read_with_null_lsns_sorts_below_streamed_change() -> None:
    source = ds.sqlserver_source("00000027:00000758:0005", None, None)
    snap = change(decoder().decode(ds.sqlserver_message("r", None, ds.order_row(), source=source)))
    streamed = change(decoder().decode(ds.sqlserver_message("u", None, ds.order_row())))
    assert snap.op is Op.UPSERT
    assert snap.version == sqlserver_version("00000027:00000758:0005", None, None)
    assert snap.version < streamed.version


def test_sqlserver_delete_composite_key() -> None:
    event = change(decoder().decode(ds.sqlserver_message("d", ds.order_row(9, 3), None)))
    assert (event.op, event.key, event.values) == (Op.DELETE, (9, 3), None)


def test_composite_key_follows_kafka_key_field_order() -> None:
    msg = ds.sqlserver_message("c", None, ds.order_row(), schemas=False)
    reordered = msg._replace(key=orjson.dumps({"line_no": 1, "order_id": 7}))
    event = change(decoder().decode(reordered))
    assert (event.key_columns, event.key) == (("line_no", "order_id"), (1, 7))


# --- skipped messages ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "msg",
    [
        ds.pg_message("d", ds.customer_row(), None)._replace(value=None),  # tombstone
        ds.heartbeat_message(),
        ds.transaction_message(),
        ds.schema_change_message(),
        ds.logical_message(),
        ds.raw(ds.PG_TOPIC, {"schema": None, "payload": None}, {"id": 1}),
    ],
    ids=[
        "tombstone",
        "heartbeat",
        "transaction",
        "schema_change",
        "logical_message",
        "null_payload",
    ],
)
def test_skipped_messages_decode_to_none(msg: RawMessage) -> None:
    assert decoder().decode(msg) is None


def test_decode_step_routes_by_row_broadcasts_markers_and_drops_skipped() -> None:
    settings = Settings(topics=ds.PG_TOPIC, shards=4)
    msgs = [
        ds.pg_message("c", None, ds.customer_row(1), offset=1),
        ds.heartbeat_message(),
        ds.raw(ds.PG_TOPIC, b"{", {"id": 2}, offset=3),
        ds.pg_message("d", ds.customer_row(1), None, offset=4)._replace(value=None),
        ds.pg_message("d", ds.customer_row(1), None, offset=5),
        ProgressMarker(ds.PG_TOPIC, 0, 6),
    ]
    out = dict(DecodeStep(settings)(msgs))
    assert sorted(out) == [shard_part_name(k) for k in range(4)], "a marker reaches every shard"
    items = [item for name in sorted(out) for item in out[name]]
    assert sorted((type(item).__name__, getattr(item, "offset", None)) for item in items) == sorted(
        [("ChangeEvent", 1), ("DlqRecord", 3), ("ChangeEvent", 5)]
        + [("ProgressMarker", None)] * 4)
    for routed in out.values():  # in arrival order: the marker comes last
        assert type(routed[-1]) is ProgressMarker
    first = next(i for i in items if getattr(i, "offset", None) == 1)
    assert isinstance(first, ChangeEvent)
    row_shard = out[shard_part_name(shard_of(first.row_id, 4))]
    assert [getattr(i, "offset", None) for i in row_shard if type(i) is ChangeEvent] == [1, 5]


# --- DLQ ----------------------------------------------------------------------------------------


def customer_value(**payload_changes: Any) -> dict[str, Any]:
    payload = ds.envelope("c", ds.pg_source(), None, ds.customer_row())
    payload.update(payload_changes)
    return payload


def test_dlq_keeps_raw_bytes_and_position() -> None:
    msg = ds.raw(ds.PG_TOPIC, b'{"op": "c", ', b'{"id": 1}', offset=99, partition=3)
    record = dlq(decoder().decode(msg), "malformed_json")
    assert (record.topic, record.partition, record.offset) == (ds.PG_TOPIC, 3, 99)
    assert (record.raw_key, record.raw_value) == (b'{"id": 1}', b'{"op": "c", ')
    assert record.error.startswith("value is not JSON")


@pytest.mark.parametrize(
    ("value", "key", "error_type", "message"),
    [
        ([1, 2], {"id": 1}, "malformed_envelope", "value is a JSON array, not an object"),
        ({"schema": {}, "payload": "x"}, {"id": 1}, "malformed_envelope", "payload is a string"),
        (customer_value(after=[1]), {"id": 1}, "malformed_envelope", "'after' is a array"),
        (customer_value(op=None), {"id": 1}, "missing_op", "value has no 'op' field"),
        (customer_value(op="x"), {"id": 1}, "unknown_op", "op 'x' is not one of"),
        (customer_value(source=None), {"id": 1}, "missing_source", "no 'source' object"),
        (
            customer_value(source={**ds.pg_source(), "connector": "mysql"}),
            {"id": 1},
            "bad_version",
            "source.connector 'mysql' has no version scheme",
        ),
        (
            customer_value(source=ds.pg_source(lsn=None)),
            {"id": 1},
            "bad_version",
            "source.lsn must be an unsigned 64-bit integer",
        ),
        (
            customer_value(source={**ds.sqlserver_source(), "commit_lsn": "27:758:5"}),
            {"id": 1},
            "bad_version",
            "source.commit_lsn must look like",
        ),
        (customer_value(after=None), {"id": 1}, "missing_after", "op 'c' has no 'after'"),
        (customer_value(), b"id=1", "malformed_key", "key is not JSON"),
        (customer_value(), [1], "missing_key", "Kafka key payload is array"),
        (customer_value(), {"schema": {}, "payload": None}, "missing_key", "payload is null"),
        (customer_value(), {"id": None}, "missing_key", "key column(s) ['id'] are null"),
        (customer_value(), {"nope": 1}, "unknown_column", "column 'nope' is not in target table"),
        (
            customer_value(after=ds.customer_row(birthday="2024-06-10x")),
            {"id": 1},
            "bad_value",
            "column 'birthday'",
        ),
        (
            customer_value(after={**ds.customer_row(), "extra": 1}),
            {"id": 1},
            "unknown_column",
            "column 'extra' is not in target table public.customers",
        ),
    ],
)
def test_schemaless_dlq(value: Any, key: Any, error_type: str, message: str) -> None:
    record = dlq(decoder().decode(ds.raw(ds.PG_TOPIC, value, key)), error_type)
    assert message in record.error


def test_null_kafka_key_without_known_primary_key_is_missing_key() -> None:
    msg = ds.pg_message("c", None, ds.customer_row())._replace(key=None)
    record = dlq(decoder(with_catalog=False).decode(msg), "missing_key")
    assert "no primary key is known for public.customers" in record.error


def test_schemaless_unknown_table_and_no_catalog() -> None:
    msg = ds.pg_message("c", None, ds.customer_row(), schemas=False, topic="db.inventory.ghosts")
    assert "public.ghosts" in dlq(decoder().decode(msg), "unknown_table").error
    dlq(decoder(with_catalog=False).decode(msg), "no_schema")


def with_schema_value(mutate: Any) -> RawMessage:
    msg = ds.pg_message("c", None, ds.customer_row())
    doc = orjson.loads(msg.value or b"")
    mutate(doc)
    return msg._replace(value=orjson.dumps(doc))


def test_bad_value_with_schema_names_the_column_and_type() -> None:
    def bad_balance(doc: dict[str, Any]) -> None:
        doc["payload"]["after"]["balance"] = "%%%"

    record = dlq(decoder().decode(with_schema_value(bad_balance)), "bad_value")
    assert record.error.startswith("column 'balance' (numeric(10,2)): cannot convert '%%%'")


def test_bad_key_value_with_schema() -> None:
    msg = ds.pg_message("c", None, ds.customer_row())._replace(key=b'{"id": "one"}')
    record = dlq(decoder().decode(msg), "bad_value")
    assert "column 'id'" in record.error


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["schema"].update(fields=[]), "no 'after' or 'before' struct"),
        (
            lambda d: [f.update(fields=[{"type": "int32"}]) for f in d["schema"]["fields"][:2]],
            "has no name",
        ),
        (
            lambda d: d["schema"]["fields"][1]["fields"].__setitem__(
                1, ds.field("first_name", "wat")
            ),
            "column 'first_name': unsupported Connect schema type 'wat'",
        ),
        (
            lambda d: [f.update(fields=f["fields"][1:]) for f in d["schema"]["fields"][:2]],
            "key column(s) ['id'] are not in the row schema",
        ),
    ],
)
def test_bad_schema(mutate: Any, message: str) -> None:
    record = dlq(decoder().decode(with_schema_value(mutate)), "bad_schema")
    assert message in record.error


def test_truncate_without_source_table_goes_to_dlq() -> None:
    payload = ds.envelope("t", {**ds.pg_source(), "table": None})
    record = dlq(decoder().decode(ds.raw(ds.PG_TOPIC, payload)), "missing_source")
    assert "source.table" in record.error


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5)
    | st.sampled_from(["c", "u", "d", "t", "r", TOAST]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "op",
                    "after",
                    "before",
                    "source",
                    "id",
                    "schema",
                    "payload",
                    "fields",
                    "connector",
                    "lsn",
                    "type",
                    "field",
                    "name",
                    "balance",
                ]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(value=JSON, key=JSON, op=st.sampled_from(["c", "u", "d", "r", "t"]), mutate_row=JSON)
def test_decode_never_raises(value: Any, key: Any, op: str, mutate_row: Any) -> None:
    dec = decoder()
    decoded = (ChangeEvent, TruncateEvent, DlqRecord, type(None))
    assert isinstance(dec.decode(ds.raw(ds.PG_TOPIC, value, key)), decoded)
    payload = ds.envelope(op, ds.pg_source(), None, ds.customer_row())
    if isinstance(mutate_row, dict):
        payload["after"].update(mutate_row)
        payload.update({k: v for k, v in mutate_row.items() if k in ("before", "source")})
    assert isinstance(dec.decode(ds.raw(ds.PG_TOPIC, payload, key)), decoded)
    with_schema = orjson.loads(ds.pg_message(op, None, ds.customer_row()).value or b"")
    with_schema["payload"] = payload
    assert isinstance(dec.decode(ds.raw(ds.PG_TOPIC, with_schema, key)), decoded)
