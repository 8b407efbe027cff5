"""The replicator dataflow: `python -m bytewax.run flows.replicate`.

Kafka partitions → source (offsets from Postgres) → decode and key, batch-wise, on the worker that
read the message → shard sink (LWW in RocksDB, one Postgres transaction per batch).
Configuration comes from `REPLICATE_*` variables (docs/configuration.md); a bad setting prints one
line naming it and exits with status 2.
"""

from __future__ import annotations

import sys

import psycopg
from bytewax import operators as op
from bytewax.dataflow import Dataflow

from operators import health
from operators.decode_step import DecodeStep
from operators.kafka_source import KafkaCdcSource, list_partitions
from operators.lifecycle import install_stop_handlers, limit_malloc_arenas, tune_gc
from operators.log_format import configure_logging
from operators.offsets import register_flow
from operators.pg_session import connect
from operators.redact import remember_secrets
from operators.retry import first_line, retrying
from operators.settings import (
    ConfigError,
    LogFormat,
    Settings,
    kafka_client_config,
    load_settings,
)
from operators.shard_sink import ShardSink
from operators.table_name_upgrade import upgrade_quoted_table_names
from operators.tracing import configure_export
from schemas.control import ensure_control_schema
from schemas.registry import describe_failure, registry_subjects


def build_flow(settings: Settings) -> Dataflow:
    flow = Dataflow("replicate")
    decode = DecodeStep(settings)  # first: it says how to build the native code if missing
    messages = op.input("kafka", flow, KafkaCdcSource(settings, list_partitions(settings)))
    keyed = op.flat_map_batch("decode", messages, decode)
    op.output("shards", keyed, ShardSink(settings))
    return flow


def _register(settings: Settings) -> None:
    """Create the control tables and record the flow (its shard count is fixed from now on)."""
    def attempt() -> None:
        with connect(settings.pg_dsn) as conn:
            ensure_control_schema(conn)
            register_flow(conn, settings)
            upgrade_quoted_table_names(conn, settings.flow_id)

    try:
        retrying("connect to Postgres", attempt, cap_s=settings.retry_max_s)
    except psycopg.Error as exc:
        raise ConfigError(f"REPLICATE_PG_DSN: {first_line(exc)}") from None


def _check_registry(settings: Settings) -> None:
    """A configured schema registry must answer before any message is read."""
    if not settings.schema_registry_url:
        return
    try:
        registry_subjects(settings.schema_registry_url, settings.retry_max_s)
    except Exception as exc:  # a refusal (4xx) or an unusable URL: waiting would not help
        raise ConfigError(f"REPLICATE_SCHEMA_REGISTRY_URL: {describe_failure(exc)}") from None


def _flow_or_exit() -> Dataflow:
    try:
        settings = load_settings()
        remember_secrets([settings.pg_dsn, settings.schema_registry_url],
                         kafka_client_config(settings))
        configure_logging(settings)
        configure_export()
        install_stop_handlers()
        limit_malloc_arenas()
        tune_gc()
        _register(settings)
        _check_registry(settings)
        health.serve(settings)
        return build_flow(settings)
    except ConfigError as exc:
        print(f"replicate: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


configure_logging(LogFormat.TEXT)  # until the settings are read
flow = _flow_or_exit()
