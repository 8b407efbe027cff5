"""ScyllaDB CDC source connector messages (tests/fixtures/scylla/) → CellChange, and bad ones →
the specific reject."""

from __future__ import annotations

import ipaddress
import json
import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from formats.cells import CellChange, CellKind
from formats.scylla import NoRowImage, ScyllaDialect, decode_scylla
from operators.events import DlqRecord, RawMessage, TableName
from operators.versions import writetime_version

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "scylla"
ORDERS = TableName("public", "orders")
# shop.orders as CREATE TABLE declares it (tests/fixtures/scylla/README.md)
CQL_TYPES = {
    "customer_id": "int", "order_id": "int", "addr": "frozen<address>", "amount": "decimal",
    "attrs": "map<text, int>", "big": "bigint", "client_ip": "inet", "event_id": "timeuuid",
    "flag": "boolean", "item_id": "uuid", "lines": "list<int>", "note": "text",
    "pair": "frozen<tuple<int, text>>", "payload": "blob", "placed_at": "timestamp",
    "placed_on": "date", "qty": "varint", "ratio": "float", "score": "double",
    "ship_time": "time", "small": "smallint", "tags": "set<text>", "tiny": "tinyint",
    "wait": "duration",
}
SCALAR_ROW = {
    "amount": Decimal("12345.67"), "big": 1234567890123,
    "client_ip": ipaddress.ip_address("127.0.0.1"),
    "event_id": uuid.UUID("81d4a030-4632-11f0-9484-409dd8f36eba"), "flag": True,
    "item_id": uuid.UUID("453662fa-db4b-4938-9033-d8523c0a371c"), "note": "text_val",
    "payload": b"\xca\xfe\xba\xbe",
    "placed_at": datetime(2024, 6, 10, 12, 34, 56, 789000, tzinfo=UTC),
    "placed_on": date(2024, 6, 10), "qty": Decimal(999999999), "ratio": 2.71828,
    "score": 3.14159, "ship_time": time(12, 34, 56, 789000), "small": 7, "tiny": 5,
    "wait": timedelta(days=1, hours=12, minutes=30),
}
COLLECTIONS_ROW = {
    "addr": {"street": "Main St", "zip": 12345}, "attrs": {"a": 1, "b": 2},
    "lines": [10, 20, 30], "pair": [1, "tuple1"], "tags": ["x", "y", "z"],
}


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def message(doc: dict[str, Any], offset: int = 7) -> RawMessage:
    key = None if doc["key"] is None else json.dumps(doc["key"]).encode()
    value = None if doc["value"] is None else json.dumps(doc["value"]).encode()
    return RawMessage(doc["topic"], 3, offset, key, value)


def decode(name: str, table: TableName = ORDERS) -> CellChange:
    change = decode_scylla(message(load(name)), table, CQL_TYPES)
    assert isinstance(change, CellChange), change
    return change


@pytest.mark.parametrize("fmt", ["legacy", "advanced_full", "advanced_only_updated"])
def test_an_insert_writes_the_row_marker_and_every_cell_it_shows(fmt: str) -> None:
    change = decode(f"{fmt}_insert")
    expected = SCALAR_ROW if fmt == "legacy" else {**SCALAR_ROW, **COLLECTIONS_ROW}
    assert (change.kind, change.row_marker, change.ts_us) == (CellKind.WRITE, True,
                                                              1718022896789001)
    assert (change.key_columns, change.key) == (("customer_id", "order_id"), (1, 1))
    assert change.cells == expected
    assert (change.expires_us, change.snapshot, change.range_start) == ({}, False, None)
    assert (change.topic, change.partition, change.offset) == ("MyScyllaCluster.shop.orders", 3,
                                                               7)


@pytest.mark.parametrize("fmt", ["legacy", "advanced_full", "advanced_only_updated"])
def test_a_partial_update_writes_only_the_cells_it_changed(fmt: str) -> None:
    change = decode(f"{fmt}_update_partial")
    assert (change.kind, change.row_marker, change.ts_us) == (CellKind.WRITE, False,
                                                              1718022900000002)
    assert change.cells == {"amount": Decimal("98765.43"), "note": "text_val2"}


@pytest.mark.parametrize("fmt", ["legacy", "advanced_full", "advanced_only_updated"])
def test_an_update_to_null_writes_a_null_cell(fmt: str) -> None:
    change = decode(f"{fmt}_update_set_null")
    assert (change.kind, change.ts_us, change.cells) == (CellKind.WRITE, 1718022910000003,
                                                         {"note": None})


@pytest.mark.parametrize("fmt", ["legacy", "advanced_full", "advanced_only_updated"])
def test_a_row_delete_is_a_row_tombstone_at_its_write_time(fmt: str) -> None:
    change = decode(f"{fmt}_row_delete")
    assert (change.kind, change.key, change.ts_us) == (CellKind.ROW_DELETE, (1, 1),
                                                       1718022920000004)
    assert (change.cells, change.row_marker, change.partition_key_columns) == ({}, False, None)


def test_an_advanced_partition_delete_without_images_covers_the_partition() -> None:
    change = decode("advanced_full_partition_delete", TableName("public", "carts"))
    assert (change.kind, change.key_columns, change.key) == (CellKind.PARTITION_DELETE,
                                                             ("cart_id",), (7,))
    assert (change.partition_key_columns, change.partition_key, change.ts_us) == (
        1, (7,), 1718022930000005)


def test_a_legacy_partition_delete_reads_as_the_row_delete_it_equals() -> None:
    change = decode("legacy_partition_delete", TableName("public", "carts"))
    assert (change.kind, change.key, change.ts_us) == (CellKind.ROW_DELETE, (7,),
                                                       1718022930000005)


def test_without_declared_types_the_connect_schema_decides() -> None:
    change = decode_scylla(message(load("legacy_insert")), ORDERS)
    assert isinstance(change, CellChange)
    assert (change.cells["amount"], change.cells["ship_time"], change.cells["tiny"]) == (
        "12345.67", 45296789000000, 5)


def test_a_full_update_without_a_before_image_writes_every_non_null_cell() -> None:
    doc = load("advanced_full_update_partial")
    doc["value"]["payload"]["before"] = None
    change = decode_scylla(message(doc), ORDERS, CQL_TYPES)
    assert isinstance(change, CellChange)
    assert change.cells == {**SCALAR_ROW, **COLLECTIONS_ROW, "amount": Decimal("98765.43"),
                            "note": "text_val2"}


def test_the_version_is_the_write_time() -> None:
    source = load("legacy_insert")["value"]["payload"]["source"]
    assert ScyllaDialect().version(source) == writetime_version(1718022896789001)
    assert (ScyllaDialect.connector, ScyllaDialect.native) == ("scylla", False)
    assert decode("legacy_insert").version == writetime_version(1718022896789001)


def test_a_kafka_tombstone_after_a_delete_carries_nothing() -> None:
    doc = load("legacy_row_delete")
    doc["value"] = None
    assert decode_scylla(message(doc), ORDERS) is None


def test_images_of_none_stop_the_flow_naming_the_settings() -> None:
    doc = load("advanced_full_update_partial")
    doc["value"]["payload"]["before"] = doc["value"]["payload"]["after"] = None
    with pytest.raises(NoRowImage, match=r"cdc\.include\.before.*cdc\.include\.after") as err:
        decode_scylla(message(doc), ORDERS)
    assert err.value.error_type == "no_row_image"


def _poisoned(name: str, edit: Any) -> DlqRecord:
    doc = load(name)
    edit(doc)
    record = decode_scylla(message(doc), ORDERS, CQL_TYPES)
    assert isinstance(record, DlqRecord), record
    assert (record.topic, record.partition, record.offset) == (doc["topic"], 3, 7)
    return record


def _set(path: str, value: Any) -> Any:
    def edit(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = doc
        for part in parents:
            node = node[part]
        node[last] = value
    return edit


@pytest.mark.parametrize(("name", "edit", "error_type"), [
    ("legacy_insert", _set("value.payload.op", None), "missing_op"),
    ("legacy_insert", _set("value.payload.op", "r"), "unknown_op"),
    ("legacy_insert", _set("value.payload.source", None), "missing_source"),
    ("legacy_insert", _set("value.payload.source.ts_us", "soon"), "bad_version"),
    ("legacy_insert", _set("value.payload.after", None), "missing_after"),
    ("legacy_insert", _set("value.payload.after.note", "bare"), "bad_value"),
    ("legacy_insert", _set("value.payload.after.qty", {"value": "1.5"}), "bad_value"),
    ("legacy_insert", _set("value.payload.after", []), "malformed_envelope"),
    ("legacy_insert", _set("value.payload", 5), "malformed_envelope"),
    ("legacy_insert", _set("value.schema", None), "no_schema"),
    ("legacy_insert", _set("value.schema.fields", []), "bad_schema"),
    ("legacy_insert", _set("key", None), "missing_key"),
    ("legacy_insert", _set("key.payload.order_id", None), "missing_key"),
    ("legacy_insert", _set("key.payload.shop_id", 1), "bad_schema"),
    ("advanced_full_update_partial", _set("value.payload.after", None), "missing_after"),
    ("advanced_full_insert", _set("value.payload.after.attrs", 3), "bad_value"),
    ("advanced_full_insert", _set("value.payload.after.client_ip", "nowhere"), "bad_value"),
])
def test_a_bad_message_goes_to_the_dlq_with_a_specific_reason(name: str, edit: Any,
                                                              error_type: str) -> None:
    assert _poisoned(name, edit).error_type == error_type


def test_a_value_that_is_not_json_is_malformed_json() -> None:
    msg = message(load("legacy_insert"))._replace(value=b"{not json")
    record = decode_scylla(msg, ORDERS)
    assert isinstance(record, DlqRecord) and record.error_type == "malformed_json"


def test_a_declared_type_that_does_not_fit_the_schema_is_bad_schema() -> None:
    record = decode_scylla(message(load("legacy_insert")), ORDERS, {"note": "int"})
    assert isinstance(record, DlqRecord)
    assert (record.error_type, "'note'" in record.error) == ("bad_schema", True)


def test_a_key_no_state_key_can_be_made_of_goes_to_the_dlq_as_unsupported_key() -> None:
    """A key value of a type the state keys cannot hold (here a duration) rejects the message."""
    doc = load("legacy_insert")
    doc["key"]["payload"]["customer_id"] = "1h"
    after = next(f for f in doc["value"]["schema"]["fields"] if f["field"] == "after")
    next(f for f in after["fields"] if f["field"] == "customer_id")["type"] = "string"
    doc["value"]["payload"]["after"]["customer_id"] = "1h"
    record = decode_scylla(message(doc), ORDERS, {**CQL_TYPES, "customer_id": "duration"})
    assert isinstance(record, DlqRecord), record
    assert record.error_type == "unsupported_key", record.error
