"""A message the decoder cannot key or that meets a defect goes to the DLQ alone: it never raises
out of the decode step, where it would stop the flow on every restart."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from confluent_kafka.schema_registry.error import SchemaRegistryError

from formats.debezium.postgres import PostgresDialect
from operators.decode import Decoder
from operators.events import ChangeEvent, DlqRecord
from tests.unit import debezium_samples as ds

TOPIC = "srv.inventory.spans"
INTERVAL_KEY = [ds.field("span", "int64", optional=False, name="io.debezium.time.MicroDuration")]
FIELDS = [*INTERVAL_KEY, ds.field("label", "string")]


def interval_keyed(offset: int, span_us: int) -> ds.RawMessage:
    """A Postgres table whose primary key is an `interval` column."""
    schema = ds.envelope_schema(FIELDS, ds.PG_SOURCE_SCHEMA, TOPIC)
    payload = ds.envelope("c", ds.pg_source(1000 + offset, table="spans"),
                          after={"span": span_us, "label": "x"})
    key = ds.key_doc({"span": span_us}, INTERVAL_KEY, TOPIC, schemas=True)
    return ds.raw(TOPIC, {"schema": schema, "payload": payload}, key, offset)


@pytest.mark.parametrize("native", [True, False])
def test_a_key_no_state_key_can_be_made_of_goes_to_the_dlq(native: bool) -> None:
    decoder = Decoder("public", {}, None, native=native)
    messages = [interval_keyed(offset, 3_600_000_000 + offset) for offset in range(3)]
    decoded, runs = decoder.decode_runs(messages, 4)
    assert [pos for pos, _ in decoded] == [0, 1, 2]
    assert all(not shard_runs for shard_runs in runs)
    for (_, item), msg in zip(decoded, messages, strict=True):
        assert isinstance(item, DlqRecord)
        assert (item.error_type, item.offset, item.raw_value) == ("unsupported_key", msg.offset,
                                                                 msg.value)
        assert "timedelta" in item.error and "span" in item.error


def test_an_unexpected_error_for_one_message_sends_only_that_message_to_the_dlq(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = PostgresDialect.version

    def flaky(self: PostgresDialect, source: dict, snapshot_point: Callable[[], int]) -> bytes:
        if source["lsn"] == 33842009:
            raise KeyError("a defect")
        return real(self, source, snapshot_point)

    monkeypatch.setattr(PostgresDialect, "version", flaky)
    decoder = Decoder("public", {}, None, native=False)  # native versions are made in Rust
    good, bad = ds.pg_message("c", after=ds.customer_row(1), offset=1), ds.pg_message(
        "c", after=ds.customer_row(2), lsn=33842009, offset=2)
    outcomes = [decoder.decode(good), decoder.decode(bad)]
    assert isinstance(outcomes[0], ChangeEvent) and outcomes[0].key == (1,)
    assert isinstance(outcomes[1], DlqRecord)
    assert (outcomes[1].error_type, outcomes[1].error) == ("decode_failed",
                                                          "KeyError: 'a defect'")


def test_a_failing_schema_registry_is_no_messages_fault_and_raises() -> None:
    """A registry refusing the replicator (e.g. after a credential rotation) must stop or retry
    the flow, not send every Avro message to the DLQ."""
    def refusing(ident: int | str) -> str:
        raise SchemaRegistryError(401, 40101, "Unauthorized")

    decoder = Decoder("public", {}, None, fetch_schema=refusing, native=False)
    framed = b"\x00" + (7).to_bytes(4, "big") + b"\x02"
    with pytest.raises(SchemaRegistryError):
        decoder.decode(ds.raw(TOPIC, framed, framed, 3))
