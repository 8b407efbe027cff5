"""The `decode` step: raw Kafka messages → `(shard, item)` pairs, one batch at a time.

Runs on the worker that read the messages (no redistribution), so all events of one partition
reach each shard in offset order. Change events go to the shard of their (table, key); a DLQ
record to a shard chosen by its Kafka position; progress markers and truncates to every shard.
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


class DecodeStep:
    def __init__(self, settings: Settings) -> None:
        catalog = TableCatalog(lambda: connect(settings.pg_dsn))
        self._decoder = Decoder(settings.target_schema, settings.table_map, catalog)
        self._shards = settings.shards
        self._names = [shard_part_name(k) for k in range(settings.shards)]

    def __call__(self, items: list[SourceItem]) -> list[tuple[str, ShardItem]]:
        out: list[tuple[str, ShardItem]] = []
        names, shards, decode = self._names, self._shards, self._decoder.decode
        for item in items:
            if type(item) is ProgressMarker:
                out.extend((name, item) for name in names)
                continue
            decoded = decode(item)
            kind = type(decoded)
            if kind is ChangeEvent:
                out.append((names[shard_of(decoded.row_id, shards)], decoded))
            elif kind is DlqRecord:
                shard = shard_of_position(decoded.topic, decoded.partition, decoded.offset, shards)
                out.append((names[shard], decoded))
            elif decoded is not None:  # a truncate: every shard holds rows of the table
                out.extend((name, decoded) for name in names)
        return out
