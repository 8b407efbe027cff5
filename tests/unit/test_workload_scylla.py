"""Tests of the `scylla` scenario's workload generator (benchmarks/workload_scylla.py)."""

from __future__ import annotations

import re
import zlib
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from benchmarks.cell_oracle import Event, visible_rows
from benchmarks.workload_scylla import REGULAR, ScyllaSpec, ScyllaWorkload, generate

FIXTURES = Path(__file__).parents[1] / "fixtures" / "scylla"
SPEC = ScyllaSpec(events=4_000, keys=300, partitions=3, ties_pct=5, replay_pct=5,
                  out_of_order_pct=3, deletes_pct=12, seed=11, topic_prefix="MyScyllaCluster",
                  keyspace="shop")
KEY_COLUMNS = {"orders": ("customer_id", "order_id"), "carts": ("cart_id",)}


@pytest.fixture(scope="module")
def workload() -> ScyllaWorkload:
    return generate(SPEC)


def _fixture(name: str) -> dict[str, Any]:
    return orjson.loads((FIXTURES / f"{name}.json").read_bytes())


def _messages(wl: ScyllaWorkload) -> list[tuple[str, int, Any, Any]]:
    """(topic, partition, key document, value document or None) in production order."""
    return [(topic, part, orjson.loads(k), None if v is None else orjson.loads(v))
            for topic, part in sorted(wl.arrivals) for k, v in wl.messages(topic, part)]


def _first(wl: ScyllaWorkload, table: str, op: str) -> tuple[Any, Any]:
    return next((k, v) for t, _, k, v in _messages(wl)
                if t.endswith(f".{table}") and v is not None and v["payload"]["op"] == op)


def _decode(table: str, key: dict[str, Any], value: dict[str, Any]) -> Event:
    """An independent reading of one legacy message as the change it stands for."""
    payload = value["payload"]
    key_tuple = tuple(key[c] for c in KEY_COLUMNS[table])
    ts = payload["source"]["ts_us"]
    if payload["op"] == "d":
        kind = "partition_delete" if table == "carts" else "row_delete"
        return Event(table, key_tuple, 1, kind, ts)
    cells = {}
    for col, cell in payload["after"].items():
        if col in KEY_COLUMNS[table] or cell is None:
            continue
        v = cell["value"]
        if v is not None and col == "amount":
            v = Decimal(v)
        elif v is not None and col == "placed_at":
            v = datetime(1970, 1, 1) + timedelta(milliseconds=v)
        cells[col] = v
    return Event(table, key_tuple, 1, "write", ts, marker=payload["op"] == "c", cells=cells)


# --------------------------------------------------------------------------- shape


def test_keys_and_envelopes_have_the_schemas_of_the_connectors_fixtures(
        workload: ScyllaWorkload) -> None:
    for table, fixture in (("orders", "legacy_update_partial"),
                           ("carts", "legacy_partition_delete")):
        want = _fixture(fixture)
        key, value = _first(workload, table, "u")
        assert key["schema"] == want["key"]["schema"]
        got_fields = value["schema"]["fields"]
        want_fields = want["value"]["schema"]["fields"]
        assert [f["field"] for f in got_fields] == [f["field"] for f in want_fields]
        for got, exp in zip(got_fields, want_fields, strict=True):
            if got["field"] in ("before", "after"):
                assert {k: v for k, v in got.items() if k != "fields"} == {
                    k: v for k, v in exp.items() if k != "fields"}
            else:
                assert got == exp
        assert {k: v for k, v in value["schema"].items() if k != "fields"} == {
            k: v for k, v in want["value"]["schema"].items() if k != "fields"}


def test_every_row_column_has_the_schema_of_the_fixtures_column_of_that_name(
        workload: ScyllaWorkload) -> None:
    want = {f["field"]: f for f in _fixture("legacy_insert")["value"]["schema"]["fields"][2]
            ["fields"]}
    want |= {f["field"]: f for f in _fixture("legacy_partition_delete")["value"]["schema"]
             ["fields"][2]["fields"]}
    for table in KEY_COLUMNS:
        _, value = _first(workload, table, "c")
        fields = value["schema"]["fields"]
        assert fields[1]["fields"] == fields[2]["fields"]  # before and after alike
        names = [f["field"] for f in fields[2]["fields"]]
        assert names == sorted(names)
        assert len(names) == len(KEY_COLUMNS[table]) + 6
        for f in fields[2]["fields"]:
            exp = want[f["field"]]
            if "name" in exp:  # the fixture's table in the name: orders, or carts for `note`
                exp = {**exp, "name": exp["name"].replace(".orders.", f".{table}.")
                       .replace(".carts.", f".{table}.")}
            assert f == exp


def test_payloads_have_the_legacy_shape(workload: ScyllaWorkload) -> None:
    source_keys = list(_fixture("legacy_insert")["value"]["payload"]["source"])
    payload_keys = list(_fixture("legacy_insert")["value"]["payload"])
    seen = set()
    messages = _messages(workload)
    for i, (topic, _, key, value) in enumerate(messages):
        table = topic.rsplit(".", 1)[1]
        if value is None:
            assert messages[i - 1][3]["payload"]["op"] == "d"  # a tombstone follows its delete
            assert messages[i - 1][2] == key
            continue
        p = value["payload"]
        assert list(p) == payload_keys and list(p["source"]) == source_keys
        src = p["source"]
        assert (src["connector"], src["db"], src["keyspace_name"], src["table_name"]) == (
            "scylla", "shop", "shop", table)
        assert src["ts_ms"] == src["ts_us"] // 1000 and src["ts_ns"] == src["ts_ms"] * 10**6
        assert p["ts_ms"] > src["ts_ms"] and p["ts_ns"] == p["ts_ms"] * 10**6
        image = p["before"] if p["op"] == "d" else p["after"]
        assert (p["after"] if p["op"] == "d" else p["before"]) is None
        assert {c: image[c] for c in KEY_COLUMNS[table]} == key["payload"]
        cells = {c: v for c, v in image.items() if c not in KEY_COLUMNS[table]}
        if p["op"] == "d":
            assert set(cells.values()) == {None}
            assert messages[i + 1][3] is None
        else:
            assert all(v is None or list(v) == ["value"] for v in cells.values())
            amount = (cells["amount"] or {}).get("value")
            assert amount is None or re.fullmatch(r"-?\d+\.\d\d", amount)  # scale 2 kept
            if p["op"] == "u":
                assert any(v is not None for v in cells.values())
        seen.add((table, p["op"]))
        seen |= {("null", table) for v in cells.values() if v == {"value": None}}
    assert seen >= {("orders", "c"), ("orders", "u"), ("orders", "d"), ("carts", "c"),
                    ("carts", "u"), ("carts", "d"), ("null", "orders"), ("null", "carts")}


# --------------------------------------------------------------------------- the oracle


def test_the_oracle_rows_are_what_the_cell_semantics_make_of_the_messages(
        workload: ScyllaWorkload) -> None:
    events = [_decode(t.rsplit(".", 1)[1], k["payload"], v)
              for t, _, k, v in _messages(workload) if v is not None]
    got = visible_rows(events, 2**62)
    for table, cols in KEY_COLUMNS.items():
        want = workload.rows[table]
        assert set(got.get(table, {})) == set(want)
        for key, cells in got.get(table, {}).items():
            row = dict(zip(cols, key, strict=True))
            row |= dict.fromkeys(REGULAR)
            assert want[key] == row | cells
    assert len(workload.rows["orders"]) > 50 and len(workload.rows["carts"]) > 20


def test_the_oracle_differs_from_row_last_write_wins(workload: ScyllaWorkload) -> None:
    """Partial updates, late messages and upserts make cell semantics matter on this data."""
    last: dict[tuple[str, tuple[Any, ...]], Event] = {}
    for ev in workload.statements:  # the newest statement of each row replaces the whole row
        ref = (ev.table, ev.key)
        if ref not in last or ev.ts_us > last[ref].ts_us:
            last[ref] = ev
    differ = 0
    for (table, key), ev in last.items():
        naive = None if ev.kind != "write" else {c: ev.cells.get(c) for c in REGULAR}
        got = workload.rows[table].get(key)
        differ += naive != (None if got is None else {c: got[c] for c in REGULAR})
    assert differ > 20


def test_delivery_has_replays_ties_and_late_changes_that_older_deletes_must_beat(
        workload: ScyllaWorkload) -> None:
    stats = workload.stats
    assert stats["replayed"] > 0 and stats["ties"] > 0 and stats["out_of_order"] > 0
    value_messages = [v for *_, v in _messages(workload) if v is not None]
    assert len(value_messages) == SPEC.events + stats["replayed"]
    late_after_delete = 0
    deleted_at: dict[tuple[str, str], int] = {}
    for _, _, k, v in ((t, p, k, v) for t, p, k, v in _messages(workload) if v is not None):
        ref = (v["payload"]["source"]["table_name"], orjson.dumps(k["payload"]).decode())
        ts = v["payload"]["source"]["ts_us"]
        if v["payload"]["op"] == "d":
            deleted_at[ref] = max(ts, deleted_at.get(ref, ts))
        elif ts <= deleted_at.get(ref, -1):
            late_after_delete += 1
    assert late_after_delete > 0


def test_tied_writes_of_one_cell_never_write_a_decimal(workload: ScyllaWorkload) -> None:
    """A tie's winner is the greater serialized value; a legacy decimal string does not give
    its serialized form, so the workload leaves decimals out of ties."""
    writes: dict[tuple[Any, ...], int] = {}
    for ev in workload.statements:
        for col in ev.cells:
            ref = (ev.table, ev.key, col, ev.ts_us)
            writes[ref] = writes.get(ref, 0) + 1
    tied = {ref[2] for ref, n in writes.items() if n > 1}
    assert "amount" not in tied and len(tied) >= 3


def test_rows_keep_write_order_without_replays_or_swaps_while_rows_interleave() -> None:
    wl = generate(ScyllaSpec(events=2_000, keys=200, partitions=2, replay_pct=0,
                             out_of_order_pct=0, seed=3))
    crossed = 0
    for topic, part in wl.arrivals:
        last: dict[tuple[Any, ...], int] = {}
        prev_ts = 0
        for ev, tomb, _ in wl.arrivals[(topic, part)]:
            if tomb:
                continue
            assert ev.ts_us >= last.get(ev.key, 0)
            last[ev.key] = ev.ts_us
            crossed += ev.ts_us < prev_ts
            prev_ts = ev.ts_us
    assert crossed > 0


def test_a_row_lives_in_the_partition_its_key_hashes_to(workload: ScyllaWorkload) -> None:
    for topic, part, key, _ in _messages(workload):
        assert zlib.crc32(orjson.dumps(key["payload"])) % SPEC.partitions == part, topic


def test_a_seed_reproduces_the_messages_and_another_seed_does_not(
        workload: ScyllaWorkload) -> None:
    again = generate(SPEC)
    other = generate(ScyllaSpec(**{**SPEC.__dict__, "seed": SPEC.seed + 1}))
    assert _messages(again) == _messages(workload) and again.rows == workload.rows
    assert _messages(other) != _messages(workload)


def test_a_workload_refuses_restamped_source_times(workload: ScyllaWorkload) -> None:
    topic, part = sorted(workload.arrivals)[0]
    with pytest.raises(ValueError):
        next(workload.iter_partition(topic, part, source_time=lambda: 0))
