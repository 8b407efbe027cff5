from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, NamedTuple

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
    assert event.version == pg_version(33841900, 33842008)
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
    assert event.version == pg_version(33841900, 33842008)


@pytest.mark.parametrize("schemas", [True, False])
def test_pg_delete_with_null_kafka_key_falls_back_to_before(schemas: bool) -> None:
    msg = ds.pg_message("d", ds.customer_row(55), None, schemas=schemas)
    event = change(decoder().decode(msg._replace(key=None)))
    assert (event.op, event.key_columns, event.key) == (Op.DELETE, ("id",), (55,))


@pytest.mark.parametrize("schemas", [True, False])
def test_truncate(schemas: bool) -> None:
    event = decoder().decode(ds.truncate_message(schemas))
    assert event == TruncateEvent(CUSTOMERS, pg_version(33841900, 33900000), ds.PG_TOPIC, 0, 42)


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


# --- every message has one outcome ---------------------------------------------------------------

SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5)
NOT_OBJECTS = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3), max_leaves=5)
KEY_FIELDS = [ds.field("id", "int32", optional=False)]
HEARTBEAT_TOPIC = "__debezium-heartbeat.dbserver1"


class Expected(NamedTuple):
    """A message's outcome: `ChangeEvent` with its op, `DlqRecord` with its error type, or
    None for a message that is skipped."""

    outcome: type | None
    detail: Op | str | None = None


@dataclass
class Built:
    """A valid customers change as documents, for one defect to be applied to."""

    schemas: bool
    op: str
    key: Any  # the Kafka key document (None: no key)
    value: Any  # the value document (None: a tombstone)
    payload: dict[str, Any]
    topic: str = ds.PG_TOPIC

    @property
    def image(self) -> dict[str, Any]:
        return self.payload["before" if self.op == "d" else "after"]

    def set_key_payload(self, key: Any) -> None:
        self.key = ds.key_doc(key, KEY_FIELDS, ds.PG_TOPIC, self.schemas)

    def message(self) -> RawMessage:
        return ds.raw(self.topic, self.value, self.key, offset=7)


def _event(built: Built) -> Expected:
    return Expected(ChangeEvent, Op.DELETE if built.op == "d" else Op.UPSERT)


def _dlq(error_type: str) -> Callable[[Built], Expected]:
    return lambda _: Expected(DlqRecord, error_type)


def _skip(_: Built) -> Expected:
    return Expected(None)


# Each defect: (applies it to a valid change, drawing what it needs) -> the outcome it causes.
Defect = Callable[[Built, st.DrawFn], Expected]


def _no_defect(built: Built, draw: st.DrawFn) -> Expected:
    return _event(built)


def _no_kafka_key(built: Built, draw: st.DrawFn) -> Expected:
    built.key = None  # the key comes from the row image and the table's primary key
    return _event(built)


def _truncated_value(built: Built, draw: st.DrawFn) -> Expected:
    whole = orjson.dumps(built.value)
    built.value = whole[: draw(st.integers(1, len(whole) - 1))]
    return Expected(DlqRecord, "malformed_json")


def _value_not_an_object(built: Built, draw: st.DrawFn) -> Expected:
    built.value = orjson.dumps(draw(NOT_OBJECTS))
    return Expected(DlqRecord, "malformed_envelope")


def _payload_not_an_object(built: Built, draw: st.DrawFn) -> Expected:
    built.value = {"schema": {}, "payload": draw(NOT_OBJECTS.filter(lambda v: v is not None))}
    return Expected(DlqRecord, "malformed_envelope")


def _null_payload(built: Built, draw: st.DrawFn) -> Expected:
    built.value = {"schema": built.value.get("schema"), "payload": None}
    return Expected(None)


def _tombstone(built: Built, draw: st.DrawFn) -> Expected:
    built.value = None
    return Expected(None)


def _heartbeat_topic(built: Built, draw: st.DrawFn) -> Expected:
    built.topic = HEARTBEAT_TOPIC
    return Expected(None)


def _schema_change(built: Built, draw: st.DrawFn) -> Expected:
    built.payload[draw(st.sampled_from(["ddl", "tableChanges"]))] = "ALTER TABLE customers"
    return Expected(None)


def _logical_message(built: Built, draw: st.DrawFn) -> Expected:
    built.payload["op"] = "m"
    return Expected(None)


def _no_op(built: Built, draw: st.DrawFn) -> Expected:
    if draw(st.booleans()):
        del built.payload["op"]
    else:
        built.payload["op"] = None
    return Expected(DlqRecord, "missing_op")


def _unknown_op(built: Built, draw: st.DrawFn) -> Expected:
    built.payload["op"] = draw(SCALARS.filter(lambda v: v not in (None, "c", "u", "r", "d", "t",
                                                                 "m")))
    return Expected(DlqRecord, "unknown_op")


def _no_source(built: Built, draw: st.DrawFn) -> Expected:
    built.payload["source"] = draw(NOT_OBJECTS)
    return Expected(DlqRecord, "missing_source")


def _bad_lsn(built: Built, draw: st.DrawFn) -> Expected:
    built.payload["source"]["lsn"] = draw(st.none() | st.booleans() | st.text(max_size=5)
                                          | st.integers(-(2**63), -1) | st.floats(0.5, 1e6))
    return Expected(DlqRecord, "bad_version")


def _unknown_connector(built: Built, draw: st.DrawFn) -> Expected:
    built.payload["source"]["connector"] = draw(st.sampled_from(["mysql", "mongodb", "", None]))
    return Expected(DlqRecord, "bad_version")


def _no_row_image(built: Built, draw: st.DrawFn) -> Expected:
    built.payload["before" if built.op == "d" else "after"] = None
    return _event(built) if built.op == "d" else Expected(DlqRecord, "missing_after")


def _row_image_not_an_object(built: Built, draw: st.DrawFn) -> Expected:
    built.payload["before" if built.op == "d" else "after"] = draw(
        NOT_OBJECTS.filter(lambda v: v is not None))
    return Expected(DlqRecord, "malformed_envelope")


def _key_not_json(built: Built, draw: st.DrawFn) -> Expected:
    built.key = b"id=" + str(draw(st.integers(0, 99))).encode()
    return Expected(DlqRecord, "malformed_key")


def _key_not_a_struct(built: Built, draw: st.DrawFn) -> Expected:
    built.set_key_payload(draw(NOT_OBJECTS.filter(lambda v: v is not None) | st.just({})))
    return Expected(DlqRecord, "missing_key")


def _null_key_column(built: Built, draw: st.DrawFn) -> Expected:
    built.set_key_payload({"id": None})
    return Expected(DlqRecord, "missing_key")


def _key_column_not_in_table(built: Built, draw: st.DrawFn) -> Expected:
    built.set_key_payload({"nope": 1})
    return Expected(DlqRecord, "bad_schema" if built.schemas else "unknown_column")


def _column_not_in_table(built: Built, draw: st.DrawFn) -> Expected:
    built.image["extra"] = draw(SCALARS.filter(lambda v: v is not None))
    if built.op == "d":
        return _event(built)  # a delete's before image is not read when the Kafka key is there
    # with a schema, only the schema's columns are read
    return _event(built) if built.schemas else Expected(DlqRecord, "unknown_column")


def _unconvertible_value(built: Built, draw: st.DrawFn) -> Expected:
    built.image["birthday"] = draw(st.text(min_size=1, max_size=5) | st.integers(10**10, 10**12)
                                   | st.lists(st.integers(0, 9), max_size=2))
    return _event(built) if built.op == "d" else Expected(DlqRecord, "bad_value")


DEFECTS: list[Defect] = [
    _no_defect, _no_kafka_key, _truncated_value, _value_not_an_object, _payload_not_an_object,
    _null_payload, _tombstone, _heartbeat_topic, _schema_change, _logical_message, _no_op,
    _unknown_op, _no_source, _bad_lsn, _unknown_connector, _no_row_image,
    _row_image_not_an_object, _key_not_json, _key_not_a_struct, _null_key_column,
    _key_column_not_in_table, _column_not_in_table, _unconvertible_value,
]


def _valid_change(schemas: bool, op: str, id_: int, name: str) -> Built:
    row = ds.customer_row(id_, first_name=name)
    payload = ds.envelope(op, ds.pg_source(), row if op in ("d", "u") else None,
                          None if op == "d" else row)
    value: Any = payload
    if schemas:
        schema = ds.envelope_schema(ds.CUSTOMER_FIELDS, ds.PG_SOURCE_SCHEMA, ds.PG_TOPIC)
        value = {"schema": schema, "payload": payload}
    built = Built(schemas, op, None, value, payload)
    built.set_key_payload({"id": id_})
    return built


class Case(NamedTuple):
    message: RawMessage
    expected: Expected
    schemas: bool
    id: int
    first_name: str


@st.composite
def messages_with_outcomes(draw: st.DrawFn) -> Case:
    """A valid customers change with at most one defect, and the outcome that defect causes."""
    schemas, id_, name = draw(st.booleans()), draw(st.integers(1, 2**31 - 1)), draw(st.text())
    built = _valid_change(schemas, draw(st.sampled_from("cudr")), id_, name)
    expected = draw(st.sampled_from(DEFECTS))(built, draw)
    return Case(built.message(), expected, schemas, id_, name)


@settings(max_examples=600, deadline=None)
@given(case=messages_with_outcomes(), warm=st.booleans())
def test_each_message_decodes_to_the_outcome_of_its_defect(case: Case, warm: bool) -> None:
    """Never raises, and never answers 'something': an event with the op and key the message
    says, the DLQ with the reason of its one defect (and its raw bytes), or a skip. `warm`: the
    decoder first learned the valid message's schema bytes (the learned-prefix and native
    paths)."""
    msg, expected = case.message, case.expected
    dec = decoder()
    if warm:
        change(dec.decode(_valid_change(case.schemas, "c", 1, "warm").message()))
    result = dec.decode(msg)
    assert type(result) is (type(None) if expected.outcome is None else expected.outcome), result
    if expected.outcome is ChangeEvent:
        assert (result.op, result.key, result.offset) == (expected.detail, (case.id,), 7)
        if result.op is Op.UPSERT:
            assert result.values is not None and result.values["first_name"] == case.first_name
    elif expected.outcome is DlqRecord:
        assert result.error_type == expected.detail, result.error
        assert (result.raw_key, result.raw_value, result.offset) == (msg.key, msg.value, 7)
