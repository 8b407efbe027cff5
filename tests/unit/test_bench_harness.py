"""The benchmark harness's own logic: percentiles, ratios, result tables, scenario parameters."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from benchmarks import report
from benchmarks.scenarios import SCENARIOS
from benchmarks.stats import (
    RowDiff,
    ScenarioResult,
    SystemResult,
    diff_rows,
    latency_summary,
    linear_fit,
    percentile,
    ratio,
)


def test_percentile_interpolates_like_numpy_linear():
    values = [15, 20, 35, 40, 50]
    assert percentile(values, 0) == 15
    assert percentile(values, 100) == 50
    assert percentile(values, 50) == 35
    assert percentile(values, 40) == pytest.approx(29.0)  # rank 1.6 between 20 and 35
    assert percentile(list(reversed(values)), 40) == pytest.approx(29.0)  # order does not matter
    assert percentile([7], 99) == 7


def test_percentile_rejects_empty_and_out_of_range():
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1, 2], 101)


def test_latency_summary_of_1_to_100():
    s = latency_summary([float(i) for i in range(1, 101)])
    assert s["n"] == 100
    assert s["p50"] == pytest.approx(50.5)
    assert s["p95"] == pytest.approx(95.05)
    assert s["p99"] == pytest.approx(99.01)
    assert s["max"] == 100


def test_diff_rows_counts_missing_extra_and_wrong():
    want = {(1,): {"id": 1, "price": Decimal("1.50")}, (2,): {"id": 2, "price": None},
            (3,): {"id": 3, "price": Decimal("2")}}
    got = {(1,): {"id": 1, "price": Decimal("1.5")},  # equal value, other scale
           (3,): {"id": 3, "price": Decimal("2.01")}, (4,): {"id": 4, "price": None}}
    d = diff_rows(got, want)
    assert (d.missing, d.extra, d.wrong, d.expected) == (1, 1, 1, 3)
    assert d.total == 3
    assert "3 of 3 rows differ" in d.describe()
    assert diff_rows(want, want).describe() == "matches oracle (3 rows)"
    assert RowDiff(1, 0, 0, 5).add(RowDiff(0, 2, 1, 5)) == RowDiff(1, 2, 1, 10)


def _result() -> ScenarioResult:
    res = ScenarioResult("reference", "python -m benchmarks.run --scenario reference", "desc",
                         machine={"nproc": 2, "ram_gb": 23.5, "date": "2025-01-01 00:00 UTC",
                                  "commit": "abc1234"})
    res.systems = [
        SystemResult("jdbc", messages=1000, bytes=2_000_000, seconds=4.0),
        SystemResult("replicator", messages=1000, bytes=2_000_000, seconds=1.0,
                     correctness="matches oracle"),
        SystemResult("ceiling", messages=1000, bytes=2_000_000, seconds=0.5),
        SystemResult("naive", messages=1000, error="timed out"),
        SystemResult("kafka-read", messages=1000, bytes=2_000_000, seconds=0.8),
        SystemResult("replicator-py", messages=1000, bytes=2_000_000, seconds=1.25),
    ]
    return res


def test_ratios_and_failed_systems():
    res = _result()
    rep, ceiling, jdbc = res.system("replicator"), res.system("ceiling"), res.system("jdbc")
    assert rep.events_per_s == 1000 and rep.mb_per_s == 2.0
    assert ratio(rep, ceiling) == pytest.approx(0.5)
    assert ratio(rep, jdbc) == pytest.approx(4.0)
    assert ratio(rep, res.system("naive")) is None  # a failed run has no figures
    assert res.system("naive").events_per_s is None


def test_rendered_table_orders_systems_and_marks_targets():
    text = report.render_scenario(_result())
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[1:]] == [
        "replicator", "replicator-py", "kafka-read", "ceiling", "naive", "jdbc"]
    rep_row = [cell.strip() for cell in rows[1].split("|")]
    assert rep_row[4] == "1,000"  # events/s
    assert rep_row[8:11] == ["0.80×", "0.50×", "4.00×"]  # vs kafka-read, ceiling, jdbc
    assert "**failed**: timed out" in rows[5]
    # 0.5 is below the 0.6 ceiling target, 4.0 above the jdbc target of 2
    assert "replicator / ceiling = 0.50× ❌" in text
    assert "replicator / jdbc = 4.00× ✅" in text
    assert "replicator / kafka-read = 0.80×" in text
    assert "replicator / replicator-py = 1.25×" in text
    assert "`python -m benchmarks.run --scenario reference`" in text
    assert "2 CPUs, 23.5 GB RAM" in text and "abc1234" in text


def test_results_round_trip_through_json(tmp_path):
    res = _result()
    res.latency_ms = latency_summary([1.0, 2.0, 3.0])
    res.memory = [{"keys": 100_000, "peak_rss_mb": 300.0},
                  {"keys": 1_000_000, "peak_rss_mb": 390.0}]
    path, md = tmp_path / "results.json", tmp_path / "RESULTS.md"
    report.save(res, path=path, md=md)
    loaded = report.load_all(path)["reference"]
    assert json.loads(path.read_text())["reference"]["scenario"] == "reference"
    assert loaded.system("replicator").events_per_s == 1000
    text = md.read_text()
    assert text.startswith("# Benchmark results")
    assert "| latency | n | p50 ms" in text
    assert "≈ 1,290 MB" in text  # 300 + 0.0001 MB/key * (10M - 100k)


def test_linear_fit_and_memory_extrapolation():
    assert linear_fit([1, 2, 3], [2, 4, 6]) == pytest.approx((2.0, 0.0))
    assert linear_fit([10], [5]) == (0.5, 0.0)
    rows = [{"keys": 100_000, "peak_rss_mb": 300.0}, {"keys": 1_000_000, "peak_rss_mb": 390.0}]
    assert report.extrapolate_memory(rows, 10_000_000) == pytest.approx(1290.0)
    assert report.extrapolate_memory(rows[:1], 10_000_000) is None
    # only the two largest runs count: 10 MB per million keys past 1M
    rows.append({"keys": 2_000_000, "peak_rss_mb": 400.0})
    assert report.extrapolate_memory(rows, 10_000_000) == pytest.approx(480.0)


def test_scenario_parameters():
    ref, smoke = SCENARIOS["reference"], SCENARIOS["smoke"]
    assert ref.spec["keys"] == 100_000 and len(ref.spec["tables"]) == 3
    assert ref.spec["columns"] == 6 and ref.spec["partitions"] == 4
    assert (ref.spec["duplicates_pct"], ref.spec["out_of_order_pct"],
            ref.spec["deletes_pct"]) == (2.0, 2.0, 5.0)
    assert ref.spec["schemas_enable"] is True
    assert 250_000 <= ref.spec["events"] <= 400_000
    assert set(ref.systems) == {"replicator", "replicator-py", "kafka-read", "ceiling", "naive",
                                "jdbc"}
    # smoke: same shape, tiny, no JVM, so it stays well under a minute
    assert smoke.spec["events"] <= 5_000 and "jdbc" not in smoke.systems
    assert {k: v for k, v in smoke.spec.items() if k not in ("events", "keys")} == \
        {k: v for k, v in ref.spec.items() if k not in ("events", "keys")}
    lat = SCENARIOS["latency"]
    assert lat.rate == 10_000 and 25 <= lat.spec["events"] / lat.rate <= 35
    memory = SCENARIOS["memory"]
    assert max(memory.memory_keys) == 10_000_000  # the target's key count, measured
    assert memory.spec["key_dist"] == "sequential" and memory.events_per_key >= 1
    avro = SCENARIOS["reference-avro"]
    assert avro.spec == {**ref.spec, "encoding": "avro"}


def test_sampler_reads_the_cpu_a_process_spent_between_two_times():
    """A child spends 0.4 s of CPU, then idles: the CPU read off the samples follows it, however
    loaded the machine is (the child spins for CPU time, not wall time). A child, not a thread
    here: a spinning thread would starve the sampler of the interpreter lock."""
    import subprocess
    import sys
    import time

    from benchmarks.procmon import RssSampler

    script = ("import time\nprint('go', flush=True)\nend = time.process_time() + 0.4\n"
              "while time.process_time() < end:\n    pass\nprint('done', flush=True)\n"
              "time.sleep(1.0)\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        sampler = RssSampler(child.pid, interval_s=0.02).start()
        assert child.stdout.readline().strip() == "go"
        go = time.time()
        assert child.stdout.readline().strip() == "done"
        done = time.time()
        time.sleep(0.7)
        sampler.stop()
    finally:
        child.wait(timeout=30)
    busy = sampler.cpu_between(go, done)
    idle = sampler.cpu_between(done + 0.1, done + 0.6)
    assert busy is not None and 0.25 <= busy <= 0.55
    assert idle is not None and idle < 0.1
    machine = sampler.cpu_between(go, done, "machine")
    assert machine is not None and machine >= 0.8 * busy  # the machine ran the child too
    assert sampler.cpu_between(go, done, "postgres") is not None
    assert sampler.cpu_between(go + 10, go + 20) is None
