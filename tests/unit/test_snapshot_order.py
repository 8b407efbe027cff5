"""Postgres versions follow commit order across a snapshot (docs/architecture.md, "Versions"):
snapshot rows rank at their snapshot's LSN, a transaction committed after it above them even when
its changes were written before it, and every transaction above the ones committed before it."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.decode import Decoder
from operators.events import RawMessage
from operators.snapshot_points import SnapshotPoints
from tests.e2e.test_captured_messages import fixture
from tests.unit import debezium_samples as ds

IN_FLIGHT = ("in_flight_snapshot_row.json", "in_flight_update.json", "in_flight_next_update.json")
SNAPSHOT_ROWS = ("true", "first", "first_in_data_collection", "last_in_data_collection", "last")


def message(offset: int, key: int, lsn: int, last_commit: int | None,
            snapshot: str = "false") -> RawMessage:
    """A change of customer `key` as the Postgres connector writes it."""
    sequence = orjson.dumps([None if last_commit is None else str(last_commit), str(lsn)])
    source = ds.pg_source(lsn, sequence=sequence.decode(), snapshot=snapshot)
    op = "r" if snapshot in SNAPSHOT_ROWS else "u"
    schema = ds.envelope_schema(ds.CUSTOMER_FIELDS, ds.PG_SOURCE_SCHEMA, "srv.public.customers")
    value = {"schema": schema, "payload": ds.envelope(op, source, None, ds.customer_row(key))}
    key_doc = ds.key_doc({"id": key}, [ds.field("id", "int32", optional=False)],
                         "srv.public.customers", True)
    return ds.raw(ds.PG_TOPIC, value, key_doc, offset)


def versions(decoder: Decoder, messages: list[RawMessage]) -> list[bytes]:
    return [decoder.decode(m).version for m in messages]  # type: ignore[union-attr]


def test_the_captured_in_flight_change_ranks_between_the_snapshot_and_the_next_commit() -> None:
    snapshot, in_flight, after = versions(Decoder("public", {}, None, native=True),
                                          [fixture(n)[1] for n in IN_FLIGHT])
    assert snapshot < in_flight < after


def test_a_decoder_started_between_the_snapshot_and_the_first_transaction_reads_the_point(
) -> None:
    """The snapshot rows were decoded (and their offsets committed) before a restart: the next
    decoder knows the snapshot only from the recorded point."""
    first = Decoder("public", {}, None, native=True)
    (snapshot,) = versions(first, [fixture(IN_FLIGHT[0])[1]])
    recorded = first.snapshot_points.take_new()
    assert [(t, p, o) for t, p, o, _ in recorded] == [(fixture(IN_FLIGHT[0])[1].topic, 0, 0)]
    restarted = Decoder("public", {}, None, native=True,
                        snapshot_points=SnapshotPoints(lambda: recorded))
    in_flight, after = versions(restarted, [fixture(n)[1] for n in IN_FLIGHT[1:]])
    assert snapshot < in_flight < after
    forgetful = Decoder("public", {}, None, native=True)  # what the point is for
    assert versions(forgetful, [fixture(IN_FLIGHT[1])[1]])[0] < snapshot


def test_a_replayed_change_ranks_by_the_snapshot_before_it_not_a_later_one() -> None:
    """Offsets 0..1: a snapshot at 1000 and the first transaction after it; offset 2 on: a new
    snapshot at 5000. Read again from offset 0, the first transaction ranks as it did first."""
    points = SnapshotPoints(lambda: [(ds.PG_TOPIC, 0, 0, 1000), (ds.PG_TOPIC, 0, 2, 5000)])
    decoder = Decoder("public", {}, None, native=False, snapshot_points=points)
    change, new_snapshot = versions(decoder, [message(1, 7, 900, None),
                                              message(2, 7, 5000, None, "true")])
    assert change < new_snapshot
    assert change == versions(Decoder("public", {}, None, native=False), [
        message(0, 7, 1000, None, "true"), message(1, 7, 900, None)])[1]


def test_a_snapshot_point_keeps_the_first_offset_of_its_rows() -> None:
    points = SnapshotPoints()
    for offset in (5, 3, 4):
        points.saw("t", 0, offset, 1000)
    assert (points.before("t", 0, 2), points.before("t", 0, 3)) == (0, 1000)
    assert points.take_new() == [("t", 0, 3, 1000)]
    points.saw("t", 0, 9, 1000)
    assert points.take_new() == []


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[dict[str, Any]], int]:
    """A WAL: transactions whose changes interleave, each committing after its last change, as
    (kind, tx, lsn) records at strictly increasing LSNs; and a snapshot point between two of
    them."""
    sizes = draw(st.lists(st.integers(1, 3), min_size=1, max_size=6))
    left = dict(enumerate(sizes))
    records = []
    lsn = 100
    while left:
        tx = draw(st.sampled_from(sorted(left)))
        lsn += draw(st.integers(1, 50))
        if left[tx]:
            left[tx] -= 1
            records.append({"kind": "change", "tx": tx, "lsn": lsn})
        elif draw(st.booleans()) or all(n == 0 for n in left.values()):
            records.append({"kind": "commit", "tx": tx, "lsn": lsn})
            del left[tx]
    cut = draw(st.integers(0, len(records)))
    snapshot = (records[cut - 1]["lsn"] if cut else 100) + 1  # no record sits at the point
    return records, snapshot


@settings(max_examples=300, deadline=None)
@given(histories(), st.booleans())
def test_versions_follow_commit_order_for_any_interleaving(history: tuple[list[dict], int],
                                                           restart: bool) -> None:
    """The connector's topic: the transactions committed before the snapshot as streamed by an
    earlier run, the snapshot's rows (each key's value at the point), then the transactions
    committed after it, in commit order. Every key is its own transaction's change, so the
    versions of all messages must sort as (commit, change) with the snapshot rows at the point.
    `restart`: the decoder restarts after the snapshot rows and reads the recorded point."""
    records, point = history
    commits = {r["tx"]: r["lsn"] for r in records if r["kind"] == "commit"}
    order = sorted(commits, key=commits.get)
    changes = {tx: [r["lsn"] for r in records if r["kind"] == "change" and r["tx"] == tx]
               for tx in order}
    before = [tx for tx in order if commits[tx] < point]
    after = [tx for tx in order if commits[tx] > point]
    messages, expected = [], []

    def stream(txs: list[int], first_commit: int | None) -> None:
        last = first_commit
        for tx in txs:
            for n, lsn in enumerate(changes[tx]):
                messages.append(message(len(messages), 100 * tx + n, lsn, last))
                expected.append((commits[tx], n))
            last = commits[tx]

    stream(before, None)
    for tx in before:  # the snapshot reads the rows the transactions before it wrote
        for n in range(len(changes[tx])):
            messages.append(message(len(messages), 100 * tx + n, point, None, "last"))
            expected.append((point, -1))
    rows = len(messages)
    stream(after, None)  # the connector has no commit position right after its snapshot
    decoder = Decoder("public", {}, None, native=True)
    got = versions(decoder, messages[:rows])
    if restart:
        recorded = decoder.snapshot_points.take_new()
        decoder = Decoder("public", {}, None, native=True,
                          snapshot_points=SnapshotPoints(lambda: recorded))
    got += versions(decoder, messages[rows:])
    for i in range(len(messages)):
        for j in range(len(messages)):
            assert (got[i] < got[j]) == (expected[i] < expected[j]), (expected[i], expected[j])
