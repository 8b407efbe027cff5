"""Tests marked `cassandra` need the local Cassandra (`make cassandra-up`), which `make infra-up`
does not start: they run only when CDC_CASSANDRA=1 and are deselected otherwise, so `make test`
does not depend on it.
"""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cassandra: needs the local Cassandra (make cassandra-up)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("CDC_CASSANDRA") == "1":
        return
    needs_cassandra = [item for item in items if item.get_closest_marker("cassandra")]
    if needs_cassandra:
        config.hook.pytest_deselected(items=needs_cassandra)
        items[:] = [item for item in items if not item.get_closest_marker("cassandra")]
