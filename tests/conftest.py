"""Shared fixtures for tests that need the local services (`make infra-up`).

Generic on purpose: test modules add their own fixtures next to their tests.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

KAFKA_BOOTSTRAP = os.environ.get("TEST_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
PG_DSN = os.environ.get("TEST_PG_DSN", "postgresql://postgres:postgres@127.0.0.1:5432/postgres")
SERVICE_TIMEOUT_S = 10.0


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Bootstrap address of a Kafka broker that answers metadata requests."""
    admin = AdminClient({"bootstrap.servers": KAFKA_BOOTSTRAP})
    try:
        metadata = admin.list_topics(timeout=SERVICE_TIMEOUT_S)
    except Exception as exc:  # KafkaException on timeout
        pytest.fail(f"Kafka does not answer on {KAFKA_BOOTSTRAP} ({exc}); run make infra-up")
    if not metadata.brokers:
        pytest.fail(f"Kafka on {KAFKA_BOOTSTRAP} reports no brokers; run make infra-up")
    return KAFKA_BOOTSTRAP


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """DSN of a PostgreSQL server that accepts connections (dev-only credentials)."""
    try:
        with psycopg.connect(PG_DSN, connect_timeout=int(SERVICE_TIMEOUT_S)) as conn:
            conn.execute("SELECT 1").fetchone()
    except psycopg.Error as exc:
        pytest.fail(f"PostgreSQL does not answer on {PG_DSN} ({exc}); run make infra-up")
    return PG_DSN


@pytest.fixture(scope="session")
def admin(kafka_bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka_bootstrap})


@pytest.fixture
def make_topic(admin: AdminClient) -> Iterator[Callable[..., str]]:
    """Factory: `make_topic("orders", partitions=4)` makes `orders-<uuid>`; deleted at teardown."""
    created: list[str] = []

    def _make(
        prefix: str = "test", partitions: int = 1, config: dict[str, str] | None = None
    ) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
            operation_timeout=SERVICE_TIMEOUT_S,
        )
        futures[name].result(timeout=SERVICE_TIMEOUT_S)
        created.append(name)
        return name

    yield _make

    if created:
        for future in admin.delete_topics(created, operation_timeout=SERVICE_TIMEOUT_S).values():
            try:
                future.result(timeout=SERVICE_TIMEOUT_S)
            except Exception:  # best effort: a missing topic must not fail the test
                pass


@pytest.fixture
def pg_conn(pg_dsn: str) -> Iterator[psycopg.Connection]:
    """A fresh autocommit connection, closed at teardown."""
    conn = psycopg.connect(pg_dsn, autocommit=True)
    try:
        yield conn
    finally:
        conn.close()


SCHEMA_REGISTRY_URL = os.environ.get("TEST_SCHEMA_REGISTRY_URL",
                                     "http://127.0.0.1:8081/apis/ccompat/v7")


@pytest.fixture(scope="session")
def schema_registry_url() -> str:
    """Base URL of a Confluent-compatible schema registry that answers."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    try:
        SchemaRegistryClient({"url": SCHEMA_REGISTRY_URL, "timeout": 10}).get_subjects()
    except Exception as exc:
        pytest.fail(f"no schema registry answers at {SCHEMA_REGISTRY_URL} ({exc}); "
                    "run make infra-up")
    return SCHEMA_REGISTRY_URL
