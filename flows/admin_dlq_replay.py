"""`replicate dlq replay`: apply DLQ rows again, once their cause is fixed, without ever
overwriting newer data.

Each pending (or earlier failed) row is decoded again with the flow's decoder: from its raw bytes,
or, for a row the writer refused (it holds the decoded row as JSON, not the message), from the
message Kafka still holds at its position. The events go through the same LWW guard as the flow:
per shard, against the shard's RocksDB state (brought in step with Postgres first, as the flow
does at start), and written by the flow's writer, whose version-guarded SQL refuses older
versions whatever the state says. Each shard's events are that shard's next commit
(`cdc.shard_commits` seq + 1, a new commit id), written to its RocksDB store under
`REPLICATE_STATE_DIR` before the Postgres transaction, which also records every row's outcome in
`cdc.dlq.replay_status` (`applied`, `duplicate`, `stale`; `failed: <error type>` when it still
cannot be applied; `skipped: ...` when there is nothing to apply). So the state stays equal to
Postgres: run where the flow runs, the store is in step at the next start; run on another host,
the flow's own store there no longer matches the commit id in Postgres and the shard rebuilds it
from Postgres at start. The flow must be stopped (`operators/flow_lock.py`).

A dry run decides the same way inside a transaction it rolls back (tables it would create are not
kept) and writes no state.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass

import orjson
import psycopg
from confluent_kafka import Consumer, KafkaException, TopicPartition

from flows.admin_common import Output, open_store
from formats.cells import CellChange
from operators.decode import Decoder
from operators.events import ChangeEvent, DlqRecord, Op, RawMessage, TruncateEvent
from operators.keys import shard_of
from operators.lww import KeyState, Outcome, decide_batch, judge
from operators.pg_session import connect
from operators.pg_writer import PgShardWriter, ShardBatch
from operators.settings import Settings, kafka_client_config
from operators.shard import Shard
from operators.snapshot_points import stored_points
from operators.target_tables import TableProblem, TargetTable, TargetTables
from schemas.catalog import TableCatalog
from schemas.registry import registry_fetcher

REPLAYABLE = "(replay_status = 'pending' OR replay_status LIKE 'failed:%%')"
KAFKA_TIMEOUT_S = 10


@dataclass(frozen=True, slots=True)
class DlqRow:
    id: int
    topic: str
    partition: int
    offset: int
    raw_key: bytes | None
    raw_value: bytes | None
    error_type: str


def pending_rows(conn: psycopg.Connection, flow_id: str, error_type: str | None) -> list[DlqRow]:
    rows = conn.execute(
        'SELECT id, topic, partition, "offset", raw_key, raw_value, error_type FROM cdc.dlq '
        f"WHERE flow_id = %s AND (%s::text IS NULL OR error_type = %s) AND {REPLAYABLE} "
        'ORDER BY topic, partition, "offset"', (flow_id, error_type, error_type)).fetchall()
    return [DlqRow(i, t, p, o, None if k is None else bytes(k), None if v is None else bytes(v), e)
            for i, t, p, o, k, v, e in rows]


def flow_decoder(settings: Settings) -> Decoder:
    """A decoder like the flow's (`operators/decode_step.py`): same catalog, registry and
    snapshot points; the Python decoder, which the native one is tested against."""
    fetch = (registry_fetcher(settings.schema_registry_url, settings.retry_max_s)
             if settings.schema_registry_url else None)
    return Decoder(settings.target_schema, settings.table_map,
                   TableCatalog(lambda: connect(settings.pg_dsn)), fetch, native=False,
                   snapshot_points=stored_points(settings), cql_types=settings.cql_types)


def _written_form(raw_value: bytes | None) -> bool:
    """A row the writer sent to the DLQ holds the decoded row (`operators/shard_dlq.py`)."""
    try:
        doc = orjson.loads(raw_value) if raw_value else None
    except orjson.JSONDecodeError:
        return False
    return isinstance(doc, dict) and doc.keys() == {"table", "values"}


def _from_kafka(settings: Settings, row: DlqRow) -> RawMessage | None:
    """The message at the row's position, if Kafka still holds it."""
    consumer = Consumer(kafka_client_config(settings) | {
        "group.id": "cdc-replicator-admin", "enable.auto.commit": False,
        "isolation.level": "read_committed"})
    try:
        consumer.assign([TopicPartition(row.topic, row.partition, row.offset)])
        msg = consumer.poll(KAFKA_TIMEOUT_S)
        if msg is None or msg.error() is not None or msg.offset() != row.offset:
            return None
        return RawMessage(row.topic, row.partition, row.offset, msg.key(), msg.value())
    except KafkaException:
        return None
    finally:
        consumer.close()


class DlqReplay:
    """One replay run: decode, decide per shard, commit per shard, record each row's outcome."""

    def __init__(self, settings: Settings, conn: psycopg.Connection, dry_run: bool) -> None:
        self._settings = settings
        self._conn = conn
        self._dry_run = dry_run
        self._decoder = flow_decoder(settings)
        self._tables = TargetTables(conn, settings.flow_id, settings.delete_mode)
        self._writer = PgShardWriter(conn, settings.flow_id, settings.delete_mode)
        self.outcomes: dict[int, str] = {}

    def run(self, rows: list[DlqRow]) -> dict[int, str]:
        """Each row's outcome by id."""
        by_shard: dict[int, list[tuple[DlqRow, ChangeEvent]]] = defaultdict(list)
        for row in rows:
            pair = self._decode(row)
            if pair is not None:
                by_shard[shard_of(pair[1].row_id, self._settings.shards)].append(pair)
        self._record(dict(self.outcomes))  # those that failed again or have nothing to apply
        rolled_back = (self._conn.transaction(force_rollback=True) if self._dry_run
                       else nullcontext())
        with rolled_back:
            for shard, pairs in sorted(by_shard.items()):
                self._apply(shard, self._resolved(pairs))
        return self.outcomes

    def _decode(self, row: DlqRow) -> tuple[DlqRow, ChangeEvent] | None:
        msg: RawMessage | None = RawMessage(row.topic, row.partition, row.offset, row.raw_key,
                                            row.raw_value)
        if _written_form(row.raw_value):
            msg = _from_kafka(self._settings, row)
            if msg is None:
                self.outcomes[row.id] = "failed: not in Kafka any more"
                return None
        decoded = self._decoder.decode(msg)
        if type(decoded) is DlqRecord:
            self.outcomes[row.id] = f"failed: {decoded.error_type}"
        elif type(decoded) is TruncateEvent:
            self.outcomes[row.id] = "skipped: a truncate (re-send it from the source)"
        elif type(decoded) is CellChange:
            self.outcomes[row.id] = ("skipped: a ScyllaDB or Cassandra change (`replicate "
                                     "replay` from its offset applies it by its cell versions)")
        elif decoded is None:
            self.outcomes[row.id] = "skipped: nothing to apply"
        else:
            return row, decoded
        return None

    def _resolved(self, pairs: list[tuple[DlqRow, ChangeEvent]],
                  ) -> list[tuple[DlqRow, ChangeEvent, TargetTable]]:
        """`pairs` with their target tables (created or widened as the flow would); a row whose
        table cannot take it fails again."""
        ready = []
        for row, event in pairs:
            try:
                ready.append((row, event, self._tables.for_event(event)))
            except TableProblem as problem:
                self.outcomes[row.id] = f"failed: {problem.error_type}"
                self._record({row.id: self.outcomes[row.id]})
        return ready

    def _apply(self, shard: int, pairs: list[tuple[DlqRow, ChangeEvent, TargetTable]]) -> None:
        """Decide `pairs` against the shard's state and commit them as its next commit."""
        if not pairs:
            return
        settings, conn = self._settings, self._conn
        store = open_store(settings, shard)
        try:
            Shard(shard, store, settings.flow_id, settings.shards).bring_in_step(conn)
            events = [event for _, event, _ in pairs]
            keys = list(dict.fromkeys(e.row_id for e in events))
            states = dict(zip(keys, store.get_many(keys), strict=True))
            floors = store.floors()
            outcomes = _each_outcome(events, states, floors)
            for (row, _, _), outcome in zip(pairs, outcomes, strict=True):
                self.outcomes[row.id] = outcome.value
            if self._dry_run:
                return
            decision = decide_batch(events, states, floors)
            table_of = {id(event): table for _, event, table in pairs}
            batch = ShardBatch(shard=shard, seq=store.seq + 1)
            batch.writes = [(table_of[id(w.event)], w) for w in decision.writes.values()]
            batch.stale, batch.applied = decision.stale, decision.applied
            batch.duplicates = decision.duplicates
            store.commit(batch.seq, batch.commit_id, decision.new_states, {}, states)
            done = {row.id: self.outcomes[row.id] for row, _, _ in pairs}
            try:
                self._writer.write([batch], lambda: self._record(done))
            except BaseException:
                store.rollback()
                raise
        finally:
            store.close()

    def _record(self, outcomes: dict[int, str]) -> None:
        if self._dry_run or not outcomes:
            return
        with self._conn.cursor() as cur:
            cur.executemany("UPDATE cdc.dlq SET replay_status = %s WHERE id = %s",
                            [(status, ident) for ident, status in outcomes.items()])


def _each_outcome(events: list[ChangeEvent], states: dict[bytes, KeyState | None],
                  floors: dict[str, bytes]) -> list[Outcome]:
    """Each event's outcome in order, as `decide_batch` judges it."""
    current = dict(states)
    found = []
    for event in events:
        outcome, _ = judge(current.get(event.row_id), floors.get(str(event.table)),
                           event.version)
        if outcome is Outcome.APPLIED:
            current[event.row_id] = KeyState(event.version, event.op is Op.DELETE)
        found.append(outcome)
    return found


def replay_output(settings: Settings, rows: list[DlqRow], outcomes: dict[int, str],
                  dry_run: bool) -> Output:
    tally: dict[str, int] = defaultdict(int)
    for status in outcomes.values():
        tally[status] += 1
    head = (f"flow {settings.flow_id}: {'would replay' if dry_run else 'replayed'} "
            f"{len(rows)} DLQ row(s)" + (" (dry run: nothing changed)" if dry_run else ""))
    lines = [head] + [f"  {count:>6}  {status}" for status, count in sorted(tally.items())]
    lines += [f"  #{row.id} {row.topic}[{row.partition}]@{row.offset}: {outcomes[row.id]}"
              for row in rows]
    data = {"flow_id": settings.flow_id, "dry_run": dry_run, "rows": len(rows),
            "outcomes": dict(tally),
            "replayed": [{"id": row.id, "topic": row.topic, "partition": row.partition,
                          "offset": row.offset, "outcome": outcomes[row.id]} for row in rows]}
    return Output(data, lines)
