"""`/healthz`, `/readyz` and `/metrics` on the metrics port, against the real Postgres and Kafka
and against a closed port."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import orjson
import pytest

from operators.health import Readiness, in_cluster, start_server
from operators.settings import Settings
from operators.source_watch import SourceWatch

pytestmark = pytest.mark.integration
PARTS = [("orders", 0), ("orders", 1)]


def flow_settings(**values: str) -> Settings:
    return Settings(topics="orders", **values)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture
def serve() -> Iterator:
    servers = []

    def _serve(settings: Settings, watch: SourceWatch, cluster: bool = False) -> int:
        server = start_server(0, Readiness(settings, watch, cluster), host="127.0.0.1")
        servers.append(server)
        return server.server_address[1]

    yield _serve
    for server in servers:
        server.shutdown()
        server.server_close()


def listening(watch: SourceWatch, parts: list[tuple[str, int]]) -> SourceWatch:
    watch.expect(PARTS)
    for topic, partition in parts:
        watch.opened(topic, partition)
    return watch


def test_healthz_answers_while_the_process_runs_even_without_postgres(serve):
    dsn = f"postgresql://postgres:secret@127.0.0.1:{closed_port()}/postgres"
    port = serve(flow_settings(pg_dsn=dsn), SourceWatch())
    assert get(port, "/healthz") == (200, b'{"status":"alive"}')


def test_readyz_is_503_with_a_reason_when_postgres_does_not_answer(serve, kafka_bootstrap):
    dsn = f"postgresql://postgres:secret@127.0.0.1:{closed_port()}/postgres"
    port = serve(flow_settings(pg_dsn=dsn, kafka_bootstrap=kafka_bootstrap),
                 listening(SourceWatch(), PARTS))
    status, body = get(port, "/readyz")
    answer = orjson.loads(body)
    assert status == 503 and answer["ready"] is False
    assert answer["reason"].startswith("postgres: ") and "secret" not in answer["reason"]


def test_readyz_is_503_when_kafka_does_not_answer(serve, pg_dsn):
    settings = flow_settings(pg_dsn=pg_dsn, kafka_bootstrap=f"127.0.0.1:{closed_port()}")
    status, body = get(serve(settings, listening(SourceWatch(), PARTS)), "/readyz")
    assert status == 503 and orjson.loads(body)["reason"].startswith("kafka: ")


def test_readyz_is_503_until_every_partition_is_assigned_then_200(serve, pg_dsn,
                                                                   kafka_bootstrap):
    settings = flow_settings(pg_dsn=pg_dsn, kafka_bootstrap=kafka_bootstrap)
    watch = SourceWatch()
    port = serve(settings, watch)
    status, body = get(port, "/readyz")
    assert (status, orjson.loads(body)["reason"]) == (
        503, "partitions: the dataflow has not started")
    listening(watch, PARTS[:1])
    status, body = get(port, "/readyz")
    assert (status, orjson.loads(body)["reason"]) == (503, "partitions: 1 not assigned (orders[1])")
    watch.opened(*PARTS[1])
    assert get(port, "/readyz") == (200, b'{"ready":true}')
    watch.closed(*PARTS[0])
    assert get(port, "/readyz")[0] == 503


def test_in_a_cluster_a_process_is_ready_once_its_source_started(serve, pg_dsn, kafka_bootstrap):
    settings = flow_settings(pg_dsn=pg_dsn, kafka_bootstrap=kafka_bootstrap)
    port = serve(settings, listening(SourceWatch(), PARTS[:1]), cluster=True)
    assert get(port, "/readyz") == (200, b'{"ready":true}')


def test_a_cluster_is_known_by_bytewax_addresses():
    assert in_cluster(["run.py", "flows.replicate", "-i", "0", "-a", "h:1;h:2"], {})
    assert in_cluster(["run.py", "flows.replicate"], {"BYTEWAX_ADDRESSES": "h:1;h:2"})
    assert not in_cluster(["run.py", "flows.replicate", "-w", "2"], {})


def test_metrics_are_served_in_the_prometheus_text_format(serve):
    port = serve(flow_settings(), SourceWatch())
    status, body = get(port, "/metrics")
    assert status == 200
    assert b"# TYPE replicate_events_total counter" in body
    assert b"# TYPE replicate_end_to_end_seconds histogram" in body
    assert get(port, "/other")[0] == 404
