"""Configuration: env names, TOML file, precedence, passthrough and one-line errors (exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from operators.kafka_source import FETCH_TUNING, native_fetcher, worker_consumer_config
from operators.settings import (
    DEV_PG_DSN,
    ConfigError,
    DeleteMode,
    StartPosition,
    kafka_client_config,
    load_settings,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("REPLICATE_"):
            monkeypatch.delenv(name)


def test_defaults(monkeypatch):
    monkeypatch.setenv("REPLICATE_TOPICS", "a.b.c, d.e.f")
    s = load_settings()
    assert s.topic_list == ["a.b.c", "d.e.f"]
    assert (s.kafka_bootstrap, s.pg_dsn, str(s.state_dir)) == ("127.0.0.1:9092", DEV_PG_DSN,
                                                               "state")
    assert (s.flow_id, s.shards, s.start, s.target_schema, s.delete_mode) == (
        "default", 64, StartPosition.EARLIEST, "public", DeleteMode.HARD)


def test_every_documented_name_is_read(monkeypatch):
    env = dict(REPLICATE_KAFKA_BOOTSTRAP="h:1", REPLICATE_TOPIC_PATTERN=r"db\..*",
               REPLICATE_PG_DSN="postgresql://x@y/z", REPLICATE_STATE_DIR="/s",
               REPLICATE_FLOW_ID="f1", REPLICATE_SHARDS="8", REPLICATE_START="latest",
               REPLICATE_TARGET_SCHEMA="mirror", REPLICATE_DELETE_MODE="soft",
               REPLICATE_BATCH_SIZE="10", REPLICATE_BATCH_MS="20",
               REPLICATE_TABLE_MAP='{"db.public.t": "other.t2"}')
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = load_settings()
    assert (s.kafka_bootstrap, s.topic_pattern, s.pg_dsn, str(s.state_dir), s.flow_id) == (
        "h:1", r"db\..*", "postgresql://x@y/z", "/s", "f1")
    assert (s.shards, s.start, s.target_schema, s.delete_mode, s.batch_size, s.batch_ms) == (
        8, StartPosition.LATEST, "mirror", DeleteMode.SOFT, 10, 20)
    assert s.table_map == {"db.public.t": "other.t2"}


def test_toml_file_and_environment_wins(monkeypatch, tmp_path):
    config = tmp_path / "replicate.toml"
    config.write_text('topics = "t1"\nshards = 4\nflow_id = "from-file"\n')
    monkeypatch.setenv("REPLICATE_CONFIG", str(config))
    monkeypatch.setenv("REPLICATE_FLOW_ID", "from-env")
    s = load_settings()
    assert (s.topic_list, s.shards, s.flow_id) == (["t1"], 4, "from-env")


def test_kafka_passthrough(monkeypatch):
    monkeypatch.setenv("REPLICATE_TOPICS", "t")
    monkeypatch.setenv("REPLICATE_KAFKA_BOOTSTRAP", "x:1")
    environ = {"REPLICATE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
               "REPLICATE_KAFKA_SASL_MECHANISM": "PLAIN", "REPLICATE_KAFKA_BOOTSTRAP": "x:1",
               "REPLICATE_PG_DSN": "not kafka"}
    assert kafka_client_config(load_settings(), environ) == {
        "bootstrap.servers": "x:1", "security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"}


@pytest.mark.parametrize("name, value, fragment", [
    ("REPLICATE_SHARDS", "abc", "REPLICATE_SHARDS='abc'"),
    ("REPLICATE_SHARDS", "0", "REPLICATE_SHARDS='0'.*greater than or equal to 1"),
    ("REPLICATE_START", "middle", "REPLICATE_START='middle'"),
    ("REPLICATE_DELETE_MODE", "purge", "REPLICATE_DELETE_MODE='purge'"),
    ("REPLICATE_TOPIC_PATTERN", "(", "not a valid regular expression"),
    ("REPLICATE_FLOW_ID", "a b", "REPLICATE_FLOW_ID='a b'"),
])
def test_bad_values_name_the_setting(monkeypatch, name, value, fragment):
    monkeypatch.setenv("REPLICATE_TOPICS", "t")
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        load_settings()


def test_missing_topics_is_an_error():
    with pytest.raises(ConfigError, match="set REPLICATE_TOPICS or REPLICATE_TOPIC_PATTERN"):
        load_settings()


def test_flow_exits_2_with_one_line(monkeypatch):
    env = {"PATH": "/usr/bin:/bin", "REPLICATE_TOPICS": "t", "REPLICATE_SHARDS": "many"}
    done = subprocess.run([sys.executable, "-m", "bytewax.run", "flows.replicate"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "replicate: REPLICATE_SHARDS='many': Input should be a valid integer, unable to parse "
        "string as an integer"]


def test_worker_consumer_takes_fetch_tuning_unless_overridden_but_never_its_guarantees(
        monkeypatch):
    monkeypatch.setenv("REPLICATE_TOPICS", "t")
    monkeypatch.setenv("REPLICATE_FLOW_ID", "f")
    settings = load_settings()
    default = worker_consumer_config(settings, {})
    assert {k: default[k] for k in FETCH_TUNING} == FETCH_TUNING
    environ = {"REPLICATE_KAFKA_MAX_PARTITION_FETCH_BYTES": "1048576",
               "REPLICATE_KAFKA_ISOLATION_LEVEL": "read_uncommitted",
               "REPLICATE_KAFKA_ENABLE_AUTO_COMMIT": "true",
               "REPLICATE_KAFKA_GROUP_ID": "other"}
    config = worker_consumer_config(settings, environ)
    assert config["max.partition.fetch.bytes"] == "1048576"  # the operator's choice wins
    assert config["fetch.queue.backoff.ms"] == FETCH_TUNING["fetch.queue.backoff.ms"]
    assert (config["isolation.level"], config["enable.auto.commit"], config["group.id"]) == (
        "read_committed", False, "cdc-replicator.f")  # exactly-once rests on these


def test_a_kafka_property_the_native_consumer_refuses_is_a_one_line_error_with_the_way_out(
        monkeypatch):
    monkeypatch.setenv("REPLICATE_TOPICS", "t")
    monkeypatch.setenv("REPLICATE_KAFKA_NO_SUCH_PROPERTY", "1")
    with pytest.raises(ConfigError) as refused:
        native_fetcher(load_settings())
    message = str(refused.value)
    assert message.startswith("REPLICATE_NATIVE_FETCH: native Kafka consumer: ")
    assert "no.such.property" in message and "REPLICATE_NATIVE_FETCH=false" in message
    assert "\n" not in message
    monkeypatch.delenv("REPLICATE_KAFKA_NO_SUCH_PROPERTY")
    assert native_fetcher(load_settings()) is not None  # the same settings without it start
