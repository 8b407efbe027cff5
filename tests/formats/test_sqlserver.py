"""The Debezium SQL Server dialect against the contract, on both decoders."""

from __future__ import annotations

import json
from pathlib import Path

from formats.registry import DIALECTS
from operators.events import RawMessage
from tests.formats.contract import DialectContract
from tests.unit import debezium_samples as ds

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "debezium"


def lsn(rank: int) -> str:
    return f"00000027:{rank:08x}:0005"


class TestSqlServer(DialectContract):
    dialect = DIALECTS["sqlserver"]

    def message(self, op: str, key: int, rank: int, offset: int) -> RawMessage:
        row = ds.order_row(key)
        before, after = (row, None) if op == "d" else (None, row)
        source = ds.sqlserver_source(commit_lsn=lsn(rank), change_lsn=lsn(rank))
        return ds.sqlserver_message(op, before, after, source=source, offset=offset)

    def bad_version(self, offset: int) -> RawMessage:
        source = ds.sqlserver_source(commit_lsn="not-an-lsn")
        return ds.sqlserver_message("c", None, ds.order_row(1), source=source, offset=offset)


def documented_source(name: str) -> dict:
    """The `source` block of a documented SQL Server message (tests/fixtures/debezium/)."""
    doc = json.loads((FIXTURES / name).read_text())
    return doc["value"]["payload"]["source"]


def test_versions_follow_commit_order_across_a_snapshot() -> None:
    """Documented shapes: streamed changes carry their own commit's LSN; a snapshot's rows carry
    the LSN it read at as commit_lsn and nulls after it. A transaction open while the snapshot
    read commits after it, with change LSNs below the snapshot's: it still ranks above the rows."""
    create, update, delete = (documented_source(f"sqlserver_{op}.json")
                              for op in ("create", "update", "delete"))
    point = "00000027:00000900:0001"  # read between the create's and the update's commits
    snapshot_row = {**create, "snapshot": "true", "commit_lsn": point, "change_lsn": None,
                    "event_serial_no": None}
    in_flight = {**update, "change_lsn": "00000027:00000800:0002"}  # written before the point
    at_point = {**update, "commit_lsn": point, "change_lsn": "00000027:00000900:0000"}
    order = [create, snapshot_row, at_point, in_flight, update, delete]
    versions = [TestSqlServer.dialect.version(s, lambda: 0) for s in order]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert [s["commit_lsn"] for s in order] == sorted(s["commit_lsn"] for s in order)
