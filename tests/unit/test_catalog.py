"""TableCatalog caching: hits stay cached, a missing table is looked up again later."""

from __future__ import annotations

import psycopg
import pytest

from operators.events import TableName
from schemas import catalog as catalog_module
from schemas.catalog import TableCatalog

T = TableName("public", "t")


class FakeConnection:
    """Answers the catalog's two queries from `tables`; counts connections."""

    def __init__(self, db: FakeDb) -> None:
        self._db = db

    def __enter__(self) -> FakeConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def execute(self, query: str, params: tuple[str, str]) -> FakeConnection:
        columns = self._db.tables.get(TableName(*params))
        if "indisprimary" in query:
            self._rows = [("id",)] if columns else []
        else:
            self._rows = list(columns.items()) if columns else []
        return self

    def fetchall(self) -> list[tuple[str, ...]]:
        return self._rows


class FakeDb:
    def __init__(self) -> None:
        self.tables: dict[TableName, dict[str, str]] = {}
        self.connections = 0
        self.fail_next = 0

    def connect(self) -> FakeConnection:
        self.connections += 1
        if self.fail_next:
            self.fail_next -= 1
            raise psycopg.OperationalError("server closed the connection")
        return FakeConnection(self)


def test_found_tables_are_cached():
    db = FakeDb()
    db.tables[T] = {"id": "bigint", "name": "text"}
    catalog = TableCatalog(db.connect)
    assert catalog.columns(T) == {"id": "bigint", "name": "text"}
    assert catalog.primary_key(T) == ("id",)
    catalog.columns(T)
    assert db.connections == 2  # one per query kind, then cached


def test_missing_table_is_rechecked_after_a_while(monkeypatch):
    db = FakeDb()
    now = [100.0]
    monkeypatch.setattr(catalog_module, "monotonic", lambda: now[0])
    catalog = TableCatalog(db.connect)
    assert catalog.columns(T) is None
    db.tables[T] = {"id": "bigint"}
    assert catalog.columns(T) is None  # still inside the recheck interval
    now[0] += catalog_module.MISSING_RECHECK_S
    assert catalog.columns(T) == {"id": "bigint"}


def test_a_lost_connection_is_retried(monkeypatch):
    monkeypatch.setattr("operators.retry.time.sleep", lambda _s: None)
    db = FakeDb()
    db.tables[T] = {"id": "bigint"}
    db.fail_next = 2
    assert TableCatalog(db.connect).columns(T) == {"id": "bigint"}
    assert db.connections == 3


@pytest.mark.parametrize("error", [psycopg.errors.InsufficientPrivilege("no")])
def test_other_errors_propagate(error):
    def connect():
        raise error

    with pytest.raises(type(error)):
        TableCatalog(connect).columns(T)
