# Developer entry points. `make test` installs, starts the local services, then runs pytest.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install infra-up infra-down infra-status test e2e lint demo bench

install: $(STAMP)

# Re-installs only when pyproject.toml or the native decoder changes (or the venv is new).
# The native decoder (native/, Rust) is built by maturin with the machine's cargo.
$(STAMP): pyproject.toml native/pyproject.toml native/Cargo.toml $(wildcard native/src/*.rs)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@command -v cargo >/dev/null || { echo "make: cargo (Rust) is needed to build native/; see README" >&2; exit 1; }
	$(PY) -m pip install -q ./native
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

infra-up:
	infra/up.sh

infra-down:
	infra/down.sh

# A local Cassandra 5.0.6 with CDC on 127.0.0.1:9042 (docs/operations.md); not part of infra-up.
infra-status:
	-infra/postgres.sh status
	-infra/kafka.sh status
	-infra/schema_registry.sh status
	-infra/cassandra.sh status

test: install infra-up
	infra/prometheus.sh install
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The live chain (docs/types.md): a source cluster on 5433 and, per test, Kafka Connect with the
# Debezium Postgres connector and the replicator (tests/e2e, deselected in `make test`).
e2e: install infra-up
	infra/source_postgres.sh up
	CDC_E2E=1 $(PY) -m pytest -q -m e2e tests/e2e $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

demo: install infra-up
	$(PY) -m flows.demo

bench: install infra-up
	$(PY) -m benchmarks.run --scenario reference
