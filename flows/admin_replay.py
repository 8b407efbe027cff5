"""`replicate replay`: move a stopped flow's start back, to read a topic's messages again.

Every shard's `cdc.offsets.next_offset` of the chosen partitions that is past the new start is
set to it, in one transaction; the source resumes a partition at the minimum over its shards, so
the next start reads from there. Safe because of the version guard: a message read again is a
duplicate of the change the key already has, or stale against a newer one (audited once per
Kafka position in `cdc.stale_events`), never a regression. A start below what Kafka still holds
is raised to the partition's earliest offset (a gap would stop the flow); a start past a shard's
offset leaves that shard as it is (a replay never skips messages).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from confluent_kafka import Consumer, KafkaException, TopicPartition

from flows.admin_common import AdminError, Output, command, stopped_flow
from operators.settings import Settings, kafka_client_config

KAFKA_TIMEOUT_S = 10


@dataclass(frozen=True, slots=True)
class PartitionReplay:
    topic: str
    partition: int
    start_before: int  # where the flow would have resumed (minimum over its shards)
    start_after: int
    end: int

    @property
    def re_read(self) -> int:
        """Messages the flow reads again because of the replay."""
        return self.start_before - self.start_after


def parse_timestamp(text: str) -> int:
    """An ISO 8601 time (UTC unless it names a zone) as Kafka's milliseconds since the epoch."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise AdminError(f"--from-timestamp {text!r}: not an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def requested_starts(settings: Settings, topic: str, partitions: list[int],
                     args: argparse.Namespace) -> dict[int, tuple[int, int]]:
    """Per partition: (the new start, raised to the earliest offset Kafka holds; its end)."""
    consumer = Consumer(kafka_client_config(settings) | {"group.id": "cdc-replicator-admin"})
    try:
        marks = {p: consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                   timeout=KAFKA_TIMEOUT_S) for p in partitions}
        if args.from_timestamp is None:
            wanted = {p: args.from_offset for p in partitions}
        else:
            ms = parse_timestamp(args.from_timestamp)
            found = consumer.offsets_for_times([TopicPartition(topic, p, ms) for p in partitions],
                                               timeout=KAFKA_TIMEOUT_S)
            # -1: no message at or after that time; the replay then starts at the end
            wanted = {tp.partition: marks[tp.partition][1] if tp.offset < 0 else tp.offset
                      for tp in found}
    except KafkaException as exc:
        raise AdminError(f"Kafka: {exc.args[0].str() if exc.args else exc}") from None
    finally:
        consumer.close()
    return {p: (max(wanted[p], low), high) for p, (low, high) in marks.items()}


def replay(args: argparse.Namespace, settings: Settings) -> Output:
    if args.from_offset is not None and args.from_offset < 0:
        raise AdminError("--from-offset must be 0 or more")
    with stopped_flow(settings) as conn:
        rows = conn.execute(
            "SELECT partition, min(next_offset) FROM cdc.offsets WHERE flow_id = %s "
            "AND topic = %s AND (%s::int IS NULL OR partition = %s) GROUP BY partition "
            "ORDER BY partition", (settings.flow_id, args.topic, args.partition,
                                   args.partition)).fetchall()
        if not rows:
            where = args.topic if args.partition is None else f"{args.topic}[{args.partition}]"
            raise AdminError(f"flow {settings.flow_id!r} has read nothing of {where}: "
                             "nothing to replay")
        starts = requested_starts(settings, args.topic, [p for p, _ in rows], args)
        plan = [PartitionReplay(args.topic, p, before, min(before, starts[p][0]), starts[p][1])
                for p, before in rows]
        if not args.dry_run:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(
                    "UPDATE cdc.offsets SET next_offset = %s, updated_at = now() "
                    "WHERE flow_id = %s AND topic = %s AND partition = %s AND next_offset > %s",
                    [(starts[x.partition][0], settings.flow_id, x.topic, x.partition,
                      starts[x.partition][0]) for x in plan])
    total = sum(x.re_read for x in plan)
    verb = "would re-read" if args.dry_run else "will re-read"
    lines = [f"flow {settings.flow_id}: {verb} {total} messages of {args.topic}"
             + (" (dry run: nothing changed)" if args.dry_run else "")]
    lines += [f"  [{x.partition}] start {x.start_before} -> {x.start_after} "
              f"(end {x.end}): {x.re_read} messages again" for x in plan]
    data = {"flow_id": settings.flow_id, "topic": args.topic, "dry_run": args.dry_run,
            "re_read": total,
            "partitions": [asdict(x) | {"re_read": x.re_read} for x in plan]}
    return Output(data, lines)


def add_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("replay", help="move a stopped flow's start back on a topic")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partition", type=int, help="one partition (default: all)")
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument("--from-offset", type=int, help="the first offset to read again")
    start.add_argument("--from-timestamp",
                       help="ISO 8601 time (UTC unless a zone is given): the first message at or "
                            "after it")
    parser.add_argument("--dry-run", action="store_true", help="say what would move; change "
                        "nothing")
    parser.set_defaults(handler=command("replay", replay))
