"""A mixed stream of every source through one running replicator, killed -9 again and again
while the input still arrives (one kill losing the RocksDB state): ScyllaDB tables in the legacy
and the advanced format, in JSON and in Avro through the schema registry, Cassandra tables with
TTLs, range and partition deletes, Debezium Postgres and SQL Server tables, and poison messages of
every connector on their own topic, each stream with re-deliveries, disorder and (where its
connector has them) partial updates, deletes and write-time ties.

Then: every cell table equals the cell oracle's rows at the time it is read (the TTLs expire while
the test runs, and the replicator's sweep removes what expired), every Debezium table and its
audit rows equal the LWW oracle (`assert_matches_oracle`), the DLQ holds exactly the poison, and
every stale-event row of a cell table is explained (`_unexplained_stale`).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import psycopg
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from psycopg import sql

from benchmarks.cell_oracle import (
    CellVersion,
    Event,
    MarkerVersion,
    Reconciled,
    cell_rank,
    marker_rank,
    reconcile,
)
from benchmarks.replicator_run import Run, assert_matches_oracle
from benchmarks.workload import Workload, WorkloadSpec, create_workload_topics, produce
from benchmarks.workload import generate as generate_debezium
from benchmarks.workload_scylla import KEYS, REGULAR, ScyllaSpec, ScyllaWorkload, generate
from operators.cell_shard import SWEEP_EVERY_S
from operators.events import TableName
from tests.integration.kills import BackgroundProducer, kill_repeatedly
from tests.integration.test_poison_under_kill import POISON as DEBEZIUM_POISON

pytestmark = pytest.mark.integration
PARTITIONS = 2
CELL_RATE = 50  # messages/s of each cell workload: ~25 s of input, through every kill
DEBEZIUM_RATE = 45  # of each Debezium workload
POISON_RATE = 20
TTL_WINDOW_S = 14  # the TTLs that expire during the test: within this of the production's start


@pytest.fixture
def run(kafka_bootstrap, pg_dsn, tmp_path):
    run = Run(kafka_bootstrap, pg_dsn, tmp_path / "state", shards=4)
    yield run
    run.cleanup()


def _now_us() -> int:
    return time.time_ns() // 1000


def _cell_workloads(run: Run, registry_url: str) -> list[ScyllaWorkload]:
    """Both ScyllaDB formats in JSON and in Avro, and Cassandra with TTLs from now on."""
    common = dict(events=1_100, keys=260, partitions=PARTITIONS, ties_pct=3, replay_pct=4,
                  out_of_order_pct=3, deletes_pct=12, topic_prefix=run.prefix)
    return [
        generate(ScyllaSpec(**common, seed=181, keyspace="scylla_json",
                            encodings=(("carts", "advanced"),))),
        generate(ScyllaSpec(**common, seed=182, keyspace="scylla_avro",
                            encodings=(("orders", "advanced"),), registry_url=registry_url)),
        generate(ScyllaSpec(**common, seed=183, keyspace="cassandra",
                            encodings=(("orders", "cassandra"), ("carts", "cassandra")),
                            ttl_pct=35, ttl_window_s=TTL_WINDOW_S, clock_us=_now_us())),
    ]


def _debezium_workloads(run: Run) -> list[Workload]:
    common = dict(topic_prefix=run.prefix, partitions=PARTITIONS, keys=300, events=1_000)
    return [
        generate_debezium(WorkloadSpec(**common, seed=184, tables=("customers", "orders"))),
        generate_debezium(WorkloadSpec(**common, seed=185, connector="sqlserver", schema="dbo",
                                       tables=("products",), composite_key=True)),
    ]


def _target(workload: ScyllaWorkload, table: str) -> str:
    """Each keyspace's tables get their own target table (REPLICATE_TABLE_MAP)."""
    return f"{workload.spec.keyspace}_{table}"


def _settings(run: Run, cells: list[ScyllaWorkload], registry_url: str) -> None:
    run.extra_env["REPLICATE_TABLE_MAP"] = orjson.dumps(
        {w.spec.topic(t): _target(w, t) for w in cells for t in KEYS}).decode()
    run.extra_env["REPLICATE_CQL_TYPES"] = orjson.dumps(  # decimal arrives as text or double
        {w.spec.topic(t): {"amount": "decimal"} for w in cells for t in KEYS}).decode()
    run.extra_env["REPLICATE_SCHEMA_REGISTRY_URL"] = registry_url


# --------------------------------------------------------------------------- poison


def _cell_poison(cells: list[ScyllaWorkload]) -> list[tuple[bytes, bytes, str]]:
    """(key, value, reason): a real insert or update of each cell encoding with one defect."""

    def first(workload: ScyllaWorkload, table: str) -> tuple[Any, Any]:
        for topic, partition in sorted(workload.arrivals):
            if topic == workload.spec.topic(table):
                for key, value in workload.messages(topic, partition):
                    doc = orjson.loads(value or b"null")
                    if doc and doc["payload"]["op"] in ("c", "i", "u"):
                        return orjson.loads(key), doc
        raise AssertionError(f"no write of {table}")

    def variant(doc: Any, edit: Any) -> Any:
        copy = orjson.loads(orjson.dumps(doc))
        edit(copy["payload"])
        return copy

    legacy_key, legacy = first(cells[0], "orders")
    advanced_key, advanced = first(cells[0], "carts")
    cassandra_key, cassandra = first(cells[2], "orders")
    out = [
        (legacy_key, variant(legacy, lambda p: p["after"].update(big=7)), "bad_value"),
        (legacy_key, variant(legacy, lambda p: p.update(after=None)), "missing_after"),
        (advanced_key, variant(advanced, lambda p: p["after"].update(big="many")), "bad_value"),
        (advanced_key, advanced["payload"], "no_schema"),
        (cassandra_key, variant(cassandra, lambda p: p.update(op="x")), "unknown_op"),
        (cassandra_key, variant(cassandra, lambda p: p["source"].update(ts_us="late")),
         "bad_version"),
        (cassandra_key, variant(cassandra, lambda p: p["after"].update(
            big={"value": 5, "deletion_ts": "soon", "set": True})), "bad_value"),
    ]
    return [(orjson.dumps(k), orjson.dumps(v), reason) for k, v, reason in out]


class PoisonTrickle:
    """Poison at POISON_RATE, message i on partition i % PARTITIONS, until stopped: it runs
    through the kills and on past the TTLs' expiry, so every shard commits (and sweeps) after
    the last expiry. Each value is made unique by trailing spaces that cannot change its
    reason."""

    def __init__(self, bootstrap: str, topic: str, poison: list[tuple[bytes, bytes, str]]):
        self.topic = topic
        self.expected: dict[tuple[str, int, int], tuple[bytes, bytes, str]] = {}
        self._poison = poison
        self._producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
        self._stop = threading.Event()
        self._thread = BackgroundProducer(self._run)

    def _landed(self, err: Any, msg: Any, reason: str) -> None:
        assert err is None, err
        self.expected[(msg.topic(), msg.partition(), msg.offset())] = (
            msg.key(), msg.value(), reason)

    def _run(self) -> None:
        started, sent = time.monotonic(), 0
        while not self._stop.is_set():
            key, value, reason = self._poison[sent % len(self._poison)]
            self._producer.produce(
                self.topic, value=value + b" " * (sent // len(self._poison) % 3), key=key,
                partition=sent % PARTITIONS,
                on_delivery=lambda err, msg, why=reason: self._landed(err, msg, why))
            self._producer.poll(0)
            sent += 1
            self._stop.wait(max(0.0, started + sent / POISON_RATE - time.monotonic()))
        assert self._producer.flush(30) == 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout_s=60)

    def ends(self) -> dict[tuple[str, int], int]:
        counts = Counter((t, p) for t, p, _ in self.expected)
        return {(self.topic, p): counts[(self.topic, p)] for p in range(PARTITIONS)}


# --------------------------------------------------------------------------- comparisons


def _normal(value: Any) -> Any:
    """A value as the oracle gives it: naive UTC timestamps, Decimals compared by value."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    if isinstance(value, Decimal):
        return value.normalize()
    return value


def _cell_table_differences(conn: psycopg.Connection, schema: str, workload: ScyllaWorkload,
                            now_us: int) -> list[str]:
    want_all = workload.rows_at(now_us)
    problems = []
    for table in KEYS:
        columns = [*KEYS[table], *REGULAR]
        found = conn.execute(sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(map(sql.Identifier, columns)),
            sql.Identifier(schema, _target(workload, table)))).fetchall()
        got = {tuple(r[: len(KEYS[table])]): {c: _normal(v) for c, v in zip(columns, r,
                                                                               strict=True)}
               for r in found}
        want = {k: {c: _normal(v) for c, v in row.items()}
                for k, row in want_all[table].items()}
        missing, extra = want.keys() - got.keys(), got.keys() - want.keys()
        wrong = [k for k in want.keys() & got.keys() if got[k] != want[k]]
        if missing or extra or wrong:
            problems.append(
                f"{_target(workload, table)}: {len(missing)} missing, {len(extra)} extra, "
                f"{len(wrong)} wrong of {len(want)}; e.g. {[(got[k], want[k]) for k in wrong[:2]]}"
                f" missing {sorted(missing)[:3]} extra {sorted(extra)[:3]}")
    return problems


Slot = tuple[Any, ...]


def _components(ev: Event) -> dict[Slot, Any]:
    """What one change writes, each slot with its version in the oracle's order."""
    if ev.kind == "write":
        out: dict[Slot, Any] = {("cell", ev.table, ev.key, col): cell_rank(CellVersion(
            ev.ts_us, value, None if value is None else ev.expiries.get(col)))
            for col, value in ev.cells.items()}
        if ev.marker:
            out[("marker", ev.table, ev.key)] = marker_rank(
                MarkerVersion(ev.ts_us, ev.marker_expiry_us))
        return out
    if ev.kind == "row_delete":
        return {("deletion", ev.table, ev.key): ev.ts_us}
    return {(ev.kind, ev.table, ev.key, ev.range_start, ev.range_end): ev.ts_us}


def _winner(state: Reconciled, slot: Slot) -> Any:
    kind, table, key = slot[:3]
    if kind == "cell":
        return cell_rank(state.cells[(table, key, slot[3])])
    if kind == "marker":
        return marker_rank(state.markers[(table, key)])
    if kind == "deletion":
        return state.deletion_us(table, key)
    if kind == "partition_delete":
        return state.partition_deletes[(table, key)]
    return state.range_deletes[(table, key)][slot[3:]]


def _unexplained_stale(workload: ScyllaWorkload, stale: list[tuple[Any, ...]],
                       schema: str) -> list[str]:
    """The stale-event rows of `workload`'s topics that are not explained.

    A message is stale when everything it carries was already outdone, so dropping it must
    change nothing of the final reconciled state. Precisely, with the oracle's final state of
    all the workload's messages: every slot the message writes (each cell, the row marker, a
    row's deletion, a partition's or range's deletion) is
    - shadowed: a cell or marker written at or before the newest deletion covering its row, or
    - outdone: its version ranks below the final version of the slot (a row delete: below the
      newest deletion covering the row), or
    - equal to the final version and carried by another message too: a re-delivered copy, or
      a statement of the same write time carrying the same version (a row delete: another
      message deleting that row at that time, whether a row, partition or range delete).
    Each row must also name the message's table and write time."""
    state = workload.state
    carriers: Counter[tuple[Slot, Any]] = Counter()
    events: dict[tuple[str, int, int], Event] = {}
    deletes: dict[tuple[str, Any], list[Event]] = {}
    for (topic, partition), entries in workload.arrivals.items():
        for offset, (ev, tomb, _) in enumerate(entries):
            if tomb:
                continue
            events[(topic, partition, offset)] = ev
            carriers.update(_components(ev).items())
            if ev.kind in ("partition_delete", "range_delete"):
                deletes.setdefault((ev.table, ev.key), []).append(ev)

    def deleting(table: str, key: Any, ts_us: int) -> int:
        """How many messages delete the row of `key` at `ts_us`."""
        wider = sum(1 for d in deletes.get((table, key[:1]), ())
                    if d.ts_us == ts_us and reconcile([d]).deletion_us(table, key) == ts_us)
        return carriers[(("deletion", table, key), ts_us)] + wider

    problems = []
    for topic, partition, offset, table_name, version in stale:
        ev = events.get((topic, partition, offset))
        if ev is None:
            problems.append(f"{topic}[{partition}]@{offset}: not a change of the workload")
            continue
        if (table_name, version) != (str(TableName(schema, _target(workload, ev.table))),
                                     f"writetime:ts_us={ev.ts_us}"):
            problems.append(f"{topic}[{partition}]@{offset}: audited as {table_name} {version}")
        for slot, rank in _components(ev).items():
            kind, table, key = slot[:3]
            covering = None if kind not in ("cell", "marker") else state.deletion_us(table, key)
            final = _winner(state, slot)
            if covering is not None and ev.ts_us <= covering or rank < final:
                continue
            others = (deleting(table, key, ev.ts_us) if kind == "deletion"
                      else carriers[(slot, rank)])
            if rank == final and others >= 2:
                continue
            problems.append(f"{topic}[{partition}]@{offset}: {ev} holds the final {slot} alone")
            break
    return problems


# --------------------------------------------------------------------------- the test


def _wait_caught_up(run: Run, ends: dict[tuple[str, int], int], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(run.dsn, autocommit=True) as conn:
        while behind := run.partitions_behind(conn, ends):
            assert not run.died(), f"replicator exited:\n{run.log_tail()}"
            assert time.monotonic() < deadline, f"not caught up: {behind[:5]}\n{run.log_tail()}"
            time.sleep(0.5)


def _ends(workloads: list[Any]) -> Iterator[tuple[tuple[str, int], int]]:
    for workload in workloads:
        for tp, entries in workload.arrivals.items():
            yield tp, len(entries)


def test_a_mixed_stream_of_every_source_converges_through_kill_9s(run, schema_registry_url):
    cells = _cell_workloads(run, schema_registry_url)
    debezium = _debezium_workloads(run)
    workloads: list[Any] = [*cells, *debezium]
    _settings(run, cells, schema_registry_url)
    poison_topic = f"{run.prefix}.poison.messages"
    for workload in workloads:
        run.topics += workload.topics
        create_workload_topics(workload, run.bootstrap)
    admin = AdminClient({"bootstrap.servers": run.bootstrap})
    admin.create_topics([NewTopic(poison_topic, num_partitions=PARTITIONS)])[poison_topic].result(
        timeout=30)
    run.topics.append(poison_topic)
    trickle = PoisonTrickle(run.bootstrap, poison_topic,
                            [*DEBEZIUM_POISON, *_cell_poison(cells)])
    producers = [BackgroundProducer(lambda w=w, r=r: produce(w, run.bootstrap,
                                                             create_topics=False, rate=r))
                 for w, r in [*((w, CELL_RATE) for w in cells),
                              *((w, DEBEZIUM_RATE) for w in debezium)]]
    trickle.start()
    for producer in producers:
        producer.start()
    partitions = sorted(tp for tp, _ in _ends(workloads))
    kill_repeatedly(run, partitions + [(poison_topic, p) for p in range(PARTITIONS)], times=3,
                    lose_state_at=1, seed=18)
    run.start()
    for producer in producers:
        producer.join(timeout_s=120)
    expired_by = max(w.spec.expiring_by_us for w in cells)  # then poison a sweep period on
    time.sleep(max(0.0, (expired_by - _now_us()) / 1e6) + SWEEP_EVERY_S + 0.5)
    trickle.stop()
    _wait_caught_up(run, dict(_ends(workloads)) | trickle.ends())
    with psycopg.connect(run.dsn, autocommit=True) as conn:
        now_us = _now_us()
        problems = [p for w in cells for p in _cell_table_differences(conn, run.schema, w, now_us)]
        stale = conn.execute('SELECT topic, partition, "offset", table_name, version '
                             "FROM cdc.stale_events WHERE flow_id = %s",
                             (run.flow_id,)).fetchall()
        dlq = conn.execute('SELECT topic, partition, "offset", raw_key, raw_value, error_type '
                           "FROM cdc.dlq WHERE flow_id = %s", (run.flow_id,)).fetchall()
    problems += [p for w in cells for p in _unexplained_stale(
        w, [s for s in stale if s[0] in w.topics], run.schema)]
    assert not problems, "\n".join(problems[:20])
    cell_topics = {t for w in cells for t in w.topics}
    assert sum(s[0] in cell_topics for s in stale) > 0  # late and outdone changes were audited
    got = {(t, p, o): (bytes(k), bytes(v), reason) for t, p, o, k, v, reason in dlq}
    assert len(got) == len(dlq), "a message is in the DLQ twice"
    assert got == trickle.expected, (
        f"{len(trickle.expected.keys() - got.keys())} poison missing, "
        f"{len(got.keys() - trickle.expected.keys())} unexpected, e.g. "
        f"{sorted(got.keys() - trickle.expected.keys())[:3]}; wrong: "
        f"{[(got[k], v) for k, v in trickle.expected.items() if k in got and got[k] != v][:2]}")
    for workload in debezium:
        assert_matches_oracle(run, workload, dlq_topics=(poison_topic,))
    assert run.stop() == [0]
