"""Capture real Avro messages of the live chain into tests/fixtures/debezium_avro/: the changes of
tests/e2e/capture.py with the connector writing Avro through the local schema registry
(`infra/debezium.sh`, DEBEZIUM_FORMAT=avro), each message with its key's and value's writer schemas
as the registry serves them and what the source held after its change
(tests/unit/test_debezium_avro_fixtures.py checks the decoder against it).

    .venv/bin/python -m tests.e2e.capture_avro

Needs Kafka and the schema registry (infra/up.sh) and the source cluster
(infra/source_postgres.sh up).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

from schemas.registry import registry_fetcher
from tests.e2e.capture import capture

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "debezium_avro"
REGISTRY = os.environ.get("TEST_SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081/apis/ccompat/v7")


def schema_id(raw: bytes) -> int:
    """The registry id of a Confluent-framed message (magic byte 0, 4-byte big-endian id)."""
    assert raw[0] == 0, raw[:5]
    return int.from_bytes(raw[1:5], "big")


def avro_fixture(message: Any, expected: dict[str, Any]) -> dict[str, Any]:
    """The message's bytes (base64), the writer schema of each id they name and what the source
    held."""
    fetch = registry_fetcher(REGISTRY, 5)
    framed = [raw for raw in (message.key(), message.value()) if raw is not None]

    def text(raw: bytes | None) -> str | None:
        return None if raw is None else base64.b64encode(raw).decode()
    return {"topic": message.topic(), "partition": message.partition(),
            "offset": message.offset(), "key": text(message.key()),
            "value": text(message.value()),
            "schemas": {str(schema_id(raw)): fetch(schema_id(raw)) for raw in framed},
            "expected": expected}


if __name__ == "__main__":
    for written in capture("avro", avro_fixture, FIXTURES):
        print(FIXTURES / written)
