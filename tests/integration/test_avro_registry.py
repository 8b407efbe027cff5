"""The decoder against the real schema registry: framed Avro that cannot be used goes to the DLQ
with a specific reason, and equal changes decode the same from Avro and from JSON."""

from __future__ import annotations

import uuid

import pytest

from benchmarks.workload import WorkloadSpec, generate
from operators.decode import Decoder
from operators.events import DlqRecord, RawMessage
from schemas.registry import registry_fetcher

pytestmark = pytest.mark.integration


@pytest.fixture
def avro_and_json(schema_registry_url):
    prefix = f"av{uuid.uuid4().hex[:8]}"
    spec = dict(events=1_500, keys=200, tables=("customers", "orders"), seed=3,
                topic_prefix=prefix)
    avro = generate(WorkloadSpec(encoding="avro", registry_url=schema_registry_url, **spec))
    json = generate(WorkloadSpec(**spec))
    return list(avro.iter_messages()), list(json.iter_messages())


def test_avro_and_json_of_the_same_changes_decode_to_equal_events(avro_and_json,
                                                                 schema_registry_url):
    avro, json = avro_and_json
    from_avro = Decoder("t", {}, None, registry_fetcher(schema_registry_url, 5))
    from_json = Decoder("t", {}, None)
    decoded = [(from_avro.decode(RawMessage(*a)), from_json.decode(RawMessage(*j)))
               for a, j in zip(avro, json, strict=True)]
    assert sum(a is not None for a, _ in decoded) > 1_500
    assert all(a == j for a, j in decoded)


def test_unusable_avro_goes_to_the_dlq_with_a_specific_reason(avro_and_json,
                                                             schema_registry_url):
    topic, partition, offset, key, value = next(m for m in avro_and_json[0] if m[4])
    decoder = Decoder("t", {}, None, registry_fetcher(schema_registry_url, 5))

    def outcome(raw_value: bytes) -> DlqRecord:
        result = decoder.decode(RawMessage(topic, partition, offset, key, raw_value))
        assert isinstance(result, DlqRecord), result
        assert result.raw_value == raw_value
        return result

    unknown = outcome(b"\x00" + (2**31 - 5).to_bytes(4, "big") + value[5:])
    assert unknown.error_type == "unknown_schema_id"
    assert str(2**31 - 5) in unknown.error
    cut = outcome(value[: len(value) // 2])
    assert cut.error_type == "malformed_avro"
    unconfigured = Decoder("t", {}, None).decode(RawMessage(topic, partition, offset, key, value))
    assert isinstance(unconfigured, DlqRecord)
    assert unconfigured.error_type == "no_schema_registry"
