"""The `decode` step: raw Kafka messages → `(shard, items)` pairs, one batch at a time.

Runs on the worker that read the messages (no redistribution), so all events of one partition
reach each shard in offset order. Change events go to the shard of their (table, key); a DLQ
record to a shard chosen by its Kafka position; progress markers and truncates to every shard.
Each shard's items of one batch travel as one list: bytewax routes (and, in a cluster, sends)
a few dozen values per batch instead of one per message.
"""

from __future__ import annotations

from operators.decode import Decoder
from operators.events import ChangeEvent, DlqRecord, ProgressMarker, ShardItem
from operators.kafka_source import SourceItem
from operators.keys import shard_of, shard_of_position
from operators.pg_session import connect
from operators.settings import Settings
from operators.shard_sink import shard_part_name
from schemas.catalog import TableCatalog
from schemas.registry import registry_fetcher


class DecodeStep:
    def __init__(self, settings: Settings) -> None:
        catalog = TableCatalog(lambda: connect(settings.pg_dsn))
        fetch = (registry_fetcher(settings.schema_registry_url, settings.retry_max_s)
                 if settings.schema_registry_url else None)
        self._decoder = Decoder(settings.target_schema, settings.table_map, catalog, fetch,
                                native=settings.native_decode)
        self._shards = settings.shards
        self._names = [shard_part_name(k) for k in range(settings.shards)]

    def __call__(self, items: list[SourceItem]) -> list[tuple[str, list[ShardItem]]]:
        shards = self._shards
        per_shard: list[list[ShardItem]] = [[] for _ in range(shards)]
        results = iter(self._decoder.decode_many(
            [item for item in items if type(item) is not ProgressMarker]))
        for item in items:
            if type(item) is ProgressMarker:
                for routed in per_shard:
                    routed.append(item)
                continue
            decoded = next(results)
            kind = type(decoded)
            if kind is ChangeEvent:
                per_shard[shard_of(decoded.row_id, shards)].append(decoded)
            elif kind is DlqRecord:
                shard = shard_of_position(decoded.topic, decoded.partition, decoded.offset, shards)
                per_shard[shard].append(decoded)
            elif decoded is not None:  # a truncate: every shard holds rows of the table
                for routed in per_shard:
                    routed.append(decoded)
        return [(name, routed) for name, routed in zip(self._names, per_shard, strict=True)
                if routed]
