"""Log lines: text by default, one JSON object per line with `REPLICATE_LOG_FORMAT=json`, the
context fields where known, passwords masked in either format."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, cluster_main

from operators.log_format import cluster_layout, configure_logging, log_context
from operators.settings import ConfigError, LogFormat, Settings, load_settings

log = logging.getLogger("tests.log_format")
PASSWORD = "Zq7-hunter2"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def restore_logging():
    """configure_logging replaces the root handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def json_lines(stderr: str) -> list[dict]:
    return [orjson.loads(line) for line in stderr.splitlines()]


def test_text_is_the_default_format_and_masks_passwords(capsys, monkeypatch):
    monkeypatch.delenv("REPLICATE_LOG_FORMAT", raising=False)
    settings = Settings(topics="t")
    assert settings.log_format is LogFormat.TEXT
    configure_logging(settings)
    log.warning("cannot reach %s", f"postgresql://replicator:{PASSWORD}@warehouse/analytics")
    line = capsys.readouterr().err.strip()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING tests\.log_format: "
                        r"cannot reach postgresql://replicator:\*\*\*@warehouse/analytics", line)


def test_json_format_writes_one_object_per_line_with_the_flow(capsys, monkeypatch):
    monkeypatch.setenv("REPLICATE_TOPICS", "t")
    monkeypatch.setenv("REPLICATE_FLOW_ID", "orders")
    monkeypatch.setenv("REPLICATE_LOG_FORMAT", "json")
    configure_logging(load_settings())
    log.info("first")
    log.error("second\nspans two lines")
    first, second = json_lines(capsys.readouterr().err)
    assert set(first) == {"time", "level", "logger", "message", "flow"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", first["time"])
    assert (first["level"], first["logger"], first["message"], first["flow"]) == (
        "INFO", "tests.log_format", "first", "orders")
    assert (second["level"], second["message"]) == ("ERROR", "second\nspans two lines")


def test_json_fields_come_from_extra_then_from_the_log_context(capsys):
    configure_logging("json")
    with log_context(shard=3, topic="db.inv.orders", partition=1):
        log.info("inside", extra={"table": "inv.orders", "partition": 2})
        with log_context(shard=4):
            log.info("nested")
    log.info("outside")
    inside, nested, outside = json_lines(capsys.readouterr().err)
    assert {k: inside[k] for k in ("shard", "topic", "partition", "table")} == {
        "shard": 3, "topic": "db.inv.orders", "partition": 2, "table": "inv.orders"}
    assert (nested["shard"], nested["topic"]) == (4, "db.inv.orders")
    assert not {"flow", "worker", "shard", "topic", "partition", "table"} & set(outside)


def test_json_masks_passwords_in_the_message_and_the_traceback(capsys):
    configure_logging(LogFormat.JSON)
    try:
        raise ConnectionError(f"host=warehouse password={PASSWORD}")
    except ConnectionError:
        log.exception("connect to postgresql://replicator:%s@warehouse failed", PASSWORD)
    (line,) = json_lines(capsys.readouterr().err)
    assert "ConnectionError: host=warehouse password=***" in line["exception"]
    assert line["message"] == "connect to postgresql://replicator:***@warehouse failed"
    assert PASSWORD not in str(line)


def test_json_lines_name_the_bytewax_worker_that_logged(capsys):
    configure_logging("json")
    flow = Dataflow("log_worker")
    logged = op.map("log", op.input("in", flow, TestingSource(range(2))),
                    lambda x: log.info("item %d", x))
    op.output("out", logged, TestingSink([]))
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    log.info("the test's own thread")
    *items, own = json_lines(capsys.readouterr().err)
    assert [(line["message"], line["worker"]) for line in items] == [("item 0", 0), ("item 1", 0)]
    assert "worker" not in own


CLUSTER_FLOW = """
import logging
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource
from operators.log_format import configure_logging

configure_logging("json")
log = logging.getLogger("cluster_flow")
flow = Dataflow("log_cluster")
items = op.redistribute("spread", op.input("in", flow, TestingSource(range(16))))
op.output("out", op.map("log", items, lambda x: log.info("item %d", x)), TestingSink([]))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_workers_are_numbered_over_the_whole_cluster(tmp_path):
    (tmp_path / "cluster_flow.py").write_text(CLUSTER_FLOW)
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(2))
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    processes = [subprocess.Popen([sys.executable, "-m", "bytewax.run", "cluster_flow", "-w", "2",
                                   "-i", str(k), "-a", addresses], cwd=ROOT, env=env,
                                  stderr=subprocess.PIPE, text=True) for k in range(2)]
    workers = []
    for process in processes:
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr
        workers.append({line["worker"] for line in map(orjson.loads, stderr.splitlines())
                        if line["logger"] == "cluster_flow"})
    assert workers[0] and workers[0] <= {0, 1}
    assert workers[1] and workers[1] <= {2, 3}  # process 1 runs workers 2 and 3


@pytest.mark.parametrize(("argv", "environ", "layout"), [
    (["/venv/lib/bytewax/run.py", "flows.replicate", "-w", "2", "-i", "1", "-a", "a;b"], {},
     (1, 2)),
    (["/venv/lib/bytewax/run.py", "flows.replicate", "-a", "a;b"],
     {"BYTEWAX_PROCESS_ID": "3", "BYTEWAX_WORKERS_PER_PROCESS": "4"}, (3, 4)),
    (["/venv/bin/pytest", "-i", "7"], {}, (0, 1)),
])
def test_the_cluster_layout_comes_from_the_bytewax_run_arguments(argv, environ, layout):
    assert cluster_layout(argv, environ) == layout


def test_an_unknown_log_format_is_a_config_error_naming_the_setting(monkeypatch):
    monkeypatch.setenv("REPLICATE_TOPICS", "t")
    monkeypatch.setenv("REPLICATE_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="REPLICATE_LOG_FORMAT='xml'"):
        load_settings()
