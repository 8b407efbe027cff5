"""The dialect of a change is picked by its `source.connector`."""

from __future__ import annotations

import pytest

from formats.registry import dialect_for
from operators.versions import pg_version, sqlserver_version


def test_the_version_scheme_follows_the_connector() -> None:
    assert dialect_for({"connector": "postgresql"}).version(
        {"connector": "postgresql", "lsn": 33842008, "sequence": '["33841900","33842008"]'},
        lambda: 0) == pg_version(33841900, 33842008)
    source = {"connector": "sqlserver", "commit_lsn": "00000027:00000758:0005",
              "change_lsn": None, "event_serial_no": None}
    assert dialect_for(source).version(source, lambda: 0) == sqlserver_version(
        "00000027:00000758:0005", None, None)


def test_a_connector_without_a_dialect_is_named() -> None:
    with pytest.raises(ValueError, match="source.connector 'mysql' has no version scheme"):
        dialect_for({"connector": "mysql", "pos": 4})
    with pytest.raises(ValueError, match="source.connector None"):
        dialect_for({"lsn": 1})
