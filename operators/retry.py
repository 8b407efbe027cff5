"""Retry transient failures (Postgres or Kafka unreachable) with capped exponential backoff and
full jitter. Retries never skip work: the same call is repeated until it succeeds."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg

from operators import metrics
from operators.redact import redact

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT_PG_ERRORS = (psycopg.OperationalError, psycopg.errors.SerializationFailure,
                       psycopg.errors.DeadlockDetected)


# Connection failures that waiting does not fix (libpq reports them without an SQLSTATE).
_REFUSED_LOGIN = ("password authentication failed", "does not exist", "no pg_hba.conf entry",
                  "role", "permission denied")


def is_refused_login(exc: BaseException) -> bool:
    """Postgres answered and refused the login (bad password, unknown database or role)."""
    return isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None and any(
        marker in str(exc) for marker in _REFUSED_LOGIN)


def is_transient(exc: BaseException) -> bool:
    """Connection loss, server shutdown, serialization conflicts: worth repeating as is."""
    if is_refused_login(exc):
        return False
    return isinstance(exc, TRANSIENT_PG_ERRORS) or (
        isinstance(exc, psycopg.Error) and exc.sqlstate is not None and exc.sqlstate[:2] in
        ("08", "57", "53")  # connection exception, operator intervention, insufficient resources
    )


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (Postgres adds DETAIL/CONTEXT lines), or its type;
    passwords masked (libpq quotes a connection string it cannot parse)."""
    text = str(exc).strip()
    return redact(text.splitlines()[0]) if text else type(exc).__name__


def backoff_delays(base_s: float = 0.1, cap_s: float = 30.0):
    """0.1 s, 0.2 s, 0.4 s ... capped, each drawn uniformly from [0, delay] (full jitter)."""
    delay = base_s
    while True:
        yield random.uniform(0, delay)
        delay = min(cap_s, delay * 2)


def retrying(what: str, call: Callable[[], T], on_retry: Callable[[], None] | None = None,
             cap_s: float = 30.0,
             transient: Callable[[BaseException], bool] = is_transient) -> T:
    """Run `call` until it returns; transient errors are logged and retried, others raised."""
    delays = backoff_delays(cap_s=cap_s)
    attempt = 0
    while True:
        try:
            return call()
        except Exception as exc:
            if not transient(exc):
                raise
            attempt += 1
            metrics.RETRIES.labels(metrics.retried_system(exc)).inc()
            pause = next(delays)
            log.warning("%s failed (attempt %d, retrying in %.2fs): %s", redact(what), attempt,
                        pause, first_line(exc))
            if on_retry is not None:
                on_retry()
            time.sleep(pause)
