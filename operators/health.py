"""The metrics port: `/metrics`, `/healthz` and `/readyz`, and the gauges read from Postgres.

prometheus-client's own server serves one page, so a small `http.server` on a thread of its own
routes the three paths:

- `/metrics`: the Prometheus text of the default registry (`operators/metrics.py`).
- `/healthz`: 200 while the process runs.
- `/readyz`: 200 when Postgres answers, Kafka answers and the source reads every partition of
  the flow; otherwise 503, with a JSON body whose `reason` names the first check that failed.
  A process running alone must hold every partition; in a bytewax cluster (`-a/--addresses`),
  bytewax spreads the partitions over the processes, so a process checks that its source has
  started and every part it was given is open.

Another thread sets `replicate_lag_messages` and `replicate_dlq_rows` every `REFRESH_S`: one
query of `cdc.offsets` (the committed offset of a partition is the minimum over the flow's
shards, whichever process they live in) against the end offsets the source parts noted
(`operators/source_watch.py`), and one count of `cdc.dlq`.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import psycopg
from confluent_kafka.admin import AdminClient
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from operators.metrics import DLQ_ROWS, LAG, count_restarts
from operators.settings import Settings, kafka_client_config
from operators.source_watch import WATCH, SourceWatch

log = logging.getLogger(__name__)
REFRESH_S = 5.0
CHECK_TIMEOUT_S = 2


def process_index(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    """This process's index in a bytewax cluster (`-i/--process-id`, else `BYTEWAX_PROCESS_ID`),
    0 when alone."""
    argv = sys.argv if argv is None else argv
    environ = dict(os.environ) if environ is None else environ
    for flag, value in zip(argv, [*argv[1:], ""], strict=True):
        if flag in ("-i", "--process-id") and value.isdigit():
            return int(value)
        if flag.startswith("--process-id=") and flag.partition("=")[2].isdigit():
            return int(flag.partition("=")[2])
    return int(environ.get("BYTEWAX_PROCESS_ID") or 0)


def in_cluster(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> bool:
    """Whether bytewax runs this process as one of several (its `-a/--addresses` flag)."""
    argv = sys.argv if argv is None else argv
    environ = dict(os.environ) if environ is None else environ
    return bool(environ.get("BYTEWAX_ADDRESSES")) or any(
        arg in ("-a", "--addresses") or arg.startswith("--addresses=") for arg in argv)


class Readiness:
    """The checks of `/readyz`; each returns None when it passes, else the reason."""

    def __init__(self, settings: Settings, watch: SourceWatch, cluster: bool) -> None:
        self._settings = settings
        self._watch = watch
        self._cluster = cluster
        self._admin: AdminClient | None = None

    def reason(self) -> str | None:
        """Why the process is not ready, or None."""
        return self._postgres() or self._kafka() or self._partitions()

    def _postgres(self) -> str | None:
        try:
            with psycopg.connect(self._settings.pg_dsn, connect_timeout=CHECK_TIMEOUT_S,
                                 autocommit=True) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            return f"postgres: {type(exc).__name__}"  # never the message: it may name the DSN
        return None

    def _kafka(self) -> str | None:
        if self._admin is None:
            self._admin = AdminClient(kafka_client_config(self._settings))
        try:
            self._admin.list_topics(timeout=CHECK_TIMEOUT_S)
        except Exception as exc:  # KafkaException: no broker answered in time
            return f"kafka: {exc}"
        return None

    def _partitions(self) -> str | None:
        expected = self._watch.expected
        if expected is None:
            return "partitions: the dataflow has not started"
        if self._cluster:
            return None
        missing = expected - self._watch.open_partitions()
        if missing:
            names = ", ".join(f"{t}[{p}]" for t, p in sorted(missing)[:5])
            return f"partitions: {len(missing)} not assigned ({names})"
        return None


def refresh_gauges(conn: psycopg.Connection, settings: Settings, watch: SourceWatch,
                   shown: set[tuple[str, int]]) -> set[tuple[str, int]]:
    """Set the lag of the partitions this process reads and the DLQ row count; returns the
    partitions shown now (a partition no longer read loses its series)."""
    committed = dict(((t, p), low) for t, p, low in conn.execute(
        "SELECT topic, partition, min(next_offset) FROM cdc.offsets WHERE flow_id = %s "
        "GROUP BY topic, partition", (settings.flow_id,)))
    dlq = conn.execute("SELECT count(*) FROM cdc.dlq WHERE flow_id = %s",
                       (settings.flow_id,)).fetchone()
    DLQ_ROWS.set(dlq[0] if dlq else 0)
    now: set[tuple[str, int]] = set()
    for (topic, partition), end in watch.ends().items():
        low = committed.get((topic, partition))
        if low is not None:
            LAG.labels(topic, str(partition)).set(max(0, end - low))
            now.add((topic, partition))
    for topic, partition in shown - now:
        LAG.remove(topic, str(partition))
    return now


def _refresh_forever(settings: Settings, watch: SourceWatch) -> None:
    shown: set[tuple[str, int]] = set()
    conn: psycopg.Connection | None = None
    while True:
        time.sleep(REFRESH_S)
        try:
            if conn is None or conn.closed:
                conn = psycopg.connect(settings.pg_dsn, autocommit=True,
                                       connect_timeout=CHECK_TIMEOUT_S)
            shown = refresh_gauges(conn, settings, watch, shown)
        except psycopg.Error as exc:  # Postgres away: the gauges keep their last values
            log.debug("metrics: lag refresh failed: %s", exc)
            conn = None


def _handler(readiness: Readiness) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY))
            elif path == "/healthz":
                self._send(200, "application/json", b'{"status":"alive"}')
            elif path == "/readyz":
                reason = readiness.reason()
                body = {"ready": reason is None} | ({} if reason is None else {"reason": reason})
                self._send(200 if reason is None else 503, "application/json",
                           orjson.dumps(body))
            else:
                self._send(404, "text/plain", b"not found: /metrics, /healthz, /readyz\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # a scrape every few seconds is not worth a log line

    return Handler


def start_server(port: int, readiness: Readiness, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Serve the three paths on `port` (0: any free port) from a daemon thread."""
    server = ThreadingHTTPServer((host, port), _handler(readiness))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


def serve(settings: Settings) -> None:
    """With `REPLICATE_METRICS_PORT` set: the HTTP server, on that port plus the process's index
    in a cluster (processes of one host need a port each), and the gauges' refresh thread."""
    if settings.metrics_port is None:
        return
    count_restarts(os.environ)
    start_server(settings.metrics_port + process_index(),
                 Readiness(settings, WATCH, in_cluster()))
    threading.Thread(target=_refresh_forever, args=(settings, WATCH),
                     name="metrics-refresh", daemon=True).start()
