"""The replicator dataflow: `python -m bytewax.run flows.replicate`.

Kafka partitions → source (offsets from Postgres) → decode and key, batch-wise, on the worker that
read the message → shard sink (LWW in RocksDB, one Postgres transaction per batch).
Configuration comes from `REPLICATE_*` variables (docs/configuration.md); a bad setting prints one
line naming it and exits with status 2.
"""

from __future__ import annotations

import logging
import sys

from bytewax import operators as op
from bytewax.dataflow import Dataflow

from operators import metrics
from operators.decode_step import DecodeStep
from operators.kafka_source import KafkaCdcSource, list_partitions
from operators.lifecycle import install_stop_handlers
from operators.settings import ConfigError, Settings, load_settings
from operators.shard_sink import ShardSink


def build_flow(settings: Settings) -> Dataflow:
    flow = Dataflow("replicate")
    messages = op.input("kafka", flow, KafkaCdcSource(settings, list_partitions(settings)))
    keyed = op.flat_map_batch("decode", messages, DecodeStep(settings))
    op.output("shards", keyed, ShardSink(settings))
    return flow


def _flow_or_exit() -> Dataflow:
    try:
        settings = load_settings()
        install_stop_handlers()
        metrics.serve(settings.metrics_port)
        return build_flow(settings)
    except ConfigError as exc:
        print(f"replicate: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
flow = _flow_or_exit()
