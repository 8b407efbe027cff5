"""The shard's cell decisions without Postgres (`operators/cell_rows.py`)."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from uuid import UUID

from formats.cells import CellChange, CellKind, RangeBound
from operators.cell_rows import Deletions, RangeDelete, decide_cells
from operators.events import TableName

TABLE = TableName("ks", "items")


def _partition_delete(ts_us: int, offset: int) -> CellChange:
    return CellChange(TABLE, ("id", "ck"), (1, None), 1, CellKind.PARTITION_DELETE, ts_us, False,
                      {}, "t", 0, offset)


def test_a_deletion_every_shard_receives_is_counted_and_audited_by_one():
    changes = [_partition_delete(20, 1), _partition_delete(10, 2)]  # the second is stale
    here = decide_cells(changes, [], lambda ids: [None] * len(ids), Deletions(), 0)
    elsewhere = decide_cells(changes, [], lambda ids: [None] * len(ids), Deletions(), 0,
                             counts_here=lambda change: False)
    assert (here.applied, len(here.stale), here.counts) == (
        1, 1, {("ks.items", "partition_delete", "applied"): 1,
               ("ks.items", "partition_delete", "stale"): 1})
    assert (elsewhere.applied, elsewhere.stale, elsewhere.counts) == (0, [], {})
    assert here.deletes == elsewhere.deletes == [RangeDelete(TABLE, (1,), None, None, 20)]


def test_a_deletion_reads_back_from_its_json_as_it_was():
    delete = RangeDelete(TABLE, (Decimal("1.50"), UUID(int=7), "k"),
                         RangeBound((date(2024, 1, 2), datetime(2024, 1, 2, 3, 4)), True),
                         RangeBound((b"\x00\xff",), False), 42)
    assert RangeDelete.from_json(delete.to_json(), 42) == delete
    assert delete.to_json() == RangeDelete.from_json(delete.to_json(), 1).to_json()
