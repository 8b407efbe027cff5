"""docker-compose.yml cannot run here (no Docker); check what can be checked by parsing it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from operators.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["NAME=value", ...] form
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_services_exist(compose):
    services = compose["services"]
    assert {"kafka", "postgres", "schema-registry", "replicator", "prometheus",
            "grafana"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["postgres"]["image"] == "postgres:15"
    assert "9092:9092" in services["kafka"]["ports"]
    assert "5432:5432" in services["postgres"]["ports"]
    for name in ("prometheus", "grafana"):
        assert services[name].get("profiles") == ["monitoring"], name
    for name in ("kafka", "postgres", "schema-registry", "replicator"):
        assert "profiles" not in services[name], name


def test_replicator_env_names_are_settings_fields(compose):
    env = _environment(compose["services"]["replicator"])
    names = [n for n in env if n.startswith(ENV_PREFIX)]
    assert names, "replicator sets no REPLICATE_* variables"
    assert len(names) == len(env), f"non-REPLICATE_ variables: {set(env) - set(names)}"
    unknown = [n for n in names if n[len(ENV_PREFIX) :].lower() not in Settings.model_fields]
    assert unknown == [], f"not fields of operators.settings.Settings: {unknown}"
    assert "REPLICATE_TOPICS" in env or "REPLICATE_TOPIC_PATTERN" in env


def test_replicator_state_dir_is_on_a_named_volume(compose):
    service = compose["services"]["replicator"]
    state_dir = _environment(service)["REPLICATE_STATE_DIR"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
    assert mounts.get(state_dir) in compose["volumes"]


def test_prometheus_scrapes_the_replicator_metrics_port(compose):
    port = _environment(compose["services"]["replicator"])["REPLICATE_METRICS_PORT"]
    config = yaml.safe_load((ROOT / "infra" / "prometheus.yml").read_text())
    targets = [
        t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    ]
    assert f"replicator:{port}" in targets


def test_dockerfile_runs_the_flow_under_the_supervisor():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    assert "COPY native " in dockerfile and "maturin build" in dockerfile  # as `make install`
    assert 'CMD ["replicate", "run"]' in dockerfile  # under the supervisor


def test_registry_image_is_the_version_infra_runs(compose):
    """docker-compose and infra/schema_registry.sh run the same Apicurio release."""
    pom = (ROOT / "infra" / "schema_registry" / "pom.xml").read_text()
    version = pom.split("<apicurio.version>")[1].split("<")[0]
    image = compose["services"]["schema-registry"]["image"]
    assert image == f"apicurio/apicurio-registry:{version}"
    url = _environment(compose["services"]["replicator"])["REPLICATE_SCHEMA_REGISTRY_URL"]
    assert url.endswith("/apis/ccompat/v7")
