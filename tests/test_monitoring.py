"""deploy/monitoring: the alerting rules and the Grafana dashboard use only metrics that /metrics really exposes.

promtool (Debian's `prometheus` package; .ci/check-monitoring installs it) checks the rules and runs their unit
tests; without it those tests are skipped, except in CI.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from providers.clients.base import TokenUsage
from usage.services import attempt_record, tokens_reserve

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "aditus-alerts.yml"
RULE_TESTS = MONITORING / "aditus-alerts.test.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"

# PromQL words that look like metric names; anything followed by "(" is a function or an aggregation.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}
# Grafana's variables, as Prometheus would see them once Grafana has filled them in.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$provider": ".*", "$task": ".*"}


def rule_expressions() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_expressions() -> dict[str, str]:
    return {
        f"{panel['title']} ({target['refId']})": target["expr"]
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    }


def variable_metrics() -> set[str]:
    """The metrics the dashboard's variables read their values from (`label_values(<metric>, <label>)`)."""
    return {
        match[1]
        for variable in dashboard()["templating"]["list"]
        for match in re.finditer(r"label_values\((\w+)", variable["definition"])
    }


def _strip(expr: str) -> str:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    return re.sub(r"\$\w+", "", expr)  # Grafana variables


def metric_names(expr: str) -> set[str]:
    """Every metric an expression selects."""
    stripped = _strip(expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", stripped):
        if match[0] in KEYWORDS or stripped[match.end() :].lstrip().startswith("("):
            continue
        names.add(match[0])
    return names


def label_uses(expr: str) -> list[tuple[set[str], set[str]]]:
    """(metrics, label names) pairs: the labels each selector matches on, and the labels the expression groups by
    (checked against every metric in it)."""
    uses = [
        ({metric}, set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers)))
        for metric, matchers in re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}", expr)
    ]
    grouped = {
        label.strip()
        for labels in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
        for label in labels.split(",")
        if label.strip()
    }
    if grouped:
        uses.append((metric_names(expr), grouped))
    return uses


@pytest.fixture
def exposed(db, provider_config) -> dict[str, set[str]]:
    """A real /metrics scrape after recorded attempts: {sample name: its label names}."""
    config = provider_config(
        provider_type="openai", model_name="gpt-4o", daily_token_limit=100_000, monthly_token_limit=1_000_000
    )
    attempt = {
        "request_id": "req-monitoring",
        "user_id": None,
        "task": "extraction",
        "config": config,
        "provider_type": "openai",
        "model": "gpt-4o",
        "attempt": 1,
        "streamed": False,
    }
    attempt_record(
        **attempt,
        reservation=tokens_reserve(config=config, tokens=2_000),
        outcome="success",
        usage=TokenUsage(input_tokens=1_200, output_tokens=300),
        latency_ms=800,
    )
    attempt_record(**attempt, reservation=None, outcome="error", error_type="timeout", usage=None, latency_ms=30_000)
    response = Client().get("/metrics")
    assert response.status_code == 200
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def test_the_extractor_finds_metrics_and_not_functions_labels_or_variables():
    expr = (
        'histogram_quantile(0.95, sum by (provider, le) (rate(ai_provider_latency_ms_bucket{outcome="success",'
        'task=~"$task"}[$__rate_interval]))) / 1000 > 45 and on (provider) sum by (provider) '
        "(rate(ai_provider_requests_total[5m])) > 1/60"
    )

    assert metric_names(expr) == {"ai_provider_latency_ms_bucket", "ai_provider_requests_total"}
    assert label_uses(expr)[0] == ({"ai_provider_latency_ms_bucket"}, {"outcome", "task"})


def test_the_rules_cover_errors_latency_token_limits_and_cost():
    names = set().union(*map(metric_names, rule_expressions().values()))

    assert {
        "ai_provider_requests_total",
        "ai_provider_latency_ms_bucket",
        "ai_provider_config_token_limit_ratio",
        "ai_provider_cost_usd_total",
    } <= names


def test_every_metric_and_label_the_rules_use_is_exposed(exposed):
    for alert, expr in rule_expressions().items():
        for name in metric_names(expr):
            assert name in exposed, f"{alert}: {name} is not on /metrics"
        for metrics, labels in label_uses(expr):
            available = set().union(*(exposed[name] for name in metrics))
            assert labels <= available, f"{alert}: no {labels - available} on {metrics}"


def test_every_metric_and_label_the_dashboard_uses_is_exposed(exposed):
    assert variable_metrics() <= set(exposed)
    for panel, expr in dashboard_expressions().items():
        assert metric_names(expr), f"{panel}: selects no metric"
        for name in metric_names(expr):
            assert name in exposed, f"{panel}: {name} is not on /metrics"
        for metrics, labels in label_uses(expr):
            available = set().union(*(exposed[name] for name in metrics))
            assert labels <= available, f"{panel}: no {labels - available} on {metrics}"


def test_a_misspelt_metric_would_be_caught(exposed):
    assert "ai_provider_request_total" not in exposed
    assert "ai_provider_latency_seconds_bucket" not in exposed


def test_every_alert_says_how_bad_for_how_long_and_what_to_do():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    for rule in (rule for group in groups for rule in group["rules"]):
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["for"], rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_the_dashboard_imports_with_a_prometheus_data_source_of_the_operators_choice():
    board = dashboard()
    assert [item["name"] for item in board["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    occupied: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
            assert panel["targets"], panel["title"]


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/check-monitoring installs it (Debian package prometheus)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return promtool


def test_promtool_accepts_the_rules_and_their_unit_tests_pass():
    promtool = _promtool()

    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    tested = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name], cwd=MONITORING, capture_output=True, text=True
    )

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_promtool_accepts_every_dashboard_query(tmp_path):
    promtool = _promtool()
    rules = []
    for number, expr in enumerate(dashboard_expressions().values()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"aditus:dashboard_query_{number}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))

    checked = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)

    assert checked.returncode == 0, checked.stdout + checked.stderr
