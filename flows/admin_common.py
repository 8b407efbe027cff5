"""What every admin subcommand of `replicate` shares: settings, the connection, the stopped-flow
lock, failures as one line with status 2, and output as text or JSON (`--json`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import psycopg

from operators.flow_lock import try_hold_stopped
from operators.pg_session import connect
from operators.retry import first_line
from operators.settings import ConfigError, Settings, load_settings
from operators.shard_sink import shard_part_name
from operators.state_store import ShardStateStore, StoreMemory
from schemas.control import ensure_control_schema

Handler = Callable[[argparse.Namespace], int]
USAGE_ERROR = 2


class AdminError(Exception):
    """A command that cannot run as asked: its one-line message is printed, status 2."""


def command(name: str, run: Callable[[argparse.Namespace, Settings], Any]) -> Handler:
    """A handler: `run(args, settings)` returns what to print (`Output`, or None for nothing);
    a bad setting, an unreachable service or an `AdminError` prints one line and returns 2."""

    def handle(args: argparse.Namespace) -> int:
        try:
            output = run(args, load_settings())
        except (ConfigError, AdminError) as exc:
            return _fail(name, str(exc))
        except psycopg.OperationalError as exc:
            return _fail(name, f"Postgres: {first_line(exc)}")
        if output is not None:
            output.emit(bool(getattr(args, "json", False)))
        return 0

    return handle


def _fail(name: str, message: str) -> int:
    print(f"replicate {name}: {message}", file=sys.stderr)
    return USAGE_ERROR


class Output:
    """A command's result: `data` for `--json`, `lines` for people."""

    def __init__(self, data: dict[str, Any], lines: list[str]) -> None:
        self.data = data
        self.lines = lines

    def emit(self, as_json: bool) -> None:
        if as_json:
            sys.stdout.write(orjson.dumps(self.data, default=str).decode() + "\n")
        else:
            sys.stdout.write("".join(line + "\n" for line in self.lines))
        sys.stdout.flush()


def progress(args: argparse.Namespace, line: str) -> None:
    """A progress line of a long command: on stderr with `--json`, so stdout stays one document."""
    print(line, file=sys.stderr if getattr(args, "json", False) else sys.stdout, flush=True)


def open_conn(settings: Settings) -> psycopg.Connection:
    """A replicator connection (UTC session) with the control tables in place."""
    conn = connect(settings.pg_dsn)
    ensure_control_schema(conn)
    return conn


@contextmanager
def stopped_flow(settings: Settings) -> Iterator[psycopg.Connection]:
    """A connection that keeps the flow from starting until the block ends; refuses a flow that
    runs now (`operators/flow_lock.py`) or that never started (no shard count recorded)."""
    with open_conn(settings) as conn:
        if not try_hold_stopped(conn, settings.flow_id):
            raise AdminError(f"flow {settings.flow_id!r} is running (a process holds its lock); "
                             "stop every process of the flow first")
        shards = flow_shards(conn, settings)
        if shards != settings.shards:
            raise AdminError(f"REPLICATE_SHARDS={settings.shards}: flow {settings.flow_id!r} "
                             f"has {shards} shards")
        yield conn


def flow_shards(conn: psycopg.Connection, settings: Settings) -> int:
    """The flow's shard count as its first start recorded it."""
    row = conn.execute("SELECT shards FROM cdc.flows WHERE flow_id = %s",
                       (settings.flow_id,)).fetchone()
    if row is None:
        raise AdminError(f"flow {settings.flow_id!r} has never started (no row in cdc.flows)")
    return row[0]


def open_store(settings: Settings, shard: int) -> ShardStateStore:
    """The shard's local RocksDB state, where the flow keeps it."""
    path = settings.state_dir / settings.flow_id / shard_part_name(shard)
    try:
        return ShardStateStore(path, StoreMemory(settings.state_cache_mb,
                                                 settings.state_write_buffer_mb))
    except Exception as exc:  # rocksdict raises a bare Exception for a held lock
        raise AdminError(f"shard {shard}: cannot open {path}: {first_line(exc)} (is a process "
                         "of the flow still running on this host?)") from None
