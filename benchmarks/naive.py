"""The `naive` baseline: the consumer loop people write by hand.

confluent-kafka consumer → json → per-row `INSERT ... ON CONFLICT DO UPDATE` or `DELETE`
(executemany per run of same-statement messages, in arrival order), commit per poll batch, then
commit the Kafka offsets. No version check, so the last event to arrive wins. Exits when its
position is at the end of every partition and prints one JSON line of timings.

    python -m benchmarks.naive --schema S --topics a,b --group G [--bootstrap ..] [--dsn ..]
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from datetime import datetime, timedelta
from decimal import Decimal

import orjson
import psycopg
from confluent_kafka import Consumer
from psycopg import sql

from benchmarks.kafka_read import partition_ends

EPOCH = datetime(1970, 1, 1)


def _converters(schema: dict) -> dict:
    """Column -> function for the few Connect logical types in the row schema."""
    out = {}
    row = next(f for f in schema["fields"] if f["field"] == "after")
    for f in row["fields"]:
        name = f.get("name")
        if name == "org.apache.kafka.connect.data.Decimal":
            scale = int(f["parameters"]["scale"])
            out[f["field"]] = lambda v, s=scale: Decimal(
                int.from_bytes(base64.b64decode(v), "big", signed=True)).scaleb(-s)
        elif name == "io.debezium.time.MicroTimestamp":
            out[f["field"]] = lambda v: EPOCH + timedelta(microseconds=v)
    return out


def _statement(schema: str, kind: str, table: str, key: tuple[str, ...],
               cols: tuple[str, ...]) -> sql.Composed:
    target = sql.Identifier(schema, table)
    if kind == "d":
        return sql.SQL("DELETE FROM {t} WHERE {w}").format(
            t=target, w=sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k))
                                              for k in key))
    return sql.SQL("INSERT INTO {t} ({c}) VALUES ({v}) ON CONFLICT ({k}) DO UPDATE SET {s}").format(
        t=target, c=sql.SQL(", ").join(map(sql.Identifier, cols)),
        v=sql.SQL(", ").join(sql.Placeholder() * len(cols)),
        k=sql.SQL(", ").join(map(sql.Identifier, key)),
        s=sql.SQL(", ").join(sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c))
                             for c in cols if c not in key))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--dsn", default="postgresql://postgres:postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--schema", required=True)
    ap.add_argument("--topics", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--batch", type=int, default=2000)
    a = ap.parse_args(argv)
    started = time.monotonic()
    topics = a.topics.split(",")
    consumer = Consumer({"bootstrap.servers": a.bootstrap, "group.id": a.group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    ends = partition_ends(consumer, topics)
    consumer.subscribe(topics)
    conn = psycopg.connect(a.dsn)
    conv_cache: dict[str, dict] = {}
    stmts: dict[tuple, sql.Composed] = {}
    position = {tp: 0 for tp in ends}
    first = None
    batches = 0
    while any(position[tp] < end for tp, end in ends.items()):
        msgs = consumer.consume(a.batch, timeout=0.5)
        if not msgs:
            continue
        if first is None:
            first = time.monotonic()
        # Runs of consecutive messages with the same statement, in arrival order.
        runs: list[tuple[tuple, list[tuple]]] = []
        for m in msgs:
            if m.error():
                raise SystemExit(f"kafka error: {m.error()}")
            position[(m.topic(), m.partition())] = m.offset() + 1
            if m.value() is None:
                continue  # tombstone
            doc = orjson.loads(m.value())
            payload = doc["payload"]
            table = m.topic().rsplit(".", 1)[1]
            convs = conv_cache.get(table)
            if convs is None:
                convs = conv_cache[table] = _converters(doc["schema"])
            key = orjson.loads(m.key())["payload"]
            if payload["op"] == "d":
                what, row_values = ("d", table, tuple(key), ()), tuple(key.values())
            else:
                row = payload["after"]
                for c, f in convs.items():
                    if row.get(c) is not None:
                        row[c] = f(row[c])
                what, row_values = ("u", table, tuple(key), tuple(row)), tuple(row.values())
            if runs and runs[-1][0] == what:
                runs[-1][1].append(row_values)
            else:
                runs.append((what, [row_values]))
        with conn.cursor() as cur:
            for what, rows in runs:
                stmt = stmts.get(what)
                if stmt is None:
                    stmt = stmts[what] = _statement(a.schema, *what)
                cur.executemany(stmt, rows)
        conn.commit()
        consumer.commit(asynchronous=False)
        batches += 1
    done = time.monotonic()
    consumer.close()
    conn.close()
    print(json.dumps({"seconds": done - started, "batches": batches,
                      "seconds_from_first_message": done - first if first else None}))


if __name__ == "__main__":
    main()
