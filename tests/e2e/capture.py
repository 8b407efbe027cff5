"""Capture real messages of the live chain into tests/fixtures/debezium_live/, each with what the
source held after its change (tests/e2e/test_captured_messages.py checks the decoder against it).

    .venv/bin/python -m tests.e2e.capture

Needs Kafka (infra/kafka.sh up) and the source cluster (infra/source_postgres.sh up); starts its
own connector (infra/debezium.sh) on a scratch database and drops it afterwards.
"""

from __future__ import annotations

import base64
import json
import random
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka.admin import AdminClient

from tests.e2e import tagged
from tests.e2e.chain import LiveSource, end_offsets, payload, topic_messages
from tests.e2e.source_tables import (
    ACCOUNTS_TABLE,
    ALLTYPES,
    ALLTYPES_TABLE,
    DOC,
    Table,
    create_source_schema,
    delete,
    insert,
    random_values,
    read_rows,
    update,
    update_key,
)
from tests.e2e.workload import IN_FLIGHT, in_flight_across_the_snapshot

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "debezium_live"
BOOTSTRAP = "127.0.0.1:9092"
# A fixture file's content from a captured message and what the source held after its change.
Record = Callable[[Any, dict[str, Any]], dict[str, Any]]


@dataclass
class Step:
    """One change on the source and the fixture files of the messages it makes, in topic order
    (`None`: a message not kept)."""

    table: Table
    files: tuple[str | None, ...]
    change: Callable[[psycopg.Connection], None]
    key: tuple[Any, ...]
    unchanged: tuple[str, ...] = ()
    """Columns the change left TOASTed and unchanged: the message carries the placeholder."""
    deleted: tuple[Any, ...] | None = None
    """The key the change removed: the key of its `*delete*` and `*tombstone*` files."""

    def expected_key(self, file: str) -> tuple[Any, ...]:
        gone = "delete" in file or "tombstone" in file
        return self.deleted if gone and self.deleted is not None else self.key


def full_row(rng: random.Random) -> dict[str, Any]:
    """Every column set; a `doc` just long enough to be stored out of line."""
    values = random_values(rng, ALLTYPES, null_share=0)
    values[DOC.name] = base64.b64encode(rng.randbytes(2400)).decode()
    return values


def steps(rng: random.Random) -> list[Step]:
    all_null = dict.fromkeys([c.name for c in ALLTYPES_TABLE.columns])
    return [
        Step(ALLTYPES_TABLE, ("alltypes_insert.json",),
             lambda c: insert(c, ALLTYPES_TABLE, (2,), full_row(rng)), (2,)),
        Step(ALLTYPES_TABLE, ("alltypes_insert_nulls.json",),
             lambda c: insert(c, ALLTYPES_TABLE, (3,), all_null), (3,)),
        Step(ALLTYPES_TABLE, ("alltypes_update_toast_unchanged.json",),
             lambda c: update(c, ALLTYPES_TABLE, (2,), random_values(rng, ALLTYPES, 0.3)), (2,),
             unchanged=(DOC.name,)),
        Step(ALLTYPES_TABLE, ("alltypes_update_doc.json",),
             lambda c: update(c, ALLTYPES_TABLE, (2,), {DOC.name: full_row(rng)[DOC.name]}),
             (2,)),
        # Seconds Debezium formats from a double as 1.862369999.
        Step(ALLTYPES_TABLE, ("alltypes_update_interval.json",),
             lambda c: update(c, ALLTYPES_TABLE, (2,), {"c_interval": "50 minutes 1.86237 s"}),
             (2,), unchanged=(DOC.name,)),
        Step(ALLTYPES_TABLE, ("alltypes_delete.json", "alltypes_tombstone.json"),
             lambda c: delete(c, ALLTYPES_TABLE, (3,)), (3,), deleted=(3,)),
        Step(ALLTYPES_TABLE, ("alltypes_key_update_delete.json", None,
                              "alltypes_key_update_insert.json"),
             lambda c: update_key(c, ALLTYPES_TABLE, (1,), (4,)), (4,), unchanged=(DOC.name,),
             deleted=(1,)),
        Step(ACCOUNTS_TABLE, ("accounts_insert.json",),
             lambda c: insert(c, ACCOUNTS_TABLE, ("eu", 2),
                              random_values(rng, ACCOUNTS_TABLE.columns, 0)), ("eu", 2)),
        Step(ACCOUNTS_TABLE, ("accounts_truncate.json",),
             lambda c: c.execute("TRUNCATE accounts"), ()),
    ]


def key_columns(table: Table) -> list[str]:
    return [n for n, _ in table.key]


def source_row(conn: psycopg.Connection, table: Table, key: tuple[Any, ...],
               unchanged: tuple[str, ...]) -> dict[str, Any] | None:
    """The row's key and replicated columns as the comparison reads them, without `unchanged`."""
    values = read_rows(conn, "public", table, "source").get(key)
    if values is None:
        return None
    row = dict(zip([n for n, _ in table.key], key, strict=True))
    row.update(zip([c.name for c in table.replicated], values, strict=True))
    return {n: tagged.dump(v) for n, v in row.items() if n not in unchanged}


def current_lsn(conn: psycopg.Connection) -> int:
    return int(conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0])


def consume(topics: dict[str, int], timeout_s: float = 90) -> dict[str, list[Any]]:
    """The first `count` messages of each topic (of one partition), once they are there."""
    deadline = time.monotonic() + timeout_s
    while any(end < topics[t] for (t, _), end in end_offsets(BOOTSTRAP, list(topics)).items()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer messages than {topics}")
        time.sleep(0.5)
    return {t: topic_messages(BOOTSTRAP, t)[:count] for t, count in topics.items()}


def fixture(message: Any, expected: dict[str, Any]) -> dict[str, Any]:
    """The message as JsonConverter wrote it (text, byte for byte) and what the source held."""
    def text(raw: bytes | None) -> str | None:
        return None if raw is None else raw.decode()
    return {"topic": message.topic(), "partition": message.partition(),
            "offset": message.offset(), "key": text(message.key()),
            "value": text(message.value()), "expected": expected}


def capture(encoding: str = "json", record: Record = fixture,
            folder: Path = FIXTURES) -> list[str]:
    """Every table of `source_tables` through every operation (`steps`), the connector writing
    `encoding` (`LiveSource.format`), each message kept as `record` makes it into `folder`."""
    rng = random.Random(20261206)
    source = LiveSource(f"capture_{uuid.uuid4().hex[:8]}", BOOTSTRAP,
                        Path(tempfile.mkdtemp()) / "connect", format=encoding)
    source.create_database()
    try:
        written = {}
        expected: dict[str, dict[str, Any]] = {}
        with psycopg.connect(source.dsn, autocommit=True) as conn:
            create_source_schema(conn)
            insert(conn, ALLTYPES_TABLE, (1,), full_row(rng))
            insert(conn, ACCOUNTS_TABLE, ("eu", 1), random_values(rng, ACCOUNTS_TABLE.columns, 0))
            before = current_lsn(conn)
            source.start()
            source.wait_streaming()
            after = current_lsn(conn)
            for file, table, key in (("alltypes_snapshot.json", ALLTYPES_TABLE, (1,)),
                                     ("accounts_snapshot.json", ACCOUNTS_TABLE, ("eu", 1))):
                expected[file] = {"table": table.name, "key_columns": key_columns(table),
                                  "key": list(key), "lsn_after": after,
                                  "lsn_before": before, "values": source_row(conn, table, key, ())}
            plan = [("alltypes_snapshot.json",), ("accounts_snapshot.json",)]
            for step in steps(rng):
                before = current_lsn(conn)
                step.change(conn)
                after = current_lsn(conn)
                for file in step.files:
                    if file is not None:
                        key = step.expected_key(file)
                        expected[file] = {"table": step.table.name,
                                          "key_columns": key_columns(step.table), "key": list(key),
                                          "lsn_before": before, "lsn_after": after,
                                          "values": source_row(conn, step.table, key,
                                                               step.unchanged)}
                plan.append(step.files)
        source.wait_topics([t.name for t in (ALLTYPES_TABLE, ACCOUNTS_TABLE)])
        counts = {source.topic(t.name): 0 for t in (ALLTYPES_TABLE, ACCOUNTS_TABLE)}
        order: dict[str, list[str | None]] = {t: [] for t in counts}
        for files in plan:
            table = expected[next(f for f in files if f)]["table"]
            order[source.topic(table)] += files
            counts[source.topic(table)] += len(files)
        for topic, messages in consume(counts).items():
            for file, message in zip(order[topic], messages, strict=True):
                if file is not None:
                    written[file] = record(message, expected[file])
        return write(written, folder)
    finally:
        drop(source, [t.name for t in (ALLTYPES_TABLE, ACCOUNTS_TABLE)])


def capture_in_flight() -> list[str]:
    """tests/e2e/workload.py `in_flight_across_the_snapshot`: row 1's snapshot row, the update
    that was open during the snapshot, and the update of row 2 streamed after it."""
    source = LiveSource(f"capture_{uuid.uuid4().hex[:8]}", BOOTSTRAP,
                        Path(tempfile.mkdtemp()) / "connect")
    source.create_database()
    try:
        with psycopg.connect(source.dsn, autocommit=True) as conn:
            before = current_lsn(conn)
            source.wait_flushed(in_flight_across_the_snapshot(source))
            after = current_lsn(conn)
        source.wait_topics(["t"])
        wanted = {("r", 1): ("in_flight_snapshot_row.json", "before"),
                  ("u", 1): ("in_flight_update.json", IN_FLIGHT),
                  ("u", 2): ("in_flight_next_update.json", "streamed")}
        written = {}
        for message in topic_messages(BOOTSTRAP, source.topic("t")):
            change = payload(message)
            found = change and wanted.get((change["op"], change["after"]["id"]))
            if found:
                file, v = found
                key = change["after"]["id"]
                written[file] = fixture(message, {
                    "table": "t", "key_columns": ["id"], "key": [key], "lsn_before": before,
                    "lsn_after": after, "values": {"id": key, "v": v}})
        assert len(written) == len(wanted), sorted(written)
        return write(written)
    finally:
        drop(source, ["t", "other"])


def write(files: dict[str, dict[str, Any]], folder: Path = FIXTURES) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for file, doc in files.items():
        (folder / file).write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    return sorted(files)


def drop(source: LiveSource, tables: list[str]) -> None:
    """The scratch database, slot, publication and topics (best effort)."""
    source.drop()
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    for future in admin.delete_topics([source.topic(t) for t in tables]).values():
        try:
            future.result(timeout=30)
        except Exception:  # noqa: BLE001 - a topic never created is fine
            pass


if __name__ == "__main__":
    for written in capture() + capture_in_flight():
        print(FIXTURES / written)
