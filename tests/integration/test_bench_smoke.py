"""The benchmark harness still runs end to end (tiny `smoke` scenario, results not written)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_smoke_scenario_checks_correctness_and_reports(kafka_bootstrap, pg_dsn):
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--scenario", "smoke", "--no-write",
         "--no-profile"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "matches oracle" in output, output[-3000:]
    for system in ("replicator", "ceiling", "naive"):
        assert f"| {system} |" in output, f"no figures for {system}:\n{output[-3000:]}"
