"""Replicator configuration: `REPLICATE_*` environment variables, optionally a TOML file.

Precedence: environment variables, then the TOML file named by `REPLICATE_CONFIG`, then defaults.
Kafka client settings pass through as `REPLICATE_KAFKA_<NAME>`: `REPLICATE_KAFKA_SECURITY_PROTOCOL`
becomes `security.protocol` (see `kafka_client_config`).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from operators.redact import redact

ENV_PREFIX = "REPLICATE_"
DEV_PG_DSN = "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
KAFKA_PASSTHROUGH_PREFIX = ENV_PREFIX + "KAFKA_"


class StartPosition(StrEnum):
    EARLIEST = "earliest"
    LATEST = "latest"


class OffsetGapPolicy(StrEnum):
    """What a partition whose next offset Kafka no longer holds (retention removed it) does."""

    STOP = "stop"
    EARLIEST = "earliest"


class DeleteMode(StrEnum):
    HARD = "hard"
    SOFT = "soft"


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class Settings(BaseSettings):
    """Every setting of the replicator; `docs/configuration.md` describes each one."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    kafka_bootstrap: str = "127.0.0.1:9092"
    topics: str = Field("", description="comma-separated topic names")
    topic_pattern: str | None = Field(None, description="regex; matching topics join at start")
    pg_dsn: str = DEV_PG_DSN
    state_dir: Path = Path("./state")
    flow_id: str = "default"
    shards: int = Field(64, ge=1, le=4096)
    start: StartPosition = StartPosition.EARLIEST
    on_offset_gap: OffsetGapPolicy = Field(
        OffsetGapPolicy.STOP, description="stop, or go on from the earliest offset and record "
        "the messages lost in cdc.gaps")
    target_schema: str = "public"
    table_map: dict[str, str] = Field(
        default_factory=dict, description='topic -> "schema.table" or "table" overrides (JSON)'
    )
    cql_types: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="topic -> {column: declared CQL type} for ScyllaDB and Cassandra topics "
                    '(JSON), e.g. {"scylla.ks.orders": {"amount": "decimal"}}')
    delete_mode: DeleteMode = DeleteMode.HARD
    batch_size: int = Field(5000, ge=1)
    batch_ms: int = Field(500, ge=1)
    poll_batch_size: int = Field(
        2000, ge=1, description="messages per Kafka poll of the Python client")
    max_in_flight: int = Field(
        100_000, ge=100, description="messages the flow may read past its committed offsets")
    marker_ms: int = Field(500, ge=10, description="progress-marker period per partition")
    state_cache_mb: int = Field(32, ge=8, description="RocksDB block cache shared by all shards")
    state_write_buffer_mb: int = Field(
        32, ge=8, description="RocksDB memtable budget shared by all shards")
    metrics_port: int | None = Field(None, description="serve Prometheus metrics on this port")
    schema_registry_url: str | None = Field(
        None, description="Confluent-compatible schema registry for Avro keys and values")
    retry_max_s: float = Field(30.0, gt=0, description="cap of the retry backoff")
    native_decode: bool = Field(
        True, description="try the native decoder first (operators/native_decode.py)")
    native_fetch: bool = Field(
        True, description="read Kafka with the native consumer when decoding natively "
        "(operators/kafka_source.py); false: the Python client")
    log_format: LogFormat = Field(
        LogFormat.TEXT, description="text, or json: one JSON object per line "
        "(operators/log_format.py)")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(ENV_PREFIX + "CONFIG")
        if config_file:
            if not Path(config_file).is_file():
                raise ConfigError(f"{ENV_PREFIX}CONFIG: no such file: {config_file}")
            try:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{ENV_PREFIX}CONFIG: {config_file}: {exc}") from None
        return tuple(sources)

    @field_validator("topic_pattern")
    @classmethod
    def _pattern_compiles(cls, value: str | None) -> str | None:
        if value:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value or None

    @field_validator("flow_id")
    @classmethod
    def _flow_id_is_a_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", value):
            raise ValueError("use 1-100 letters, digits, '_', '.' or '-'")
        return value

    @model_validator(mode="after")
    def _has_a_topic_source(self) -> Settings:
        if not self.topic_list and not self.topic_pattern:
            raise ValueError("set REPLICATE_TOPICS or REPLICATE_TOPIC_PATTERN")
        return self

    @property
    def topic_list(self) -> list[str]:
        return [t.strip() for t in self.topics.split(",") if t.strip()]

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """The fields, passwords masked (a DSN, a registry URL with credentials)."""
        for name, value in super().__repr_args__():
            yield name, redact(value) if isinstance(value, str) else value


class ConfigError(Exception):
    """Configuration that cannot be used; the message names the setting (its passwords
    masked: it quotes values and connection errors)."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


def kafka_client_config(
    settings: Settings, environ: dict[str, str] | None = None
) -> dict[str, Any]:
    """librdkafka configuration: bootstrap servers plus every `REPLICATE_KAFKA_*` passthrough."""
    env = os.environ if environ is None else environ
    config: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap}
    for name, value in env.items():
        if name.startswith(KAFKA_PASSTHROUGH_PREFIX) and name != ENV_PREFIX + "KAFKA_BOOTSTRAP":
            key = name[len(KAFKA_PASSTHROUGH_PREFIX) :].lower().replace("_", ".")
            config[key] = value
    return config


def load_settings() -> Settings:
    """Read the settings, or raise `ConfigError` with one line naming the bad setting."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        if not first["loc"]:
            raise ConfigError(message) from None
        name = f"{ENV_PREFIX}{str(first['loc'][0]).upper()}"
        raise ConfigError(f"{name}={first['input']!r}: {message}") from None
