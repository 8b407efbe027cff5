"""OpenTelemetry spans of the hot path: one per poll that brought messages, per decoded batch, per
LWW decision and per Postgres commit (never one per event).

Only the API is a dependency: until an SDK installs a tracer provider (`opentelemetry-instrument`,
or `configure_export` when `OTEL_TRACES_EXPORTER` is set), `recording()` is false and `span`
returns one shared no-op context: no span object, no attributes computed (they are passed as
functions for that reason).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, NoOpTracerProvider, Span
from opentelemetry.util.types import Attributes

if TYPE_CHECKING:
    from operators.pg_writer import ShardBatch

log = logging.getLogger(__name__)
SERVICE_NAME = "cdc-replicator"
_tracer = trace.get_tracer(SERVICE_NAME)  # a proxy until a provider is installed
_OFF: AbstractContextManager[Span] = nullcontext(INVALID_SPAN)


def recording() -> bool:
    """Whether a tracer provider that records spans is installed (an SDK's). Asked per batch, so
    it reads the API's global itself: `get_tracer_provider()` looks the environment up on every
    call (~1 µs)."""
    provider = trace._TRACER_PROVIDER
    return provider is not None and not isinstance(provider, NoOpTracerProvider)


def span(name: str, attributes: Callable[[], Attributes] | None = None,
         ) -> AbstractContextManager[Span]:
    """A span around a `with` block, current inside it; the no-op one when not `recording`."""
    if not recording():
        return _OFF
    return _tracer.start_as_current_span(name, attributes=attributes() if attributes else None)


def finished_span(name: str, start_ns: int, attributes: Attributes) -> None:
    """A span from `start_ns` (`time.time_ns()`) to now, made once its outcome says it is worth
    one (a poll that brought messages)."""
    _tracer.start_span(name, start_time=start_ns, attributes=attributes).end()


def source_attributes(items: list[Any]) -> Attributes:
    """The topics and partitions of a batch of source items (messages, native fetches,
    progress markers: each has a `topic` and a `partition`)."""
    partitions = sorted({(item.topic, item.partition) for item in items})
    return {"cdc.items": len(items), "cdc.topics": sorted({topic for topic, _ in partitions}),
            "cdc.partitions": [f"{topic}[{partition}]" for topic, partition in partitions]}


def batch_attributes(batches: list[ShardBatch]) -> Attributes:
    """The shards and target tables of one commit, and its events (applied, stale, duplicate,
    DLQ), from the tallies the batches keep for the metrics."""
    tables = {labels[0] for batch in batches for labels in batch.counts if labels[0]}
    events = sum(sum(batch.counts.values()) + len(batch.dlq) for batch in batches)
    return {"cdc.shards": [batch.shard for batch in batches], "cdc.tables": sorted(tables),
            "cdc.events": events}


def configure_export(environ: dict[str, str] | None = None) -> bool:
    """Install the SDK with the exporters `OTEL_TRACES_EXPORTER` names (`console`, `otlp`, any
    registered under the `opentelemetry_traces_exporter` entry point), unless a provider is
    already installed; the exporters read their own `OTEL_EXPORTER_*` settings. Whether it did."""
    env = os.environ if environ is None else environ
    trace.get_tracer_provider()  # installs one `OTEL_PYTHON_TRACER_PROVIDER` names, if any
    names = [n.strip() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if recording() or not names or names == ["none"]:
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_TRACES_EXPORTER is set but opentelemetry-sdk is not installed: "
                    "no spans are exported")
        return False
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", SERVICE_NAME)})
    provider = TracerProvider(resource=resource)
    for name in names:
        found = entry_points(group="opentelemetry_traces_exporter", name=name)
        if not found:
            log.warning("OTEL_TRACES_EXPORTER: no exporter %r is installed", name)
            continue
        exporter = next(iter(found)).load()
        provider.add_span_processor(BatchSpanProcessor(exporter()))
    trace.set_tracer_provider(provider)
    return True
