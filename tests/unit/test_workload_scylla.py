"""Tests of the `scylla` scenario's workload generator (benchmarks/workload_scylla.py)."""

from __future__ import annotations

import re
import zlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from benchmarks.cell_oracle import Bound, Event, reconcile, visible_rows
from benchmarks.workload_scylla import REGULAR, ScyllaSpec, ScyllaWorkload, generate
from formats.cassandra import decode_cassandra
from formats.cells import CellChange
from formats.scylla import decode_scylla
from operators.events import RawMessage, TableName

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


# --------------------------------------------------------------------------- other encodings

MIXED = ScyllaSpec(events=4_000, keys=300, partitions=3, ties_pct=5, replay_pct=5,
                   out_of_order_pct=3, deletes_pct=12, seed=13, ttl_pct=40,
                   clock_us=1_800_000_000_000_000)
ADVANCED = replace(MIXED, topic_prefix="MyScyllaCluster", keyspace="shop",
                   encodings=(("orders", "advanced"), ("carts", "advanced")))
CASSANDRA = replace(MIXED, topic_prefix="cassandra-cluster-1", keyspace="inventory",
                    encodings=(("orders", "cassandra"), ("carts", "cassandra")))
CQL_TYPES = {"amount": "decimal"}


_WORKLOADS: dict[ScyllaSpec, ScyllaWorkload] = {}


def workload_of(spec: ScyllaSpec) -> ScyllaWorkload:
    """Each spec generated once for the module's tests."""
    if spec not in _WORKLOADS:
        _WORKLOADS[spec] = generate(spec)
    return _WORKLOADS[spec]


@pytest.fixture(scope="module")
def advanced() -> ScyllaWorkload:
    return workload_of(ADVANCED)


@pytest.fixture(scope="module")
def cassandra() -> ScyllaWorkload:
    return workload_of(CASSANDRA)


def _cassandra_fixture(name: str) -> dict[str, Any]:
    return orjson.loads((FIXTURES.parent / "cassandra" / f"{name}.json").read_bytes())


def _without(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in keys}


def test_advanced_messages_have_the_schemas_and_payload_keys_of_the_full_image_fixtures(
        advanced: ScyllaWorkload) -> None:
    want = _fixture("advanced_full_update_partial")
    want_rows = {f["field"]: f for f in want["value"]["schema"]["fields"][2]["fields"]}
    for table in KEY_COLUMNS:
        key, value = _first(advanced, table, "u")
        if table == "orders":
            assert key["schema"] == want["key"]["schema"]
        got_fields = value["schema"]["fields"]
        for got, exp in zip(got_fields, want["value"]["schema"]["fields"], strict=True):
            if got["field"] in ("before", "after"):
                assert _without(got, "fields", "name") == _without(exp, "fields", "name")
                assert got["name"] == f"MyScyllaCluster.shop.{table}.{got['field'].capitalize()}"
                assert all(f == want_rows[f["field"]] for f in got["fields"]
                           if f["field"] != "cart_id")
                assert [f["field"] for f in got["fields"]] == sorted(
                    (*KEY_COLUMNS[table], *REGULAR))
            else:
                assert got == exp
        assert list(value["payload"]) == list(want["value"]["payload"])
        assert value["payload"]["ts_us"] is None and value["payload"]["ts_ns"] is None


def test_advanced_images_are_the_rows_before_and_after_each_statement(
        advanced: ScyllaWorkload) -> None:
    """Inserts without `before`, updates with the pre-image when the row had live data, row
    deletes with it, partition deletes with neither, and a tombstone after every delete."""
    seen = set()
    messages = _messages(advanced)
    for i, (topic, _, key, value) in enumerate(messages):
        if value is None:
            continue
        p, table = value["payload"], topic.rsplit(".", 1)[1]
        for image in (p["before"], p["after"]):
            assert image is None or {c: image[c] for c in KEY_COLUMNS[table]} == key["payload"]
        shape = (table, p["op"], p["before"] is not None, p["after"] is not None)
        seen.add(shape)
        if p["op"] == "d":
            assert messages[i + 1][3] is None and messages[i + 1][2] == key
    assert seen == {("orders", "c", False, True), ("orders", "u", True, True),
                    ("orders", "u", False, True), ("orders", "d", True, False),
                    ("carts", "c", False, True), ("carts", "u", True, True),
                    ("carts", "u", False, True), ("carts", "d", False, False)}


def test_cassandra_messages_have_the_schemas_of_the_connectors_fixtures(
        cassandra: ScyllaWorkload) -> None:
    want = _cassandra_fixture("insert")
    want_fields = want["value"]["schema"]["fields"]
    want_cells = {f["field"]: f for f in want_fields[3]["fields"]}
    key, value = _first(cassandra, "orders", "i")
    assert key["schema"] == want["key"]["schema"]
    assert value["schema"]["name"] == want["value"]["schema"]["name"]
    got_fields = value["schema"]["fields"]
    assert got_fields[:3] == want_fields[:3]  # ts_ms, op, source
    assert _without(got_fields[3], "fields") == _without(want_fields[3], "fields")
    cells = got_fields[3]["fields"]
    assert [f["field"] for f in cells] == [*KEY_COLUMNS["orders"], *sorted(REGULAR),
                                           "_range_start", "_range_end"]
    wrapper = _without(want_cells["note"], "fields", "field")
    for cell in cells:
        if cell["field"] in want_cells:  # the columns the fixture's table has
            assert cell == want_cells[cell["field"]]
        else:  # bigint, boolean, double: the same cell struct around their value
            assert _without(cell, "fields", "field") == wrapper
            assert cell["fields"][1:] == want_cells["note"]["fields"][1:]
    assert {"big": "int64", "flag": "boolean", "score": "double"} == {
        c["field"]: c["fields"][0]["type"] for c in cells if c["field"] not in want_cells}


@pytest.mark.parametrize(("op", "fixture"), [
    ("i", "insert"), ("u", "update_one_column"), ("d", "row_delete"), ("r", "range_delete")])
def test_cassandra_payloads_have_the_shape_of_the_fixture_of_their_op(
        cassandra: ScyllaWorkload, op: str, fixture: str) -> None:
    want = _cassandra_fixture(fixture)["value"]["payload"]
    _, value = _first(cassandra, "orders", op)
    p = value["payload"]
    assert list(p) == list(want) and list(p["source"]) == list(want["source"])
    assert list(p["after"]) == [*KEY_COLUMNS["orders"], *sorted(REGULAR), "_range_start",
                                "_range_end"]
    src = p["source"]
    assert (src["connector"], src["db"], src["keyspace"], src["table"]) == (
        "cassandra", "NULL", "inventory", "orders")
    assert src["ts_ms"] == src["ts_us"] // 1000 and src["ts_ns"] == src["ts_us"] * 1000
    shown = {c: v for c, v in p["after"].items() if v is not None and not c.startswith("_")}
    assert all(list(v) == ["value", "deletion_ts", "set"] and v["set"] for v in shown.values())


def test_cassandra_deletes_are_cells_with_their_deletion_time_and_no_kafka_tombstone(
        cassandra: ScyllaWorkload) -> None:
    kinds = set()
    for _, _, key, value in _messages(cassandra):
        assert value is not None
        p = value["payload"]
        if p["op"] not in ("d", "r"):
            continue
        ts, after = p["source"]["ts_us"], p["after"]
        regular = [after[c] for c in REGULAR]
        if p["op"] == "r":
            assert regular == [None] * len(REGULAR) and after["order_id"] is None
            assert key["payload"]["order_id"] is None
            for side, bound in (("START", after["_range_start"]), ("END", after["_range_end"])):
                assert bound["method"] in (f"INCL_{side}_BOUND", f"EXCL_{side}_BOUND")
                assert all(list(v) == ["name", "value", "type"] and v["name"] == "order_id"
                           for v in bound["values"])
                kinds.add(("range", side, bool(bound["values"])))
            continue
        assert regular == [{"value": None, "deletion_ts": ts, "set": True}] * len(REGULAR)
        assert after["_range_start"] is None and after["_range_end"] is None
        clustering = key["payload"].get("order_id", "none")
        kinds.add(("d", clustering is None))
        if clustering is None:  # a partition delete of `orders`: null clustering cell
            assert after["order_id"] == {"value": None, "deletion_ts": ts, "set": True}
    assert kinds == {("d", True), ("d", False), ("range", "START", True),
                     ("range", "START", False), ("range", "END", True),
                     ("range", "END", False)}


def test_ttl_cells_expire_before_the_window_ends_or_a_day_later(
        cassandra: ScyllaWorkload) -> None:
    clock, by = CASSANDRA.clock_us, CASSANDRA.expiring_by_us
    expiries = [e for ev in cassandra.statements for e in ev.expiries.values()]
    assert len(expiries) == cassandra.stats["ttl_cells"]
    assert all(e % 10**6 == 0 for e in expiries)  # Cassandra keeps seconds
    past = [e for e in expiries if e <= clock]
    during = [e for e in expiries if clock < e < by]
    ahead = [e for e in expiries if e >= by + 86_000 * 10**6]
    assert len(past) + len(during) + len(ahead) == len(expiries)
    assert min(len(past), len(during), len(ahead)) > 20
    before, after = cassandra.rows_at(clock), cassandra.rows_at(by)
    assert before != after and after == cassandra.rows_at(by + 3_600 * 10**6)


def _as_event(change: CellChange, statement: Event) -> Event:
    """A decoded change in the oracle's terms (timestamps naive UTC, a row delete of `carts`
    as the partition delete it is there)."""
    kind = change.kind.value
    if statement.table == "carts" and kind == "row_delete":
        kind = "partition_delete"
    whole = kind in ("write", "row_delete")
    key = change.key if whole else change.key[:change.partition_key_columns or len(change.key)]
    cells = {c: v.astimezone(UTC).replace(tzinfo=None) if isinstance(v, datetime) else v
             for c, v in change.cells.items()}

    def bound(b: Any) -> Bound | None:
        return Bound(tuple(b.values), b.inclusive) if b is not None and b.values else None

    return Event(statement.table, key, 1, kind, change.ts_us, marker=change.row_marker,
                 cells=cells, expiries=dict(change.expires_us),
                 range_start=bound(change.range_start), range_end=bound(change.range_end))


@pytest.mark.parametrize("spec", [
    SPEC, ADVANCED, CASSANDRA,
    replace(MIXED, encodings=(("orders", "advanced"), ("carts", "cassandra")))],
    ids=["legacy", "advanced", "cassandra", "mixed"])
def test_every_message_decodes_to_exactly_its_statement_and_the_replay_to_the_oracle(
        spec: ScyllaSpec) -> None:
    """Through the product's own decoders: what each connector can express is all the workload
    generates, so the decoded changes reconcile to the workload's rows at every time."""
    wl = workload_of(spec)
    decoded = []
    for topic, part in sorted(wl.arrivals):
        table = topic.rsplit(".", 1)[1]
        decode = decode_cassandra if spec.encoding(table) == "cassandra" else decode_scylla
        for offset, ((key, value), (statement, tomb, _)) in enumerate(zip(
                wl.messages(topic, part), wl.arrivals[(topic, part)], strict=True)):
            change = decode(RawMessage(topic, part, offset, key, value),
                            TableName("t", table), CQL_TYPES)
            if tomb:
                assert change is None
                continue
            assert isinstance(change, CellChange), change
            event = _as_event(change, statement)
            assert event == statement, (topic, part, offset)
            decoded.append(event)
    for now in (spec.clock_us - 86_400 * 10**6, spec.clock_us, spec.expiring_by_us - 10**7,
                spec.expiring_by_us, spec.expiring_by_us + 2 * 86_400 * 10**6):
        got = reconcile(decoded).visible_rows(now)
        want = wl.rows_at(now)
        for table, cols in KEY_COLUMNS.items():
            assert {k: dict.fromkeys(REGULAR) | dict(zip(cols, k, strict=True)) | cells
                    for k, cells in got.get(table, {}).items()} == want[table]


def test_only_the_advanced_encoding_never_ties_a_rows_write_time(
        advanced: ScyllaWorkload) -> None:
    """A tie's winner may be the value the row held, which a full image cannot show."""
    seen: set[tuple[str, tuple[Any, ...], int]] = set()
    for ev in advanced.statements:
        assert (ev.table, ev.key, ev.ts_us) not in seen
        seen.add((ev.table, ev.key, ev.ts_us))
    assert advanced.stats["ties"] == 0 and workload_of(CASSANDRA).stats["ties"] > 0


def test_avro_is_refused_for_the_cassandra_encoding() -> None:
    with pytest.raises(ValueError, match="cell_value"):
        generate(replace(CASSANDRA, events=10, registry_url="http://127.0.0.1:1"))


def test_an_unknown_encoding_or_table_is_refused() -> None:
    with pytest.raises(ValueError):
        generate(replace(MIXED, encodings=(("orders", "avro"),)))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        generate(replace(MIXED, encodings=(("items", "legacy"),)))
