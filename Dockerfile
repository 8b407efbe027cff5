# Replicator image: `docker compose build replicator` (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml ./
COPY flows ./flows
COPY operators ./operators
COPY schemas ./schemas
COPY benchmarks ./benchmarks
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /var/lib/replicator replicator \
    && mkdir -p /var/lib/replicator/state \
    && chown -R replicator /var/lib/replicator

USER replicator
ENV REPLICATE_STATE_DIR=/var/lib/replicator/state
VOLUME ["/var/lib/replicator/state"]
EXPOSE 9108

CMD ["python", "-m", "bytewax.run", "flows.replicate"]
