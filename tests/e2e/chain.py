"""The live chain's moving parts for tests: a scratch source database on the source cluster and a
Debezium connector on it (`infra/debezium.sh`, a Connect worker of the test's own)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg import sql

from benchmarks.replicator_run import free_ports

SOURCE_ADMIN_DSN = os.environ.get("TEST_SOURCE_PG_DSN",
                                  "postgresql://postgres:postgres@127.0.0.1:5433/postgres")
INFRA = Path(__file__).resolve().parents[2] / "infra"
DEBEZIUM = INFRA / "debezium.sh"
KAFKA_PIDFILE = INFRA.parent / ".local" / "kafka" / "kafka.pid"


def source_dsn(dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(SOURCE_ADMIN_DSN, dbname=dbname)


@dataclass
class LiveSource:
    """A source database `name` and the Debezium connector `name` on it, writing topics
    `<name>.public.<table>`; `name` is also the slot's and publication's suffix."""

    name: str
    bootstrap: str
    work: Path
    partitions: int = 1
    format: str = "json"
    """Keys' and values' encoding: `json` (schemas on) or `avro` (through the local registry)."""
    extra: dict[str, str] = field(default_factory=dict)
    """More connector properties (`DEBEZIUM_EXTRA`)."""
    rest_port: int = field(default_factory=lambda: free_ports(1)[0])

    @property
    def dsn(self) -> str:
        return source_dsn(self.name)

    def create_database(self) -> None:
        with psycopg.connect(SOURCE_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))

    def env(self) -> dict[str, str]:
        return {**os.environ, "DEBEZIUM_NAME": self.name, "DEBEZIUM_TOPIC_PREFIX": self.name,
                "DEBEZIUM_DBNAME": self.name, "DEBEZIUM_TABLES": r"public\..*",
                "DEBEZIUM_PARTITIONS": str(self.partitions), "DEBEZIUM_FORMAT": self.format,
                "DEBEZIUM_WORK": str(self.work),
                "DEBEZIUM_REST_PORT": str(self.rest_port), "KAFKA_BOOTSTRAP": self.bootstrap,
                "DEBEZIUM_EXTRA": "\n".join(f"{k}={v}" for k, v in self.extra.items())}

    def start(self) -> None:
        """Start the connector's worker and wait until connector and task run."""
        subprocess.run([str(DEBEZIUM), "up"], env=self.env(), check=True, capture_output=True,
                       timeout=300)

    def stop(self) -> None:
        subprocess.run([str(DEBEZIUM), "down"], env=self.env(), check=True, capture_output=True,
                       timeout=120)

    def kill9(self) -> None:
        pid = int((self.work / "connect.pid").read_text())
        os.kill(pid, signal.SIGKILL)

    def log(self) -> str:
        path = self.work / "connect.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_streaming(self, timeout_s: float = 120) -> None:
        """Until the snapshot is done and the connector reads the slot."""
        deadline = time.monotonic() + timeout_s
        while "Starting streaming" not in self.log():
            if time.monotonic() > deadline:
                raise AssertionError(f"connector {self.name} is not streaming:\n"
                                     f"{self.log()[-3000:]}")
            time.sleep(0.5)

    def wait_flushed(self, lsn: str, timeout_s: float = 120) -> None:
        """Until the slot's confirmed flush position reaches `lsn`: the connector commits a position
        to the slot only after Kafka acknowledged every record before it."""
        deadline = time.monotonic() + timeout_s
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not conn.execute(
                    "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots "
                    "WHERE slot_name = %s", (lsn, f"dbz_{self.name}")).fetchone()[0]:
                if time.monotonic() > deadline:
                    raise AssertionError(f"slot dbz_{self.name} not flushed past {lsn}:\n"
                                         f"{self.log()[-3000:]}")
                time.sleep(0.5)

    def topic(self, table: str) -> str:
        return f"{self.name}.public.{table}"

    def wait_topics(self, tables: list[str], timeout_s: float = 60) -> list[str]:
        """Until the connector has created every table's topic; returns their names."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        topics = [self.topic(t) for t in tables]
        deadline = time.monotonic() + timeout_s
        while set(topics) - set(admin.list_topics(timeout=10).topics):
            if time.monotonic() > deadline:
                raise AssertionError(f"topics {topics} not all created:\n{self.log()[-3000:]}")
            time.sleep(0.5)
        return topics

    def drop(self) -> None:
        """Stop the worker, drop slot, publication and database (best effort: teardown)."""
        subprocess.run([str(DEBEZIUM), "drop"], env=self.env(), check=False,
                       capture_output=True, timeout=120)
        with psycopg.connect(SOURCE_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(self.name)))


def infra_up(service: str = "up") -> None:
    """Start the local services again (`infra/up.sh`), or one of them (`kafka`, `postgres`)."""
    script = INFRA / ("up.sh" if service == "up" else f"{service}.sh")
    subprocess.run([str(script)] + ([] if service == "up" else ["up"]), check=True,
                   capture_output=True, timeout=300)


def broker_pid() -> int:
    """The pid of the broker this checkout's `infra/kafka.sh` started: only that one can be
    killed and started again on its own data."""
    assert KAFKA_PIDFILE.exists(), (
        f"no {KAFKA_PIDFILE}: the broker on 127.0.0.1:9092 was not started by this checkout's "
        "infra/kafka.sh (another checkout's, reused), so this test cannot restart it on its data; "
        "stop that one (its infra/down.sh) and run make e2e again")
    return int(KAFKA_PIDFILE.read_text())


def kill9_broker() -> None:
    """SIGKILL the broker `infra/kafka.sh` started (a crash: no clean shutdown of its logs)."""
    os.kill(broker_pid(), signal.SIGKILL)


def stop_postgres(dsn: str) -> None:
    """Stop the Debian cluster serving `dsn`'s port (fast mode: clients are cut off); only that
    one, so the source cluster on its own port keeps running."""
    port = psycopg.conninfo.conninfo_to_dict(dsn).get("port", "5432")
    clusters = subprocess.run(["pg_lsclusters", "--no-header"], check=True, capture_output=True,
                              text=True).stdout
    version, name = next(line.split()[:2] for line in clusters.splitlines()
                         if line.split()[2] == str(port))
    subprocess.run(["pg_ctlcluster", version, name, "stop", "-m", "fast"], check=True,
                   capture_output=True, timeout=120)


def end_offsets(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], int]:
    """The high watermark of every partition of `topics`."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    metadata = admin.list_topics(timeout=10)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "e2e-watermarks"})
    try:
        ends = {}
        for topic in topics:
            for partition in metadata.topics[topic].partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                         timeout=10)
                ends[(topic, partition)] = high
        return ends
    finally:
        consumer.close()


def topic_messages(bootstrap: str, topic: str, timeout_s: float = 30) -> list[Any]:
    """Every message now in partition 0 of `topic`, in order."""
    end = end_offsets(bootstrap, [topic])[(topic, 0)]
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "e2e-read",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    messages: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(messages) < end:
            assert time.monotonic() < deadline, f"read {len(messages)} of {end} from {topic}"
            message = consumer.poll(1)
            if message is not None and not message.error():
                messages.append(message)
    finally:
        consumer.close()
    return messages


def payload(message: Any) -> Any:
    """A JsonConverter message's `payload` (None for a tombstone)."""
    value = message.value()
    return None if value is None else json.loads(value)["payload"]


def topic_payloads(bootstrap: str, topic: str) -> list[Any]:
    return [payload(m) for m in topic_messages(bootstrap, topic)]
