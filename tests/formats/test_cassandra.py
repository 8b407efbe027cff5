"""Debezium Cassandra connector messages (tests/fixtures/cassandra/) → CellChange, and bad ones →
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

from formats.cassandra import CassandraDialect, decode_cassandra
from formats.cells import CellChange, CellKind, RangeBound
from operators.events import DlqRecord, RawMessage, TableName
from operators.versions import writetime_version

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cassandra"
ORDERS = TableName("public", "orders")
# inventory.orders as CREATE TABLE declares it (tests/fixtures/cassandra/README.md)
CQL_TYPES = {
    "customer_id": "int", "order_id": "int", "addr": "frozen<address>", "amount": "decimal",
    "attrs": "map<text, int>", "client_ip": "inet", "event_id": "timeuuid", "item_id": "uuid",
    "lines": "list<int>", "note": "text", "pair": "frozen<tuple<int, text>>", "payload": "blob",
    "placed_at": "timestamp", "placed_on": "date", "qty": "varint", "ship_time": "time",
    "tags": "set<text>", "wait": "duration",
}
ROW = {
    "addr": {"street": "Main St", "zip": 12345}, "amount": Decimal("12345.67"),
    "attrs": {"a": 1, "b": 2}, "client_ip": ipaddress.ip_address("127.0.0.1"),
    "event_id": uuid.UUID("81d4a030-4632-11f0-9484-409dd8f36eba"),
    "item_id": uuid.UUID("453662fa-db4b-4938-9033-d8523c0a371c"), "lines": [10, 20, 30],
    "note": "text_val", "pair": [1, "tuple1"], "payload": b"\xca\xfe\xba\xbe",
    "placed_at": datetime(2024, 6, 10, 12, 34, 56, 789000, tzinfo=UTC),
    "placed_on": date(2024, 6, 10), "qty": Decimal(999999999),
    "ship_time": time(12, 34, 56, 789000), "tags": ["x", "y", "z"],
    "wait": timedelta(days=1, hours=12, minutes=30),
}


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def message(doc: dict[str, Any]) -> RawMessage:
    key = None if doc["key"] is None else json.dumps(doc["key"]).encode()
    value = None if doc["value"] is None else json.dumps(doc["value"]).encode()
    return RawMessage(doc["topic"], 2, 11, key, value)


def decode(name: str) -> CellChange:
    change = decode_cassandra(message(load(name)), ORDERS, CQL_TYPES)
    assert isinstance(change, CellChange), change
    return change


def test_an_insert_writes_the_row_marker_and_every_cell() -> None:
    change = decode("insert")
    assert (change.kind, change.row_marker, change.ts_us) == (CellKind.WRITE, True,
                                                              1718022896789001)
    assert (change.key_columns, change.key) == (("customer_id", "order_id"), (1, 1))
    assert change.cells == ROW
    assert (change.expires_us, change.snapshot, change.partition_key_columns) == ({}, False,
                                                                                 None)
    assert (change.topic, change.partition, change.offset) == (
        "cassandra-cluster-1.inventory.orders", 2, 11)


def test_an_update_of_one_column_writes_only_that_cell() -> None:
    change = decode("update_one_column")
    assert (change.kind, change.row_marker, change.ts_us) == (CellKind.WRITE, False,
                                                              1718022900000002)
    assert change.cells == {"note": "text_val2"}


def test_a_ttl_cell_carries_its_expiry() -> None:
    change = decode("update_with_ttl")
    assert (change.cells, change.expires_us, change.ts_us) == (
        {"note": "ttl_val"}, {"note": 1718026510000000}, 1718022910000003)


def test_an_update_to_null_writes_a_null_cell_without_expiry() -> None:
    change = decode("update_set_null")
    assert (change.kind, change.cells, change.expires_us) == (CellKind.WRITE, {"note": None}, {})


def test_a_row_delete_is_a_row_tombstone_at_its_deletion_time() -> None:
    change = decode("row_delete")
    assert (change.kind, change.key, change.ts_us) == (CellKind.ROW_DELETE, (1, 1),
                                                       1718022920000004)
    assert (change.cells, change.row_marker, change.expires_us) == ({}, False, {})


def test_a_delete_with_null_clustering_values_deletes_the_partition() -> None:
    change = decode("partition_delete")
    assert (change.kind, change.key, change.ts_us) == (CellKind.PARTITION_DELETE, (1, None),
                                                       1718022925000007)
    assert (change.partition_key_columns, change.partition_key, change.cells) == (1, (1,), {})


def test_a_range_tombstone_carries_its_bounds() -> None:
    change = decode("range_delete")
    assert (change.kind, change.partition_key, change.ts_us) == (CellKind.RANGE_DELETE, (1,),
                                                                 1718022930000005)
    assert (change.range_start, change.range_end) == (RangeBound((1,), False),
                                                      RangeBound((5,), True))
    assert (change.cells, change.row_marker) == ({}, False)


def test_an_open_range_bound_has_no_values() -> None:
    doc = load("range_delete")
    doc["value"]["payload"]["after"]["_range_start"] = {"method": "INCL_START_BOUND",
                                                        "values": []}
    change = decode_cassandra(message(doc), ORDERS)
    assert isinstance(change, CellChange)
    assert change.range_start == RangeBound((), True)


def test_a_snapshot_row_is_an_insert_at_the_snapshot_time_with_its_ttls() -> None:
    change = decode("snapshot_row")
    assert (change.kind, change.row_marker, change.snapshot) == (CellKind.WRITE, True, True)
    assert (change.ts_us, change.cells, change.expires_us) == (
        1718022896789000, ROW, {"note": 1718026496789000})


def test_without_declared_types_the_connect_schema_decides() -> None:
    change = decode_cassandra(message(load("insert")), ORDERS)
    assert isinstance(change, CellChange)
    assert (change.cells["amount"], change.cells["client_ip"], change.cells["ship_time"]) == (
        12345.67, "/127.0.0.1", 45296789000000)


def test_the_version_is_the_write_time() -> None:
    source = load("insert")["value"]["payload"]["source"]
    assert CassandraDialect().version(source) == writetime_version(1718022896789001)
    assert (CassandraDialect.connector, CassandraDialect.native) == ("cassandra", False)


def test_a_kafka_tombstone_carries_nothing() -> None:
    doc = load("row_delete")
    doc["value"] = None
    assert decode_cassandra(message(doc), ORDERS) is None


def _set(path: str, value: Any) -> Any:
    def edit(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = value
    return edit


AFTER = "value.payload.after"
RANGE_START = f"{AFTER}._range_start"


@pytest.mark.parametrize(("name", "edit", "error_type"), [
    ("insert", _set("value.payload.op", None), "missing_op"),
    ("insert", _set("value.payload.op", "c"), "unknown_op"),
    ("insert", _set("value.payload.source", "x"), "missing_source"),
    ("insert", _set("value.payload.source.ts_us", 1.5), "bad_version"),
    ("insert", _set(AFTER, None), "missing_after"),
    ("insert", _set(f"{AFTER}.note", "bare"), "bad_value"),
    ("insert", _set(f"{AFTER}.qty.value", "many"), "bad_value"),
    ("insert", _set(f"{AFTER}.client_ip.value", "/nowhere"), "bad_value"),
    ("update_with_ttl", _set(f"{AFTER}.note.deletion_ts", "later"), "bad_value"),
    ("insert", _set("value.schema", None), "no_schema"),
    ("insert", _set("value.schema.fields.3.fields.0.fields", []), "bad_schema"),
    ("insert", _set("key", None), "missing_key"),
    ("insert", _set("key.payload.order_id", None), "missing_key"),
    ("insert", _set("key.payload.customer_id", None), "missing_key"),
    ("partition_delete", _set("key.payload.customer_id", None), "missing_key"),
    ("insert", _set("key", {"schema": {}, "payload": "1"}), "missing_key"),
    ("range_delete", _set(RANGE_START, None), "malformed_envelope"),
    ("range_delete", _set(f"{RANGE_START}.method", "INCL_END_BOUND"), "malformed_envelope"),
    ("range_delete", _set(f"{RANGE_START}.values.0.name", "note"), "malformed_envelope"),
    ("range_delete", _set(f"{RANGE_START}.values.0.value", "one"), "bad_value"),
    ("range_delete", _set(f"{RANGE_START}.values.0.type", "ListType"), "bad_value"),
    ("update_with_ttl", _set(f"{AFTER}.note.deletion_ts", 1 << 63), "bad_value"),
    ("update_with_ttl", _set(f"{AFTER}.note.deletion_ts", -5), "bad_value"),
    # a descending clustering column, Cassandra's UUID order: values do not say the range
    ("range_delete", _set(f"{RANGE_START}.values.0.type",
                          "org.apache.cassandra.db.marshal.ReversedType("
                          "org.apache.cassandra.db.marshal.Int32Type)"), "unsupported_range"),
    ("range_delete", _set(f"{RANGE_START}.values.0.type",
                          "org.apache.cassandra.db.marshal.TimeUUIDType"), "unsupported_range"),
])
def test_a_bad_message_goes_to_the_dlq_with_a_specific_reason(name: str, edit: Any,
                                                              error_type: str) -> None:
    doc = load(name)
    edit(doc)
    record = decode_cassandra(message(doc), ORDERS, CQL_TYPES)
    assert isinstance(record, DlqRecord), record
    assert (record.error_type, record.offset) == (error_type, 11)


def test_an_insert_whose_cells_all_expire_at_one_time_has_a_marker_expiring_then() -> None:
    """INSERT ... USING TTL (or a table's default TTL) gives the marker the cells' TTL; the
    message shows it on the cells only."""
    doc = load("insert")
    after = doc["value"]["payload"]["after"]
    for name, cell in after.items():
        if name not in ("customer_id", "order_id") and cell is not None:
            cell["deletion_ts"] = 1_900_000_000_000_000 if cell["value"] is not None else None
    change = decode_cassandra(message(doc), ORDERS, CQL_TYPES)
    assert isinstance(change, CellChange) and change.marker_expires_us == 1_900_000_000_000_000
    after["note"]["deletion_ts"] = None  # one value without a TTL: not an INSERT's TTL
    change = decode_cassandra(message(doc), ORDERS, CQL_TYPES)
    assert isinstance(change, CellChange) and change.marker_expires_us is None
    assert decode("update_with_ttl").marker_expires_us is None  # an UPDATE has no marker


def test_the_docs_examples_op_c_is_not_the_connectors() -> None:
    """The docs' `"op": "c"` (docs_examples/) is not what the code writes: rejected."""
    doc = load("insert")
    doc["value"]["payload"]["op"] = json.loads(
        (FIXTURES / "docs_examples" / "customers_insert_payload.json").read_text())["op"]
    record = decode_cassandra(message(doc), ORDERS)
    assert isinstance(record, DlqRecord) and record.error_type == "unknown_op"
