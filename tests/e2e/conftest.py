"""Fixtures of the live chain (`make e2e`): the source cluster, a replicator run, a connector.

Tests marked `e2e` need the source cluster and start Kafka Connect; they run only when CDC_E2E=1
(`make e2e` sets it) and are deselected otherwise, so `make test` does not start the chain.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest

from benchmarks.replicator_run import Run
from tests.e2e.chain import SOURCE_ADMIN_DSN, LiveSource


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: runs the live Debezium chain (make e2e)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("CDC_E2E") == "1":
        return
    chain = [item for item in items if item.get_closest_marker("e2e")]
    if chain:
        config.hook.pytest_deselected(items=chain)
        items[:] = [item for item in items if not item.get_closest_marker("e2e")]


@pytest.fixture(scope="session")
def source_admin_dsn() -> str:
    """The source cluster, answering with wal_level=logical."""
    try:
        with psycopg.connect(SOURCE_ADMIN_DSN, connect_timeout=10) as conn:
            level = conn.execute("SHOW wal_level").fetchone()[0]
    except psycopg.Error as exc:
        pytest.fail(f"no source cluster at {SOURCE_ADMIN_DSN} ({exc}); "
                    "run infra/source_postgres.sh up")
    if level != "logical":
        pytest.fail(f"{SOURCE_ADMIN_DSN} has wal_level={level}; run infra/source_postgres.sh up")
    return SOURCE_ADMIN_DSN


@pytest.fixture
def run(kafka_bootstrap: str, pg_dsn: str, tmp_path) -> Iterator[Run]:
    run = Run(kafka_bootstrap, pg_dsn, tmp_path / "state")
    yield run
    run.cleanup()


@pytest.fixture
def live(run: Run, source_admin_dsn: str, tmp_path) -> Iterator[LiveSource]:
    """A scratch source database and its connector, writing the run's topics."""
    source = LiveSource(run.prefix, run.bootstrap, tmp_path / "connect")
    source.create_database()
    yield source
    source.drop()
