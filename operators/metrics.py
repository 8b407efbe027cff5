"""Prometheus metrics of the replicator (served when `REPLICATE_METRICS_PORT` is set)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

EVENTS = Counter(
    "replicate_events_total", "Change events by outcome", ["outcome"]
)
COMMITS = Counter("replicate_commits_total", "Postgres transactions committed by shards")
COMMIT_SECONDS = Histogram(
    "replicate_commit_seconds", "Duration of one shard commit (LWW + Postgres transaction)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RETRIES = Counter("replicate_retries_total", "Transient failures retried", ["what"])


def serve(port: int | None) -> None:
    if port is not None:
        start_http_server(port, addr="0.0.0.0")
