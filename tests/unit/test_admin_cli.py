"""The admin subcommands without services: their parsers, failures as one line with status 2,
and the helpers that read DLQ rows and replay times."""

from __future__ import annotations

import orjson
import pytest

from flows.admin_common import AdminError
from flows.admin_dlq import printable
from flows.admin_dlq_replay import _written_form
from flows.admin_replay import parse_timestamp
from flows.cli import main, parser
from operators.events import ChangeEvent, Op, TableName
from operators.shard_dlq import dlq_for


@pytest.fixture
def settings_env(monkeypatch):
    monkeypatch.setenv("REPLICATE_TOPICS", "t")
    monkeypatch.setenv("REPLICATE_PG_DSN",
                       "postgresql://replicator:s3cret@127.0.0.1:1/postgres?connect_timeout=2")


@pytest.mark.parametrize("argv", [["status"], ["dlq", "list"], ["dlq", "show", "1"],
                                  ["dlq", "replay"], ["state", "rebuild"],
                                  ["replay", "--topic", "t", "--from-offset", "0"]])
def test_every_admin_command_says_in_one_line_that_postgres_is_unreachable(
        settings_env, capsys, argv):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(f"replicate {' '.join(a for a in argv[:2] if a.isalpha())}: "
                                   "Postgres: ")
    assert "s3cret" not in captured.err


def test_replay_needs_exactly_one_start():
    with pytest.raises(SystemExit):
        parser().parse_args(["replay", "--topic", "t"])
    with pytest.raises(SystemExit):
        parser().parse_args(["replay", "--topic", "t", "--from-offset", "1",
                             "--from-timestamp", "2026-01-01"])
    args = parser().parse_args(["--json", "replay", "--topic", "t", "--from-timestamp",
                                "2026-01-01T00:00:00Z", "--dry-run"])
    assert (args.json, args.from_offset, args.dry_run) == (True, None, True)


def test_a_replay_time_without_a_zone_is_utc():
    assert parse_timestamp("1970-01-01T00:00:01") == 1000
    assert parse_timestamp("1970-01-01T01:00:01+01:00") == 1000
    with pytest.raises(AdminError, match="not an ISO 8601 time"):
        parse_timestamp("yesterday")


def test_dlq_bytes_print_as_text_when_utf8_else_as_hex():
    assert printable(b'{"id": 1}') == {"text": '{"id": 1}', "hex": None}
    assert printable(b"\x00\x00\x00\x00\x07\xff") == {"text": None, "hex": "0000000007ff"}
    assert printable(None) == {"text": None, "hex": None}


def test_only_rows_the_writer_refused_hold_the_decoded_row_instead_of_the_message():
    event = ChangeEvent(TableName("public", "t"), ("id",), (1,), Op.UPSERT, b"\x01",
                        {"id": 1, "name": "x"}, None, "topic", 0, 5)
    refused = dlq_for(event, "write_refused", "Postgres refused the row")
    assert _written_form(refused.raw_value)
    message = orjson.dumps({"schema": None, "payload": {"op": "c", "after": {"id": 1}}})
    assert not _written_form(message)
    assert not _written_form(b"\x00\x00\x00\x00\x01avro")
    assert not _written_form(None)
