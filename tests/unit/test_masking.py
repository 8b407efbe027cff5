"""Passwords never reach a log line or an error message: the patterns, the remembered values,
and real connection failures (libpq, the schema registry client) in process and in the flow."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import psycopg
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from operators import redact
from operators.retry import first_line, retrying
from operators.settings import ConfigError, Settings

PASSWORD = "Zq7-hunter2"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_remembered_secrets(monkeypatch):
    """Each test starts with no remembered passwords, and leaves none behind."""
    monkeypatch.setattr(redact, "_remembered", set())


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("text", [
    f"postgresql://replicator:{PASSWORD}@warehouse:5432/analytics",
    f"missing \"=\" after \"postgresql//replicator:{PASSWORD}@warehouse/analytics\"",
    f"schema registry http://reader:{PASSWORD}@registry:8081/apis/ccompat/v7: list subjects",
    f"host=warehouse user=replicator password={PASSWORD} dbname=analytics",
    f"host=warehouse password='{PASSWORD} with spaces' dbname=analytics",
    f"postgresql://replicator@warehouse/analytics?password={PASSWORD}&sslmode=require",
    f"{{'bootstrap.servers': 'k:9092', 'sasl.password': '{PASSWORD}'}}",
])
def test_a_password_in_a_dsn_url_or_setting_is_masked(text):
    masked = redact.redact(text)
    assert PASSWORD not in masked and redact.MASK in masked


def test_a_password_holding_an_at_sign_is_masked_whole():
    masked = redact.redact("postgresql://replicator:pa@ss@warehouse/analytics")
    assert masked == "postgresql://replicator:***@warehouse/analytics"


@pytest.mark.parametrize("text", [
    'password authentication failed for user "postgres"',
    "connection to server at \"127.0.0.1\", port 5432 failed: Connection refused",
    "source db.inventory.orders[3]: starting at offset 12:30",
    "postgresql://replicator@warehouse:5432/analytics",
])
def test_text_without_a_password_is_left_as_it_is(text):
    assert redact.redact(text) == text


def test_remembered_passwords_are_masked_wherever_they_appear_alone():
    redact.remember_secrets([f"postgresql://replicator:{PASSWORD}@warehouse/analytics", None],
                            {"sasl.password": "kafka-secret", "sasl.username": "replicator"})
    assert redact.redact(f'unexpected spaces found in "{PASSWORD}"') == \
        'unexpected spaces found in "***"'
    assert redact.redact("auth with kafka-secret as replicator") == "auth with *** as replicator"


def test_a_short_remembered_password_does_not_mask_every_word():
    redact.remember_secrets(["postgresql://replicator:pw@warehouse/analytics"], {})
    assert redact.redact("pw is short") == "pw is short"


@pytest.mark.parametrize("dsn", [
    f"postgresql//replicator:{PASSWORD}@127.0.0.1/analytics",  # a mistyped scheme
    f"postgresql://replicator:{PASSWORD}@[::1/analytics",  # an unclosed IPv6 address
    f"postgresql://replicator:{PASSWORD} x@127.0.0.1/analytics",  # an unencoded space
])
def test_a_connection_string_libpq_quotes_back_leaves_no_password_in_the_error(dsn):
    redact.remember_secrets([dsn], {})
    with pytest.raises(psycopg.Error) as failure:
        psycopg.connect(dsn, connect_timeout=2)
    assert PASSWORD in str(failure.value)  # libpq quotes it
    assert PASSWORD not in first_line(failure.value)
    assert PASSWORD not in str(ConfigError(f"REPLICATE_PG_DSN: {failure.value}"))


def test_a_retried_registry_connection_failure_logs_no_password(caplog):
    url = f"http://reader:{PASSWORD}@127.0.0.1:{closed_port()}"
    client = SchemaRegistryClient({"url": url, "max.retries": 0})
    attempts = []

    def list_subjects() -> list[str]:
        attempts.append(1)
        return client.get_subjects() if len(attempts) == 1 else []  # refused, then answered

    with caplog.at_level("WARNING", logger="operators.retry"):
        retrying(f"schema registry {url}: list subjects", list_subjects,
                 transient=lambda exc: True)
    assert len(attempts) == 2 and "list subjects failed" in caplog.text
    assert PASSWORD not in caplog.text


def test_the_settings_repr_masks_passwords():
    settings = Settings(topics="t", pg_dsn=f"postgresql://replicator:{PASSWORD}@warehouse/db",
                        schema_registry_url=f"http://reader:{PASSWORD}@registry:8081")
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings)
    assert "replicator:***@warehouse" in repr(settings)


def _run_flow(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "bytewax.run", "flows.replicate"], cwd=ROOT,
                            env=os.environ | env, stderr=subprocess.PIPE, text=True)


@pytest.mark.integration
def test_the_flow_refused_a_dsn_libpq_cannot_parse_says_so_without_its_password(tmp_path):
    flow = _run_flow({"REPLICATE_TOPICS": "t", "REPLICATE_STATE_DIR": str(tmp_path),
                      "REPLICATE_PG_DSN": f"postgresql://replicator:{PASSWORD} x@127.0.0.1/db"})
    _, stderr = flow.communicate(timeout=60)
    assert flow.returncode == 2 and "REPLICATE_PG_DSN" in stderr
    assert PASSWORD not in stderr


@pytest.mark.integration
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_flow_logs_its_retries_of_an_unreachable_registry_without_its_password(
        pg_dsn, tmp_path, log_format):
    from benchmarks.replicator_run import drop_flows

    flow_id = f"mask{uuid.uuid4().hex[:10]}"
    flow = _run_flow({
        "REPLICATE_TOPICS": "t", "REPLICATE_STATE_DIR": str(tmp_path), "REPLICATE_PG_DSN": pg_dsn,
        "REPLICATE_FLOW_ID": flow_id, "REPLICATE_LOG_FORMAT": log_format,
        "REPLICATE_SCHEMA_REGISTRY_URL": f"http://reader:{PASSWORD}@127.0.0.1:{closed_port()}"})
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("list subjects failed" in x for x in lines):
            line = flow.stderr.readline()
            if not line:
                break
            lines.append(line)
    finally:
        flow.send_signal(signal.SIGTERM)
        lines += flow.communicate(timeout=30)[1].splitlines(keepends=True)
        drop_flows(pg_dsn, flow_id)
    retried = [line for line in lines if "list subjects failed" in line]
    assert retried and PASSWORD not in "".join(lines)
    if log_format == "json":
        record = orjson.loads(retried[0])
        assert record["level"] == "WARNING" and record["logger"] == "operators.retry"
        assert record["flow"] == flow_id
