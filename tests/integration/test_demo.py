"""`make demo` end to end: it must replicate its sample and say that it matches."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.replicator_run import delete_topics, drop_flows

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_demo_replicates_its_sample(kafka_bootstrap, pg_dsn):
    done = subprocess.run([sys.executable, "-m", "flows.demo"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    run_id = re.search(r"to (demo\d+)\.", done.stdout)
    try:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert "demo: matches the expected last-write-wins result" in done.stdout
        assert "older events rejected" in done.stdout
    finally:
        if run_id:  # the demo leaves its tables for a person to look at; a test does not
            drop_flows(pg_dsn, run_id.group(1))
            delete_topics(kafka_bootstrap, re.findall(rf"{run_id.group(1)}\.[\w.]+",
                                                      done.stdout.splitlines()[0]))
