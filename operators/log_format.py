"""Log lines on stderr: text (the default) or one JSON object per line
(`REPLICATE_LOG_FORMAT=json`), for a log pipeline that indexes fields. Either way every message
and traceback goes through `redact`: no password reaches a log line.

A JSON line holds `time`, `level`, `logger`, `message`, then what is known of `flow`, `worker`,
`shard`, `topic`, `partition` and `table`: from the record's `extra=`, else from `log_context`
(a context variable, so each worker thread has its own), else the flow of the settings and the
worker index bytewax (timely) gave the calling thread.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import orjson

from operators.redact import redact
from operators.settings import LogFormat, Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONTEXT_FIELDS = ("flow", "worker", "shard", "topic", "partition", "table")
QUIET_LOGGERS = ("httpx2",)  # the schema registry client logs its every request
_context: ContextVar[Mapping[str, Any]] = ContextVar("log_context", default=MappingProxyType({}))
_threads = threading.local()


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Records logged inside the block carry `fields` (`shard=3`, `topic=...`)."""
    token = _context.set(_context.get() | fields)
    try:
        yield
    finally:
        _context.reset(token)


def worker_index() -> int | None:
    """The bytewax worker the calling thread runs, numbered over the whole cluster: timely
    names its threads `timely:work-N`, N counting this process's workers. None on another
    thread, or off Linux."""
    if not hasattr(_threads, "worker"):
        try:
            with open(f"/proc/self/task/{threading.get_native_id()}/comm") as comm:
                name = comm.read().strip()
        except OSError:
            name = ""
        prefix = "timely:work-"
        if name.startswith(prefix):
            process, workers = cluster_layout(sys.argv, os.environ)
            _threads.worker = process * workers + int(name[len(prefix):])
        else:
            _threads.worker = None
    return _threads.worker


def cluster_layout(argv: list[str], environ: Mapping[str, str]) -> tuple[int, int]:
    """This process's index in its bytewax cluster and its workers per process: `bytewax.run`'s
    `-i` and `-w` (or their variables); 0 and 1 in a process `bytewax.run` did not start."""
    if not argv or not argv[0].endswith(os.path.join("bytewax", "run.py")):
        return 0, 1
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("-i", "--process-id", type=int,
                        default=int(environ.get("BYTEWAX_PROCESS_ID", 0)))
    parser.add_argument("-w", "--workers-per-process", type=int,
                        default=int(environ.get("BYTEWAX_WORKERS_PER_PROCESS", 1)))
    try:
        known, _ = parser.parse_known_args(argv[1:])
    except argparse.ArgumentError:
        return 0, 1
    return known.process_id, known.workers_per_process


class ContextFilter(logging.Filter):
    """Sets each context field a record lacks, from `log_context`, the flow and the thread."""

    def __init__(self, flow: str | None) -> None:
        super().__init__()
        self._flow = flow

    def filter(self, record: logging.LogRecord) -> bool:
        known = {"flow": self._flow, "worker": worker_index()} | _context.get()
        for field in CONTEXT_FIELDS:
            if getattr(record, field, None) is None:
                setattr(record, field, known.get(field))
        return True


class TextFormatter(logging.Formatter):
    """The plain line, passwords masked."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (a traceback is the `exception` field)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        elif record.stack_info:
            line["stack"] = redact(self.formatStack(record.stack_info))
        return orjson.dumps(line, default=str).decode()


def configure_logging(config: Settings | LogFormat | str) -> None:
    """Log at INFO to stderr in the format `config` names (a format, or the settings, which also
    give every line its flow); replaces any handler configured before."""
    if isinstance(config, Settings):
        log_format, flow = config.log_format, config.flow_id
    else:
        log_format, flow = LogFormat(config), None
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format is LogFormat.JSON
                         else TextFormatter(TEXT_FORMAT))
    handler.addFilter(ContextFilter(flow))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
