"""The benchmark harness still runs end to end (tiny `smoke` and `scylla-smoke` scenarios, results
not written)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("scenario", "systems"), [
    ("smoke", ("replicator", "kafka-read", "ceiling", "naive")),
    ("smoke-avro", ("replicator", "kafka-read", "ceiling")),
])
def test_smoke_scenario_checks_correctness_and_reports(kafka_bootstrap, pg_dsn, schema_registry_url,
                                                       scenario, systems):
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--scenario", scenario, "--no-write",
         "--registry", schema_registry_url],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "matches oracle" in output, output[-3000:]
    for system in systems:
        assert f"| {system} |" in output, f"no figures for {system}:\n{output[-3000:]}"
    assert "read every message" in output, output[-3000:]  # kafka-read counted them all
    assert "profile failed" not in output, output[-3000:]
    assert "| decode: Decoder.decode_runs |" in output, "no per-stage profile"


def test_scylla_smoke_scenario_matches_the_cell_oracle_and_reports(kafka_bootstrap, pg_dsn):
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--scenario", "scylla-smoke", "--no-write"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    rows = {line.split("|")[1].strip(): line for line in output.splitlines()
            if line.startswith("| ") and line.count("|") == 12}
    assert "matches oracle" in rows.get("replicator", ""), output[-3000:]
    assert "(rows, DLQ, offsets)" in rows["replicator"], output[-3000:]
    assert "matches oracle" in rows.get("ceiling", ""), output[-3000:]
    assert "read every message" in rows.get("kafka-read", ""), output[-3000:]
    ratio = next((line for line in output.splitlines() if line.startswith("Targets:")), "")
    assert "(target ≥ 0.4)" in ratio, f"not issue 18's target: {ratio!r}"
