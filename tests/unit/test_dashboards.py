"""The Grafana dashboard and the Prometheus alert rules, checked by the real tools.

promtool (Debian package `prometheus`; `infra/prometheus.sh install`) checks the rules and runs
their unit tests; every metric a panel or rule names must be one the replicator exposes.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml
from prometheus_client.metrics import MetricWrapperBase

from operators import metrics

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "infra/prometheus/alerts.yml"
ALERT_TESTS = ROOT / "infra/prometheus/alerts_test.yml"
DASHBOARD = ROOT / "infra/grafana/dashboards/replicator.json"
SAMPLE_SUFFIXES = {"counter": ("_total",), "gauge": ("",),
                   "histogram": ("_bucket", "_sum", "_count")}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def exposed_names() -> set[str]:
    """Every sample name the replicator's metrics expose (a labelled metric shows none until
    its first child, so the names come from each metric's type)."""
    names: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names |= {family.name + suffix for suffix in SAMPLE_SUFFIXES[family.type]}
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions,
    keywords, label names or label values."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings (label values)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    found = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        name, call = match.groups()
        if not call and name.lower() not in KEYWORDS:
            found.add(name)
    return found


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"]
            for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"]
            for target in panel["targets"]]


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], cwd=ALERTS.parent, capture_output=True,
                          text=True, timeout=60)


def test_promtool_finds_the_rules_valid():
    done = promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout


def test_the_alert_unit_tests_pass_under_promtool():
    done = promtool("test", "rules", ALERT_TESTS.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_is_tested_firing_and_not_firing():
    cases: dict[str, set[bool]] = {}
    for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for case in test["alert_rule_test"]:
            cases.setdefault(case["alertname"], set()).add(bool(case["exp_alerts"]))
    assert {rule["alert"]: {True, False} for rule in alert_rules()} == cases


def test_every_metric_a_rule_names_is_exposed():
    used = {rule["alert"]: metric_names(rule["expr"]) for rule in alert_rules()}
    assert all(used.values()), used
    assert {alert: names - exposed_names() for alert, names in used.items()} == {
        alert: set() for alert in used}


def test_every_metric_a_dashboard_panel_names_is_exposed():
    used = {expr: metric_names(expr) for expr in dashboard_exprs()}
    assert all(used.values()), used
    assert {expr: names - exposed_names() for expr, names in used.items()} == {
        expr: set() for expr in used}


def test_the_dashboard_shows_what_operators_asked_for():
    used = set().union(*map(metric_names, dashboard_exprs()))
    assert {"replicate_events_total", "replicate_end_to_end_seconds_bucket",
            "replicate_lag_messages", "replicate_dlq_rows", "replicate_commit_seconds_bucket",
            "replicate_retries_total", "replicate_restarts_total"} <= used


def test_metric_names_are_found_in_promql_but_functions_and_labels_are_not():
    expr = ('histogram_quantile(0.95, sum by (job, le) (rate(x_bucket{outcome="stale"}[5m])))'
            ' > 2 and on (job) y unless z offset 5m')
    assert metric_names(expr) == {"x_bucket", "y", "z"}
