"""A realistic workload on the live source: seed rows (the connector's snapshot), then several
concurrent writers doing inserts, updates (most leaving the TOASTed `doc` unchanged), deletes,
primary-key updates, rolled-back transactions and one TRUNCATE."""

from __future__ import annotations

import itertools
import random
import threading
from collections import Counter
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from tests.e2e.chain import LiveSource
from tests.e2e.source_tables import (
    ACCOUNTS_TABLE,
    ALLTYPES,
    ALLTYPES_TABLE,
    DOC,
    create_source_schema,
    delete,
    insert,
    random_values,
    update,
    update_key,
)

REGIONS = ("eu", "us", "ap")
AFTER_END = "after_end"
"""A table written once after the workload's last change (see `mark_end`); not compared."""


@dataclass
class Workload:
    """Shared key counters and what the writers did (committed operations that hit a row)."""

    seed: int
    next_id: itertools.count = field(default_factory=lambda: itertools.count(1))
    next_account: itertools.count = field(default_factory=lambda: itertools.count(1))
    done: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    errors: list[BaseException] = field(default_factory=list)
    moved_to: set[tuple[int]] = field(default_factory=set)
    """Keys a committed primary-key update made: Debezium sends such a row's unchanged TOASTed
    `doc` as its placeholder (docs/types.md), so the target may hold NULL there."""

    def new_id(self) -> int:
        with self.lock:
            return next(self.next_id)

    def new_account(self, rng: random.Random) -> tuple[str, int]:
        with self.lock:
            return rng.choice(REGIONS), next(self.next_account)

    def some_id(self, rng: random.Random) -> int:
        with self.lock:
            top = next(self.next_id)
        return rng.randint(1, max(1, top - 1))

    def some_account(self, rng: random.Random) -> tuple[str, int]:
        with self.lock:
            top = next(self.next_account)
        return rng.choice(REGIONS), rng.randint(1, max(1, top - 1))


def alltypes_row(rng: random.Random, with_doc: bool) -> dict:
    values = random_values(rng, ALLTYPES)
    values[DOC.name] = DOC.generate(rng) if with_doc else None
    return values


def seed(dsn: str, workload: Workload, rows: int) -> None:
    """Schema and the rows the connector's snapshot will read."""
    rng = random.Random(workload.seed)
    with psycopg.connect(dsn) as conn:
        create_source_schema(conn)
        conn.execute(f"CREATE TABLE {AFTER_END} (id integer PRIMARY KEY)")
        for _ in range(rows):
            insert(conn, ALLTYPES_TABLE, (workload.new_id(),),
                   alltypes_row(rng, rng.random() < 0.3))
            insert(conn, ACCOUNTS_TABLE, workload.new_account(rng),
                   random_values(rng, ACCOUNTS_TABLE.columns))


def _transaction(conn: psycopg.Connection, rng: random.Random, workload: Workload,
                 done: Counter, moved_to: set[tuple[int]]) -> None:
    """1-4 random statements; what hit a row is counted in `done`, new keys of primary-key
    updates go to `moved_to`."""
    for _ in range(rng.randint(1, 4)):
        pick = rng.random()
        if pick < 0.3:
            insert(conn, ALLTYPES_TABLE, (workload.new_id(),),
                   alltypes_row(rng, rng.random() < 0.3))
            done["insert"] += 1
        elif pick < 0.55:
            columns = rng.sample(ALLTYPES, rng.randint(1, 6))
            if update(conn, ALLTYPES_TABLE, (workload.some_id(rng),),
                      random_values(rng, tuple(columns), null_share=0.2)):
                done["update leaving doc unchanged"] += 1
        elif pick < 0.6:
            if update(conn, ALLTYPES_TABLE, (workload.some_id(rng),),
                      {DOC.name: DOC.generate(rng)}):
                done["update of doc"] += 1
        elif pick < 0.7:
            if delete(conn, ALLTYPES_TABLE, (workload.some_id(rng),)):
                done["delete"] += 1
        elif pick < 0.78:
            new_key = (workload.new_id(),)
            if update_key(conn, ALLTYPES_TABLE, (workload.some_id(rng),), new_key):
                done["primary-key update"] += 1
                moved_to.add(new_key)
        elif pick < 0.88:
            insert(conn, ACCOUNTS_TABLE, workload.new_account(rng),
                   random_values(rng, ACCOUNTS_TABLE.columns))
            done["insert"] += 1
        elif pick < 0.95:
            if update(conn, ACCOUNTS_TABLE, workload.some_account(rng),
                      random_values(rng, ACCOUNTS_TABLE.columns)):
                done["update"] += 1
        elif delete(conn, ACCOUNTS_TABLE, workload.some_account(rng)):
            done["delete"] += 1


def write(dsn: str, workload: Workload, writer: int, transactions: int,
          truncate_at: int | None = None) -> None:
    """One writer: `transactions` transactions, 10% rolled back; TRUNCATE accounts at
    `truncate_at`. A deadlock with another writer rolls the transaction back."""
    rng = random.Random(workload.seed * 1000 + writer)
    done: Counter = Counter()
    try:
        with psycopg.connect(dsn) as conn:
            for number in range(transactions):
                if number == truncate_at:
                    with conn.transaction():
                        conn.execute("TRUNCATE accounts")
                    done["truncate"] += 1
                counted: Counter = Counter()
                moved_to: set[tuple[int]] = set()
                try:
                    with conn.transaction():
                        _transaction(conn, rng, workload, counted, moved_to)
                        if rng.random() < 0.1:
                            raise _Rollback
                    done.update(counted)
                    with workload.lock:
                        workload.moved_to |= moved_to
                except (_Rollback, psycopg.errors.DeadlockDetected):
                    done["rolled back"] += 1
    except BaseException as exc:  # reported by run_writers
        workload.errors.append(exc)
    with workload.lock:
        workload.done.update(done)


class _Rollback(Exception):
    """Ends a transaction with ROLLBACK on purpose."""


def run_writers(dsn: str, workload: Workload, writers: int, transactions: int) -> None:
    """`writers` concurrent writers; the first truncates `accounts` halfway."""
    threads = [threading.Thread(target=write, args=(dsn, workload, n, transactions,
                                                    transactions // 2 if n == 0 else None))
               for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if workload.errors:
        raise workload.errors[0]


def mark_end(dsn: str, workload: Workload) -> str:
    """One last insert after the writers, then one into `AFTER_END`; returns a WAL position just
    before the last insert. The connector records a transaction's commit in the offsets of the
    next change, and commits offsets to the slot only once Kafka acknowledged their records: the
    slot reaches the position when the last insert is in Kafka."""
    rng = random.Random(workload.seed - 1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        lsn = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]
        insert(conn, ACCOUNTS_TABLE, workload.new_account(rng),
               random_values(rng, ACCOUNTS_TABLE.columns))
        conn.execute(f"INSERT INTO {AFTER_END} VALUES (1)")
    return lsn


IN_FLIGHT = "committed after the snapshot"


def in_flight_across_the_snapshot(live: LiveSource) -> str:
    """Table `t` (ids 1-3) and `other`; a transaction updates row 1 to `IN_FLIGHT` and stays open
    while the connector starts and snapshots, then commits; then row 2 and row 3 change (one
    transaction each) and `other` gets a row. Returns a WAL position `live.wait_flushed` reaches
    once every change of `t` is in Kafka.

    Publication and slot are made before the snapshot (by hand here, as a DBA may; also what a
    connector restarted in mid-snapshot finds), so the connector's snapshot reads at
    pg_current_wal_lsn(), above the open transaction's change, not at the slot's start."""
    with psycopg.connect(live.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
        conn.execute("CREATE TABLE other (id integer PRIMARY KEY)")
        conn.execute("INSERT INTO t SELECT g, 'before' FROM generate_series(1, 3) g")
        conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE t, other").format(
            sql.Identifier(f"dbz_{live.name}")))
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')",
                     (f"dbz_{live.name}",))
    with psycopg.connect(live.dsn) as in_flight:
        in_flight.execute("UPDATE t SET v = %s WHERE id = 1", (IN_FLIGHT,))
        with psycopg.connect(live.dsn, autocommit=True) as conn:  # WAL between it and the snapshot
            conn.execute("INSERT INTO other SELECT generate_series(1, 100)")
        live.start()
        live.wait_streaming()
    with psycopg.connect(live.dsn, autocommit=True) as conn:
        conn.execute("UPDATE t SET v = 'streamed' WHERE id = 2")
        marker = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]
        conn.execute("UPDATE t SET v = 'last' WHERE id = 3")
        conn.execute("INSERT INTO other VALUES (0)")
    return marker
