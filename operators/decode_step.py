"""The `decode` step: raw Kafka messages → `(shard, items)` pairs, one batch at a time.

Runs on the worker that read the messages (no redistribution), so all events of one partition
reach each shard in offset order. Change events go to the shard of their (table, key); a DLQ
record to a shard chosen by its Kafka position; progress markers, truncates and the partition
and range deletes of Cassandra-model tables (`formats/cells.py`) to every shard.
Each shard's items of one batch travel as one list: bytewax routes (and, in a cluster, sends)
a few dozen values per batch instead of one per message. The native decoder's plain events travel
as runs (`operators/native_decode.py`), after the shard's other items of the batch: LWW orders
events by key and version, and DLQ records and markers have no order among events; a shard that
also gets a Python change event or a truncate from the batch gets the runs' events instead, each
in its place.
"""

from __future__ import annotations

from operator import itemgetter

from formats.cells import CellChange
from formats.scylla import NoRowImage
from operators import tracing
from operators.decode import Decoder
from operators.events import ChangeEvent, DlqRecord, ProgressMarker, ShardItem
from operators.kafka_source import SourceItem, running_consumer
from operators.keys import shard_of, shard_of_position
from operators.lifecycle import stop_for_setting
from operators.native_decode import run_events
from operators.pg_session import connect
from operators.settings import Settings
from operators.shard_sink import shard_number, shard_part_name
from operators.snapshot_points import record_new_points, stored_points
from schemas.catalog import TableCatalog
from schemas.registry import registry_fetcher


class DecodeStep:
    def __init__(self, settings: Settings) -> None:
        catalog = TableCatalog(lambda: connect(settings.pg_dsn))
        fetch = (registry_fetcher(settings.schema_registry_url, settings.retry_max_s)
                 if settings.schema_registry_url else None)
        self._points = stored_points(settings)
        self._decoder = Decoder(settings.target_schema, settings.table_map, catalog, fetch,
                                native=settings.native_decode, snapshot_points=self._points,
                                cql_types=settings.cql_types)
        self._settings = settings
        self._shards = settings.shards
        self._names = [shard_part_name(k) for k in range(settings.shards)]

    def __call__(self, items: list[SourceItem]) -> list[tuple[str, list[ShardItem]]]:
        with tracing.span("decode", lambda: tracing.source_attributes(items)) as span:
            out = self._decode(items)
            if span.is_recording():
                span.set_attribute("cdc.shards", [shard_number(name) for name, _ in out])
            return out

    def _decode(self, items: list[SourceItem]) -> list[tuple[str, list[ShardItem]]]:
        shards = self._shards
        messages = [item for item in items if type(item) is not ProgressMarker]
        try:
            decoded, runs = self._decoder.decode_runs(messages, shards)
        except NoRowImage as exc:
            stop_for_setting(str(exc))
        record_new_points(self._points, self._settings)  # before the batch's offsets commit
        consumer = running_consumer(self._settings)
        if consumer is not None:  # the plans it may have learned read ahead from now on
            consumer.teach(self._decoder.newest_plans())
        routed: list[list[tuple[int, ShardItem]]] = [[] for _ in range(shards)]
        ordered: set[int] = set()  # shards with a Python event or truncate among their runs
        for position, item in decoded:
            kind = type(item)
            if kind is ChangeEvent or (kind is CellChange and item.row_id):
                shard = shard_of(item.row_id, shards)
                routed[shard].append((position, item))
                ordered.add(shard)
            elif kind is DlqRecord:
                shard = shard_of_position(item.topic, item.partition, item.offset, shards)
                routed[shard].append((position, item))
            elif item is not None:  # a truncate, a partition or range delete: every shard
                # holds rows of the table
                for shard, pairs in enumerate(routed):
                    pairs.append((position, item))
                    ordered.add(shard)
        markers = [item for item in items if type(item) is ProgressMarker]
        out = []
        for shard, (pairs, shard_runs) in enumerate(zip(routed, runs, strict=True)):
            if shard in ordered and shard_runs:  # a run's events keep their place among them
                pairs = sorted(pairs + [pair for run in shard_runs for pair in run_events(run)],
                               key=itemgetter(0))
                shard_runs = []
            shard_items: list[ShardItem] = [item for _, item in pairs]
            shard_items += shard_runs
            shard_items += markers
            if shard_items:
                out.append((self._names[shard], shard_items))
        return out
