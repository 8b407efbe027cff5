"""Pure helpers of the benchmark harness: percentiles, result records, ratios, row diffs.

No I/O here, so the unit tests (tests/unit/test_bench_*.py) can check every number the report
prints.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# Targets from the issue "Benchmark harness and performance".
TARGET_VS_CEILING = 0.6
TARGET_VS_JDBC = 2.0


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear-interpolated percentile (numpy's default 'linear' method) of unsorted values."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile {pct} is not in [0, 100]")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max and the sample count of latencies in milliseconds."""
    return {
        "n": len(latencies_ms),
        "p50": percentile(latencies_ms, 50),
        "p95": percentile(latencies_ms, 95),
        "p99": percentile(latencies_ms, 99),
        "max": max(latencies_ms),
    }


@dataclass
class RowDiff:
    """How a target table set differs from the oracle's live rows."""

    missing: int = 0  # expected live rows that are absent
    extra: int = 0  # rows that should not exist (never deleted or resurrected)
    wrong: int = 0  # rows present on both sides with different values
    expected: int = 0

    @property
    def total(self) -> int:
        return self.missing + self.extra + self.wrong

    def add(self, other: RowDiff) -> RowDiff:
        return RowDiff(self.missing + other.missing, self.extra + other.extra,
                       self.wrong + other.wrong, self.expected + other.expected)

    def describe(self) -> str:
        if not self.total:
            return f"matches oracle ({self.expected:,} rows)"
        return (f"{self.total:,} of {self.expected:,} rows differ ({self.missing:,} missing, "
                f"{self.extra:,} extra, {self.wrong:,} wrong values)")


def diff_rows(got: Mapping[Any, Mapping[str, Any]], want: Mapping[Any, Mapping[str, Any]]
              ) -> RowDiff:
    """Compare rows keyed by primary key; values compare with ==, so Decimal('1.50') equals
    Decimal('1.5')."""
    missing = sum(1 for k in want if k not in got)
    extra = sum(1 for k in got if k not in want)
    wrong = sum(1 for k, row in want.items() if k in got and dict(got[k]) != dict(row))
    return RowDiff(missing, extra, wrong, len(want))


@dataclass
class SystemResult:
    """One system's run on one scenario's data."""

    system: str
    messages: int = 0
    bytes: int = 0
    seconds: float | None = None  # first event consumed → last committed (see `timing`)
    timing: str = ""  # what the interval is, e.g. "first message fetched -> all offsets committed"
    seconds_with_startup: float | None = None  # process start → last committed, when known
    peak_rss_mb: float | None = None
    correctness: str = ""
    rows_differ: int | None = None
    exactly_matches_oracle: bool | None = None
    note: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.seconds is not None and self.seconds > 0

    @property
    def events_per_s(self) -> float | None:
        return self.messages / self.seconds if self.ok else None

    @property
    def mb_per_s(self) -> float | None:
        return self.bytes / 1e6 / self.seconds if self.ok else None

    @property
    def events_per_s_with_startup(self) -> float | None:
        if self.error is None and self.seconds_with_startup:
            return self.messages / self.seconds_with_startup
        return None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SystemResult:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class ScenarioResult:
    scenario: str
    command: str
    description: str
    spec: dict[str, Any] = field(default_factory=dict)
    systems: list[SystemResult] = field(default_factory=list)
    latency_ms: dict[str, float] | None = None
    latency_note: str = ""
    memory: list[dict[str, Any]] = field(default_factory=list)  # {"keys", "peak_rss_mb", ...}
    memory_note: str = ""
    profile: list[dict[str, Any]] = field(default_factory=list)  # {"stage", "seconds", "share"}
    profile_note: str = ""
    machine: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    plot: str | None = None

    def system(self, name: str) -> SystemResult | None:
        return next((s for s in self.systems if s.system == name), None)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["systems"] = [s.to_json() for s in self.systems]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScenarioResult:
        names = cls.__dataclass_fields__
        out = cls(**{k: v for k, v in data.items() if k in names and k != "systems"})
        out.systems = [SystemResult.from_json(s) for s in data.get("systems", [])]
        return out


def ratio(a: SystemResult | None, b: SystemResult | None) -> float | None:
    """Throughput of `a` divided by that of `b`; None when either has no figure."""
    if a is None or b is None or not a.ok or not b.ok:
        return None
    return a.events_per_s / b.events_per_s  # type: ignore[operator]


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares (slope, intercept); with one point, a line through the origin."""
    if len(xs) != len(ys) or not xs:
        raise ValueError("need as many ys as xs, and at least one point")
    if len(xs) == 1:
        return (ys[0] / xs[0] if xs[0] else 0.0), 0.0
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0, my
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return slope, my - slope * mx
