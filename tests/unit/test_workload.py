"""Tests of the workload generator and its oracle (benchmarks/workload.py)."""

from __future__ import annotations

import base64
import re
import sys
import types
import zlib
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.workload import (
    Change,
    StaleEvent,
    WorkloadSpec,
    encode_decimal,
    generate,
    partition_of,
    produce,
    simulate,
)

SMALL = WorkloadSpec(events=3_000, keys=300, partitions=3, duplicates_pct=5, out_of_order_pct=5,
                     deletes_pct=10, seed=7)
LSN_RE = re.compile(r"^[0-9a-f]{8}:[0-9a-f]{8}:[0-9a-f]{4}$")


def _payload(raw: bytes, spec: WorkloadSpec) -> Any:
    doc = orjson.loads(raw)
    if spec.schemas_enable:
        assert set(doc) == {"schema", "payload"}
        return doc["payload"]
    assert "schema" not in doc or "payload" not in doc
    return doc


def _version(src: dict[str, Any], spec: WorkloadSpec) -> Any:
    """The LWW order, read independently: Postgres ranks by the commit a change's transaction
    follows (`source.sequence[0]`; the first one, with none, by its own LSN), then by its LSN."""
    if spec.connector == "postgresql":
        last, _ = orjson.loads(src["sequence"])
        return (src["lsn"] if last is None else int(last), src["lsn"])
    return (src["commit_lsn"], src["change_lsn"], src["event_serial_no"])


def _decode_row(row: dict[str, Any], spec: WorkloadSpec) -> dict[str, Any]:
    """An independent decoder for the column kinds the generator writes."""
    kinds = dict(spec.value_columns)
    out = {}
    for name, v in row.items():
        kind = kinds.get(name)
        if v is not None and kind == "decimal":
            v = Decimal(int.from_bytes(base64.b64decode(v), "big", signed=True)).scaleb(-2)
        elif v is not None and kind == "micro_ts":
            v = datetime(1970, 1, 1) + timedelta(microseconds=v)
        out[name] = v
    return out


def _all(wl: Any) -> list[tuple[str, int, int, bytes, bytes | None]]:
    return list(wl.iter_messages())


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_workload_other_seed_differs() -> None:
    a, b = generate(SMALL), generate(SMALL)
    assert _all(a) == _all(b)
    assert a.oracle == b.oracle and a.stats == b.stats
    c = generate(WorkloadSpec(**{**SMALL.__dict__, "seed": 8}))
    assert _all(c) != _all(a)
    assert c.oracle.rows != a.oracle.rows


# ----------------------------------------------------------------------------- percentages


def test_percentages_roughly_honoured() -> None:
    spec = WorkloadSpec(events=20_000, keys=4_000, partitions=4, duplicates_pct=5,
                        out_of_order_pct=4, deletes_pct=10, late_after_delete_pct=30, seed=3)
    wl = generate(spec)
    s, o = wl.stats, wl.oracle
    assert s["inserts"] + s["updates"] + s["deletes"] == spec.events
    assert s["deletes"] / (s["updates"] + s["deletes"]) == pytest.approx(0.10, abs=0.015)
    assert s["duplicates_injected"] == pytest.approx(1_000, abs=10)
    assert s["out_of_order"] == pytest.approx(800, abs=10)
    assert s["late_after_delete"] == pytest.approx(0.30 * s["deletes"], rel=0.05)
    # Injected duplicates land before the key's next change: nearly all count as duplicates.
    assert o.duplicates == pytest.approx(s["duplicates_injected"], rel=0.1)
    assert o.duplicates <= s["duplicates_injected"]
    # Each swap makes one stale event; duplicates of a stale event are stale too.
    swaps = s["out_of_order"] + s["late_after_delete"]
    assert swaps <= len(o.stale) <= swaps + s["duplicates_injected"] - o.duplicates
    assert o.tombstones >= s["deletes"]
    assert o.applied + o.duplicates + len(o.stale) + o.tombstones == wl.message_count


def test_zero_perturbation_means_no_stale_and_no_duplicates() -> None:
    wl = generate(WorkloadSpec(events=2_000, keys=100, duplicates_pct=0, out_of_order_pct=0,
                               late_after_delete_pct=0, deletes_pct=20))
    assert wl.oracle.duplicates == 0 and not wl.oracle.stale
    assert wl.oracle.applied == 2_000


# ----------------------------------------------------------------------------- oracle by hand


def test_oracle_hand_written_case() -> None:
    spec = WorkloadSpec(tables=("t",), columns=1, partitions=1)
    topic = spec.topic("t")
    r = ("x",)

    def ch(key: int, op: str, v: int) -> Change:
        return Change("t", (key,), op, v, None if op == "d" else (f"{op}{v}",), r)

    k1 = [ch(1, "c", 1), ch(1, "u", 3), ch(1, "u", 2), ch(1, "u", 3)]
    d4 = ch(2, "d", 4)
    k2 = [ch(2, "c", 1), d4, ch(2, "c", 2)]
    entries = [(c, False) for c in k1] + [(k2[0], False), (d4, False), (d4, True), (k2[2], False)]
    oracle = simulate({(topic, 0): entries}, spec)

    assert oracle.stale == {
        (topic, 0, 2): StaleEvent(topic, 0, 2, "t", (1,), 2, 3),
        (topic, 0, 7): StaleEvent(topic, 0, 7, "t", (2,), 2, 4),
    }
    assert oracle.duplicates == 1
    assert oracle.tombstones == 1
    assert oracle.applied == 4  # c1 u3 for key 1; c1 d4 for key 2
    assert oracle.rows == {"t": {(1,): {"id": 1, "name": "u3"}}}
    assert oracle.versions == {("t", (1,)): 3, ("t", (2,)): 4}
    assert oracle.deleted == {("t", (2,))}


def test_oracle_compares_sqlserver_versions_as_tuples() -> None:
    spec = WorkloadSpec(tables=("t",), columns=1, partitions=1, connector="sqlserver")
    v1 = ("00000027:00000758:0005", "00000027:00000750:0002", 1)
    v2 = ("00000027:00000758:0005", "00000027:00000751:0002", 1)
    v3 = ("00000028:00000001:0001", "00000027:00000900:0001", 1)
    entries = [(Change("t", (1,), op, v, ("a",)), False)
               for op, v in (("c", v1), ("u", v3), ("u", v2), ("u", v1))]
    oracle = simulate({(spec.topic("t"), 0): entries}, spec)
    assert [(e.offset, e.version, e.applied_version) for e in oracle.stale.values()] == [
        (2, v2, v3), (3, v1, v3)]
    assert oracle.versions == {("t", (1,)): v3}


# ----------------------------------------------------------------------------- message format


@pytest.mark.parametrize("connector", ["postgresql", "sqlserver"])
@pytest.mark.parametrize("schemas_enable", [True, False])
@pytest.mark.parametrize("composite", [False, True])
def test_every_message_is_valid_debezium_json(
    connector: str, schemas_enable: bool, composite: bool
) -> None:
    spec = WorkloadSpec(**{**SMALL.__dict__, "connector": connector,
                           "schemas_enable": schemas_enable, "composite_key": composite})
    wl = generate(spec)
    key_cols = ["tenant", "id"] if composite else ["id"]
    value_cols = key_cols + [n for n, _ in spec.value_columns]
    seen_versions = set()
    prev: dict[tuple[str, int], tuple[bytes, Any]] = {}
    for topic, part, _off, kraw, vraw in wl.iter_messages():
        assert topic.startswith("bench.inventory.")
        table = topic.rsplit(".", 1)[1]
        key = _payload(kraw, spec)
        assert list(key) == key_cols and all(isinstance(v, int) for v in key.values())
        if spec.schemas_enable:
            ks = orjson.loads(kraw)["schema"]
            assert ks["type"] == "struct" and [f["field"] for f in ks["fields"]] == key_cols
        if vraw is None:  # a tombstone follows its delete, same key
            pkey, pval = prev[(topic, part)]
            assert pkey == kraw and pval["op"] == "d"
            prev[(topic, part)] = (kraw, {"op": None})
            continue
        doc = orjson.loads(vraw)
        p = _payload(vraw, spec)
        assert set(p) >= {"before", "after", "source", "op", "ts_ms"}
        assert p["op"] in ("c", "u", "d")
        src = p["source"]
        assert src["connector"] == connector
        assert (src["db"], src["schema"], src["table"]) == ("inventory", "inventory", table)
        assert src["name"] == "bench" and isinstance(src["ts_ms"], int)
        if connector == "postgresql":
            assert isinstance(src["lsn"], int) and isinstance(src["txId"], int)
            last, lsn = orjson.loads(src["sequence"])
            assert lsn == str(src["lsn"]) and (last is None or int(last) < src["lsn"])
        else:
            assert LSN_RE.match(src["change_lsn"]) and LSN_RE.match(src["commit_lsn"])
            assert src["change_lsn"] < src["commit_lsn"]
            assert isinstance(src["event_serial_no"], int)
        seen_versions.add(_version(src, spec))
        if p["op"] == "c":
            assert p["before"] is None and list(p["after"]) == value_cols
        elif p["op"] == "u":
            assert list(p["before"]) == value_cols == list(p["after"])
        else:
            assert p["after"] is None and list(p["before"]) == value_cols
        image = p["after"] or p["before"]
        assert {k: image[k] for k in key_cols} == key
        if spec.schemas_enable:
            vs = doc["schema"]
            assert vs["name"] == f"{topic}.Envelope"
            fields = {f["field"]: f for f in vs["fields"]}
            assert list(fields) == ["before", "after", "source", "transaction", "op",
                                    "ts_ms", "ts_us", "ts_ns"]
            assert [f["field"] for f in fields["after"]["fields"]] == value_cols
            assert fields["source"]["name"] == f"io.debezium.connector.{connector}.Source"
            assert set(src) == {f["field"] for f in fields["source"]["fields"]}
            price = next(f for f in fields["after"]["fields"] if f["field"] == "price")
            assert price["name"] == "org.apache.kafka.connect.data.Decimal"
            assert price["parameters"]["scale"] == "2"
            created = next(f for f in fields["after"]["fields"] if f["field"] == "created_at")
            assert created["name"] == "io.debezium.time.MicroTimestamp"
        prev[(topic, part)] = (kraw, p)
    # One global version per true change: all distinct.
    assert len(seen_versions) == spec.events


def test_decimal_encoding_matches_debezium_examples() -> None:
    assert encode_decimal(1234) == "BNI="  # 12.34 at scale 2
    assert encode_decimal(-100) == "nA=="  # -1.00
    # Minimal two's complement, like Java's BigInteger.toByteArray().
    assert [encode_decimal(n) for n in (0, 127, 128, -128, -129)] == [
        "AA==", "fw==", "AIA=", "gA==", "/38="]
    for n in (0, 1, -1, 127, 128, -128, -129, 2**40, -(2**40)):
        assert int.from_bytes(base64.b64decode(encode_decimal(n)), "big", signed=True) == n


# ----------------------------------------------------------------------------- oracle vs bytes


@pytest.mark.parametrize("connector", ["postgresql", "sqlserver"])
def test_oracle_matches_the_messages(connector: str) -> None:
    """Decode every message independently and check the oracle's rows, versions and stale set."""
    spec = WorkloadSpec(**{**SMALL.__dict__, "connector": connector, "schemas_enable": False})
    wl = generate(spec)
    o = wl.oracle
    by_key: dict[tuple[str, tuple[int, ...]], list[tuple[Any, str, dict[str, Any] | None]]] = {}
    stale_seen = {}
    current: dict[tuple[str, tuple[int, ...]], Any] = {}
    for topic, part, off, kraw, vraw in wl.iter_messages():
        if vraw is None:
            continue
        p = orjson.loads(vraw)
        table = p["source"]["table"]
        key = tuple(orjson.loads(kraw).values())
        v = _version(p["source"], spec)
        by_key.setdefault((table, key), []).append((v, p["op"], p["after"]))
        cur = current.get((table, key))
        if cur is not None and v < cur:
            stale_seen[(topic, part, off)] = (v, cur)
        current[(table, key)] = v if cur is None else max(v, cur)
    assert {k: (e.version, e.applied_version) for k, e in o.stale.items()} == stale_seen
    assert o.stale, "the workload should contain stale events"
    live = {}
    for (table, key), events in by_key.items():
        v, op, after = max(events, key=lambda e: e[0])
        assert o.versions[(table, key)] == v
        if op == "d":
            assert (table, key) in o.deleted
        else:
            live.setdefault(table, {})[key] = _decode_row(after, spec)
    assert {t: rows for t, rows in o.rows.items() if rows} == live
    # Late events after deletes exist and do not resurrect rows.
    delete_versions = {v for evs in by_key.values() for v, op, _ in evs if op == "d"}
    late = [e for e in o.stale.values() if e.applied_version in delete_versions]
    assert late and any((e.table, e.key) in o.deleted for e in late)
    types_seen = {type(v) for rows in o.rows.values() for r in rows.values() for v in r.values()}
    assert types_seen >= {int, str, Decimal, datetime, bool}


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    keys=st.integers(1, 50),
    dup=st.floats(0, 30),
    ooo=st.floats(0, 30),
    dels=st.floats(0, 60),
    zipf=st.booleans(),
)
def test_oracle_final_state_is_max_version_per_key(
    seed: int, keys: int, dup: float, ooo: float, dels: float, zipf: bool
) -> None:
    spec = WorkloadSpec(events=400, keys=keys, partitions=2, duplicates_pct=dup,
                        out_of_order_pct=ooo, deletes_pct=dels, seed=seed,
                        key_dist="zipf" if zipf else "uniform", dup_window=20)
    wl = generate(spec)
    o = wl.oracle
    last: dict[tuple[str, tuple[int, ...]], Change] = {}
    for entries in wl.arrivals.values():
        for c, _ in entries:
            k = (c.table, c.key)
            if k not in last or c.version > last[k].version:
                last[k] = c
    assert o.versions == {k: c.version for k, c in last.items()}
    assert o.deleted == {k for k, c in last.items() if c.op == "d"}
    assert sum(len(r) for r in o.rows.values()) == len(last) - len(o.deleted)
    assert o.applied + o.duplicates + len(o.stale) + o.tombstones == wl.message_count


# ----------------------------------------------------------------------------- partitioning


def test_partition_assignment_is_stable_per_key() -> None:
    wl = generate(SMALL)
    parts: dict[tuple[str, bytes], set[int]] = {}
    for topic, part, _off, kraw, _v in wl.iter_messages():
        parts.setdefault((topic, kraw), set()).add(part)
        key = tuple(orjson.loads(kraw)["payload"].values())
        assert part == partition_of(SMALL, key)
        assert part == zlib.crc32(orjson.dumps({"id": key[0]})) % SMALL.partitions
    assert all(len(p) == 1 for p in parts.values())
    assert {p for ps in parts.values() for p in ps} == set(range(SMALL.partitions))
    # The envelope does not change where a key goes.
    plain = generate(WorkloadSpec(**{**SMALL.__dict__, "schemas_enable": False}))
    assert {tp: len(v) for tp, v in plain.arrivals.items()} == {
        tp: len(v) for tp, v in wl.arrivals.items()}


# ----------------------------------------------------------------------------- produce


class _FakeMsg:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._t, self._p, self._o = topic, partition, offset

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o


def _fake_kafka(monkeypatch: pytest.MonkeyPatch, fail_at: int | None = None) -> dict[str, Any]:
    log: dict[str, Any] = {"topics": [], "logs": {}, "conf": None}

    class Producer:
        def __init__(self, conf: dict[str, Any]) -> None:
            log["conf"] = conf
            self.pending: list[Any] = []

        def produce(self, topic: str, value: Any, key: Any, partition: int,
                    on_delivery: Any) -> None:
            part_log = log["logs"].setdefault((topic, partition), [])
            part_log.append((key, value))
            n = sum(len(v) for v in log["logs"].values())
            err = "broker down" if fail_at is not None and n == fail_at else None
            self.pending.append((on_delivery, err, _FakeMsg(topic, partition, len(part_log) - 1)))

        def poll(self, timeout: float = 0) -> int:
            for cb, err, msg in self.pending:
                cb(err, msg)
            self.pending.clear()
            return 0

        def flush(self, timeout: float = 0) -> int:
            self.poll()
            return 0

    class AdminClient:
        def __init__(self, conf: dict[str, Any]) -> None:
            pass

        def create_topics(self, new: list[Any], operation_timeout: float = 0) -> dict[str, Any]:
            log["topics"] += [(t.topic, t.num_partitions) for t in new]
            done = types.SimpleNamespace(result=lambda timeout=None: None)
            return {t.topic: done for t in new}

    ck = types.ModuleType("confluent_kafka")
    ck.Producer = Producer  # type: ignore[attr-defined]
    ck.KafkaError = type("KafkaError", (), {"TOPIC_ALREADY_EXISTS": 36})  # type: ignore[attr-defined]
    ck.KafkaException = type("KafkaException", (Exception,), {})  # type: ignore[attr-defined]
    admin = types.ModuleType("confluent_kafka.admin")
    admin.AdminClient = AdminClient  # type: ignore[attr-defined]
    admin.NewTopic = lambda t, num_partitions, replication_factor: types.SimpleNamespace(  # type: ignore[attr-defined]
        topic=t, num_partitions=num_partitions)
    monkeypatch.setitem(sys.modules, "confluent_kafka", ck)
    monkeypatch.setitem(sys.modules, "confluent_kafka.admin", admin)
    return log


def test_produce_writes_each_partition_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    log = _fake_kafka(monkeypatch)
    wl = generate(SMALL)
    assert produce(wl, "fake:9092") == wl.message_count
    assert sorted(log["topics"]) == sorted((t, SMALL.partitions) for t in wl.topics)
    assert log["conf"]["enable.idempotence"] is True
    assert {tp: msgs for tp, msgs in log["logs"].items()} == {
        tp: wl.messages(*tp) for tp in wl.arrivals if wl.arrivals[tp]}


def test_produce_raises_on_delivery_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_kafka(monkeypatch, fail_at=50)
    with pytest.raises(RuntimeError, match="broker down"):
        produce(generate(SMALL), "fake:9092")
