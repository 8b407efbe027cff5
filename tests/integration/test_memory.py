"""Invariant 6: resident memory does not grow with the number of distinct keys in state."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[2]
MB = 1 << 20
# The stores share a 64 MB block cache and a 64 MB write-buffer budget (operators/state_store.py).
FIXED_BOUND = 192 * MB


def test_state_for_millions_of_keys_stays_within_a_fixed_bound(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.state_memory", "--keys", "2000000", "--shards", "64",
         "--dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    points = {p["keys"]: p["rss"] for p in map(orjson.loads, done.stdout.splitlines())}
    print({k: f"{v / MB:.0f} MB" for k, v in points.items()})
    assert points[2_000_000] - points[200_000] < FIXED_BOUND
    # Past the memtable budget, a million more keys cost next to nothing; a Python dict of the
    # same keys would cost ~100 MB.
    assert points[2_000_000] - points[1_000_000] < 40 * MB
