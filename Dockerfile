# Replicator image: `docker compose build replicator` (see docker-compose.yml).

# The native code (native/, Rust, with librdkafka built from source) is built into a wheel in a
# throw-away stage: Debian bookworm's Python is 3.11, the runtime image's version.
FROM rust:1-slim-bookworm AS native
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
        gcc g++ make perl pkg-config libssl-dev zlib1g-dev \
    && python3 -m venv /opt/maturin && /opt/maturin/bin/pip install "maturin>=1.5,<2"
COPY native /src/native
RUN /opt/maturin/bin/maturin build --release -i python3 -m /src/native/Cargo.toml -o /wheels

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml ./
COPY flows ./flows
COPY formats ./formats
COPY operators ./operators
COPY schemas ./schemas
COPY benchmarks ./benchmarks
COPY --from=native /wheels /wheels
RUN pip install /wheels/*.whl . \
    && useradd --system --uid 10001 --home-dir /var/lib/replicator replicator \
    && mkdir -p /var/lib/replicator/state \
    && chown -R replicator /var/lib/replicator

USER replicator
ENV REPLICATE_STATE_DIR=/var/lib/replicator/state
VOLUME ["/var/lib/replicator/state"]
EXPOSE 9108

# under the supervisor, which restarts the flow with backoff when it dies; more processes:
# `replicate run --processes N` (docs/operations.md, "Scale")
CMD ["replicate", "run"]
