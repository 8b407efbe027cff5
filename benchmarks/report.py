"""Results: `benchmarks/results/results.json` (latest run of every scenario), rendered into
`benchmarks/RESULTS.md`, plus one PNG per scenario under `benchmarks/results/`."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from benchmarks.scenarios import SCENARIOS
from benchmarks.stats import (
    TARGET_VS_CEILING,
    TARGET_VS_JDBC,
    ScenarioResult,
    SystemResult,
    linear_fit,
    ratio,
)

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
RESULTS_JSON = RESULTS_DIR / "results.json"
RESULTS_MD = HERE / "RESULTS.md"
SYSTEM_ORDER = ("replicator", "replicator-py", "kafka-read", "ceiling", "naive", "jdbc")
SCENARIO_ORDER = ("reference", "latency", "memory", "smoke")


def _num(v: float | None, fmt: str = "{:,.0f}") -> str:
    return "—" if v is None else fmt.format(v)


def _ratio_cell(r: float | None, target: float | None = None) -> str:
    if r is None:
        return "—"
    text = f"{r:.2f}×"
    if target is not None:
        text += " ✅" if r >= target else " ❌"
    return text


def _target_vs_ceiling(scenario: str) -> float:
    """The scenario's target (a `--set` run's name is the scenario's, then its settings)."""
    found = SCENARIOS.get(scenario.split(" ")[0])
    return TARGET_VS_CEILING if found is None else found.target_vs_ceiling


def _sorted_systems(systems: list[SystemResult]) -> list[SystemResult]:
    rank = {name: i for i, name in enumerate(SYSTEM_ORDER)}
    return sorted(systems, key=lambda s: rank.get(s.system, len(rank)))


def _table(header: str, alignment: str, rows: list[str]) -> list[str]:
    """A Markdown table followed by a blank line."""
    return [header, alignment, *rows, ""]


def render_scenario(res: ScenarioResult) -> str:
    """Markdown section of one scenario."""
    lines = [f"## Scenario `{res.scenario}`", "", res.description, ""]
    m = res.machine
    lines += [
        f"- Command: `{res.command}`",
        f"- Date: {m.get('date', '?')}; git commit `{m.get('commit', '?')}`"
        + (" (with uncommitted changes)" if m.get("dirty") else ""),
        f"- Machine: {m.get('nproc', '?')} CPUs, {m.get('ram_gb', '?')} GB RAM, "
        f"{m.get('python', '')}, {m.get('kernel', '')}",
    ]
    if res.spec:
        spec = ", ".join(f"{k}={v}" for k, v in res.spec.items())
        lines.append(f"- Workload: {spec}")
    lines.append("")
    if res.systems:
        rep = res.system("replicator")
        ceiling, jdbc = res.system("ceiling"), res.system("jdbc")
        kafka, python_only = res.system("kafka-read"), res.system("replicator-py")
        lines += [
            "| system | messages | seconds | events/s | MB/s | events/s incl. start-up "
            "| peak RSS MB | vs kafka-read | vs ceiling | vs jdbc | correctness |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for s in _sorted_systems(res.systems):
            if s.error:
                lines.append(f"| {s.system} | {s.messages:,} | — | — | — | — | — | — | — | — | "
                             f"**failed**: {s.error} |")
                continue
            lines.append(
                f"| {s.system} | {s.messages:,} | {_num(s.seconds, '{:.1f}')} "
                f"| {_num(s.events_per_s)} | {_num(s.mb_per_s, '{:.2f}')} "
                f"| {_num(s.events_per_s_with_startup)} | {_num(s.peak_rss_mb)} "
                f"| {_ratio_cell(ratio(s, kafka))} | {_ratio_cell(ratio(s, ceiling))} "
                f"| {_ratio_cell(ratio(s, jdbc))} "
                f"| {s.correctness} |")
        lines.append("")
        if rep is not None and rep.ok and (ceiling is not None or jdbc is not None):
            target = _target_vs_ceiling(res.scenario)
            lines.append(
                f"Targets: replicator / ceiling = "
                f"{_ratio_cell(ratio(rep, ceiling), target)} "
                f"(target ≥ {target}); replicator / jdbc = "
                f"{_ratio_cell(ratio(rep, jdbc), TARGET_VS_JDBC)} (target ≥ {TARGET_VS_JDBC})"
                + (f"; replicator / kafka-read = {_ratio_cell(ratio(rep, kafka))} (the share "
                   "of what Kafka delivers to a consumer that does nothing)" if kafka else "")
                + (f"; replicator / replicator-py = {_ratio_cell(ratio(rep, python_only))} (the "
                   "native code's gain: decoder and shard step)" if python_only else "") + ".")
            lines.append("")
        timings = [f"- `{s.system}`: {s.timing}" + (f"; {s.note}" if s.note else "")
                   for s in _sorted_systems(res.systems) if s.timing or s.note]
        if timings:
            lines += ["What each figure times:", "", *timings, ""]
    if res.latency_ms:
        lat = res.latency_ms
        lines += [
            "| latency | n | p50 ms | p95 ms | p99 ms | max ms |",
            "|---|---:|---:|---:|---:|---:|",
            f"| replicator | {int(lat['n']):,} | {lat['p50']:,.0f} | {lat['p95']:,.0f} "
            f"| {lat['p99']:,.0f} | {lat['max']:,.0f} |",
            "",
        ]
        if res.latency_note:
            lines += [res.latency_note, ""]
    if res.memory:
        lines += _table("| distinct keys | messages | peak RSS MB | correctness |",
                        "|---:|---:|---:|---|",
                        [f"| {row['keys']:,} | {row.get('messages', 0):,} | "
                         f"{_num(row.get('peak_rss_mb'))} | {row.get('correctness', '')} |"
                         for row in res.memory])
        measured_10m = any(row["keys"] >= 10_000_000 and row.get("peak_rss_mb")
                           for row in res.memory)
        extrapolated = None if measured_10m else extrapolate_memory(res.memory, 10_000_000)
        if extrapolated is not None:
            lines += [f"Extrapolated to 10,000,000 distinct keys along the growth between the two "
                      f"largest runs: ≈ {extrapolated:,.0f} MB (not measured).", ""]
        if res.memory_note:
            lines += [res.memory_note, ""]
    if res.profile:
        lines += _table("| stage (in-process profile) | seconds | share | µs/message |",
                        "|---|---:|---:|---:|",
                        [f"| {row['stage']} | {row['seconds']:.2f} | {row['share'] * 100:.0f}% "
                         f"| {_num(row.get('us_per_msg'), '{:.1f}')} |" for row in res.profile])
        if res.profile_note:
            lines += [res.profile_note, ""]
    for note in res.notes:
        lines.append(f"- {note}")
    if res.notes:
        lines.append("")
    if res.plot:
        lines += [f"![{res.scenario}]({res.plot})", ""]
    return "\n".join(lines)


def extrapolate_memory(rows: list[Mapping], keys: int) -> float | None:
    """A straight line through the two largest runs: the marginal growth per key, which a fit
    through every point (start-up and in-flight memory included) would overstate."""
    points = sorted((r["keys"], r["peak_rss_mb"]) for r in rows if r.get("peak_rss_mb"))
    if len(points) < 2:
        return None
    slope, intercept = linear_fit([p[0] for p in points[-2:]], [p[1] for p in points[-2:]])
    return intercept + slope * keys


def render(results: Mapping[str, ScenarioResult]) -> str:
    order = [s for s in SCENARIO_ORDER if s in results] + sorted(
        s for s in results if s not in SCENARIO_ORDER)
    head = [
        "# Benchmark results",
        "",
        "Written by `python -m benchmarks.run` (do not edit by hand: the next run rewrites it). "
        "Each section is the latest run of that scenario. Systems: `replicator` = "
        "`python -m bytewax.run flows.replicate` (one process, default settings); "
        "`replicator-py` = the same with `REPLICATE_NATIVE_DECODE=false` (the Python decoder "
        "and shard step, no native code), on the same topics with its own flow; `ceiling` = "
        "pre-decoded events applied straight to Postgres (staged COPY + one version-guarded "
        "upsert per batch, no Kafka, no decode); `kafka-read` = a confluent-kafka consumer with "
        "the replicator's fetch settings that reads every message and does nothing with it (how "
        "fast this broker delivers the backlog to Python); `naive` = a confluent-kafka loop with "
        "per-row `INSERT ... ON CONFLICT DO UPDATE` (executemany per poll batch, no LWW); "
        "`jdbc` = Kafka Connect standalone + Debezium JDBC sink (upsert, delete.enabled). "
        "Correctness is checked against the workload's LWW oracle before any figure is "
        "reported; `naive` and `jdbc` are at-least-once and arrival-order-wins, so the rows where "
        "they differ from the oracle are counted, not treated as a harness failure.",
        "",
    ]
    return "\n".join(head + [render_scenario(results[s]) for s in order]).rstrip() + "\n"


def load_all(path: Path = RESULTS_JSON) -> dict[str, ScenarioResult]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {name: ScenarioResult.from_json(v) for name, v in data.items()}


def save(result: ScenarioResult, path: Path = RESULTS_JSON, md: Path = RESULTS_MD) -> None:
    """Store `result` as the latest of its scenario and re-render RESULTS.md."""
    results = load_all(path)
    results[result.scenario] = result
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: v.to_json() for k, v in results.items()}, indent=1,
                               default=str) + "\n")
    md.write_text(render(results))


def file_stem(scenario: str) -> str:
    """A file name for a scenario's outputs (names with --set settings contain spaces and =)."""
    return re.sub(r"[^\w.-]+", "_", scenario)


def plot(result: ScenarioResult, out_dir: Path = RESULTS_DIR) -> str | None:
    """PNG of throughput per system (and latency percentiles / memory when measured);
    returns its path relative to benchmarks/, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = []
    systems = [s for s in _sorted_systems(result.systems) if s.ok]
    if systems:
        panels.append("throughput")
    if result.latency_ms:
        panels.append("latency")
    if result.memory:
        panels.append("memory")
    if result.profile:
        panels.append("profile")
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "throughput":
            names = [s.system for s in systems]
            values = [s.events_per_s for s in systems]
            bars = ax.bar(names, values, color=["#2b6cb0" if n == "replicator" else "#a0aec0"
                                                for n in names])
            ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8)
            ax.tick_params(axis="x", labelrotation=30)
            ax.set_ylabel("events/s (backlog)")
            ax.set_title(f"{result.scenario}: throughput")
        elif panel == "latency":
            lat = result.latency_ms or {}
            names = ["p50", "p95", "p99"]
            bars = ax.bar(names, [lat[n] for n in names], color="#dd6b20")
            ax.bar_label(bars, labels=[f"{lat[n]:,.0f}" for n in names])
            ax.set_ylabel("ms, produce → Postgres commit")
            ax.set_title(f"{result.scenario}: latency")
        elif panel == "memory":
            xs = [r["keys"] for r in result.memory if r.get("peak_rss_mb")]
            ys = [r["peak_rss_mb"] for r in result.memory if r.get("peak_rss_mb")]
            ax.plot(xs, ys, "o-")
            ax.set_xscale("log")
            ax.set_xlabel("distinct keys")
            ax.set_ylabel("peak RSS MB")
            ax.set_title(f"{result.scenario}: memory")
        else:
            names = [r["stage"] for r in result.profile]
            ax.barh(names, [r["share"] * 100 for r in result.profile], color="#38a169")
            ax.invert_yaxis()
            ax.set_xlabel("% of in-process time")
            ax.set_title(f"{result.scenario}: profile")
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / (file_stem(result.scenario) + ".png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    try:
        return str(path.relative_to(HERE))
    except ValueError:
        return str(path)
