"""Offsets Kafka no longer holds: retention removed messages past a partition's committed offset.

The policy (`REPLICATE_ON_OFFSET_GAP`) is applied before the flow runs, to every partition's
committed start (`check_offset_gaps`), and while it runs, to a partition a consumer found out of
range (`gap_end`): stop with one line, or record the gap in `cdc.gaps` and go on from the
earliest offset Kafka holds.
"""

from __future__ import annotations

import logging

from confluent_kafka import Consumer, KafkaException, TopicPartition

from operators.offsets import committed_starts, record_gap
from operators.pg_session import connect
from operators.retry import retrying
from operators.settings import ConfigError, OffsetGapPolicy, Settings, kafka_client_config

log = logging.getLogger(__name__)
METADATA_TIMEOUT_S = 30  # a broker's answer to a metadata or offsets request


class WatermarkProbe:
    """Asks the broker for partitions' watermarks through one client, made at the first question
    and kept until `close`: a librdkafka client costs threads and connections to make, and the
    checks after an offset reset ask once per partition of a worker."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: Consumer | None = None

    def ask(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], tuple[int, int]]:
        """(low, high) of each partition as the broker says now: its earliest offset (retention
        moves it) and its end."""
        if self._client is None:
            self._client = Consumer(kafka_client_config(self._settings) | {"group.id": "cdc-probe"})
        return {(topic, partition): self._client.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=METADATA_TIMEOUT_S)
                for topic, partition in partitions}

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def watermarks(settings: Settings, partitions: list[tuple[str, int]]
               ) -> dict[tuple[str, int], tuple[int, int]]:
    """`WatermarkProbe.ask` with a client of its own."""
    probe = WatermarkProbe(settings)
    try:
        return probe.ask(partitions)
    finally:
        probe.close()


def settle_gap(settings: Settings, topic: str, partition: int, expected: int,
               earliest: int) -> None:
    """Kafka no longer holds a partition's offsets [expected, earliest): stop with one line
    (`ConfigError`), or, with `REPLICATE_ON_OFFSET_GAP=earliest`, record them in `cdc.gaps`."""
    if settings.on_offset_gap is OffsetGapPolicy.STOP:
        raise ConfigError(
            f"REPLICATE_ON_OFFSET_GAP: {topic}[{partition}]: committed offset {expected} is no "
            f"longer in Kafka, earliest available is {earliest} ({earliest - expected} messages "
            f"removed by retention); set REPLICATE_ON_OFFSET_GAP=earliest to go on from "
            f"{earliest} and record the gap in cdc.gaps")

    def record() -> None:
        with connect(settings.pg_dsn) as conn:
            record_gap(conn, settings.flow_id, topic, partition, expected, earliest)

    retrying(f"source {topic}[{partition}]: record offset gap", record, cap_s=settings.retry_max_s)
    log.warning("source %s[%d]: offsets %d to %d are no longer in Kafka: going on from %d "
                "(recorded in cdc.gaps)", topic, partition, expected, earliest - 1, earliest)


def check_offset_gaps(settings: Settings, partitions: list[tuple[str, int]]) -> None:
    """Before the flow starts: every partition's committed offset must still be in Kafka."""

    def committed() -> dict[tuple[str, int], int]:
        with connect(settings.pg_dsn) as conn:
            return committed_starts(conn, settings.flow_id)

    starts = retrying("read committed offsets", committed, cap_s=settings.retry_max_s)
    known = [tp for tp in partitions if tp in starts]
    if not known:
        return
    marks = retrying("read Kafka watermarks", lambda: watermarks(settings, known),
                     cap_s=settings.retry_max_s,
                     transient=lambda exc: isinstance(exc, KafkaException))
    for topic, partition in known:
        low, _ = marks[(topic, partition)]
        if low > starts[(topic, partition)]:
            settle_gap(settings, topic, partition, starts[(topic, partition)], low)


def gap_end(settings: Settings, probe: WatermarkProbe, topic: str, partition: int,
            position: int) -> int | None:
    """A partition read to `position` with nothing left to take, after an offset reset: None if
    Kafka still holds `position`; otherwise the earliest offset it holds, once the gap is
    settled (`settle_gap`). A position past the partition's end stops the flow."""
    low, high = probe.ask([(topic, partition)])[(topic, partition)]
    if position > high:
        raise RuntimeError(f"source {topic}[{partition}]: committed offset {position} is past "
                           f"the partition's end {high} (was the topic recreated?)")
    if low <= position:
        return None
    settle_gap(settings, topic, partition, position, low)
    return low
