"""Prometheus metrics follow what happens, and their cardinality does not grow with key values."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from localcluster.build import bin_dir
from localcluster.operator_process import OperatorProcess
from tests.support import chart
from tests.support.metrics import Samples, samples, value
from tests.support.scenario import Scenario
from tests.support.waiting import poll_until

pytestmark = pytest.mark.cluster


def wait_metrics(operator: OperatorProcess, check: Callable[[Samples], bool], what: str) -> Samples:
    def matching() -> Samples | None:
        found = samples(operator)
        return found if check(found) else None

    result: Samples = poll_until(matching, what, timeout=120)
    return result


@pytest.fixture
def operator(scenario: Scenario) -> OperatorProcess:
    return scenario.start_operator()


def test_metrics_follow_a_scenario(scenario: Scenario, operator: OperatorProcess) -> None:
    labels = {"policy_namespace": scenario.namespace, "policy": "metered"}
    scenario.policy("metered", {"app": "m"}, ["customer"], 1)
    names = [f"m-{c}-{i}" for c in "ab" for i in range(3)]
    for name in names:
        scenario.job(name, {"app": "m", "customer": name[2]})
    scenario.watch.wait_for(lambda w: w.finished(*names), "all six finishing", timeout=90)
    # Gauges return to 0 once everything finished; admissions are counted once each.
    done = wait_metrics(
        operator, lambda s: value(s, "jobgate_jobs", **labels, state="running") == 0, "the running gauge back at 0"
    )
    assert value(done, "jobgate_jobs", **labels, state="queued") == 0
    assert value(done, "jobgate_admissions_total", **labels) == 6
    assert value(done, "jobgate_queue_wait_seconds_count", **labels) == 6
    assert value(done, "jobgate_decision_latency_seconds_count") >= 4  # admissions that followed a freed slot
    assert value(done, "jobgate_leader") == 1
    assert value(done, "jobgate_api_requests_total", verb="patch", resource="jobs", code="200") == 6


def test_series_do_not_grow_with_key_values(scenario: Scenario, operator: OperatorProcess) -> None:
    namespace = scenario.namespace
    scenario.policy("metered", {"app": "m"}, ["customer"], 0)  # paused: every Job stays queued, one key per Job

    def create(first: int, count: int) -> None:
        for i in range(first, first + count):
            scenario.job(f"k-{i}", {"app": "m", "customer": f"c{i}"})

    def per_policy_series_once_queued(expected: int) -> Samples:
        found = wait_metrics(
            operator,
            lambda s: (
                value(s, "jobgate_jobs", policy_namespace=namespace, policy="metered", state="queued") == expected
            ),
            f"{expected} queued in the gauge",
        )
        return {key: v for key, v in found.items() if ("policy", "metered") in key[1]}

    create(0, 5)
    with_five_keys = per_policy_series_once_queued(5)
    create(5, 495)
    with_500_keys = samples(operator) | per_policy_series_once_queued(500)
    print(f"series of the policy: {len(with_five_keys)} with 5 keys, then with 500 keys: {len(with_500_keys)} in all")
    assert with_500_keys.keys() >= with_five_keys.keys()
    assert len({k for k in with_500_keys if ("policy", "metered") in k[1]}) == len(with_five_keys)
    customers = {f"c{i}" for i in range(500)}
    assert not [k for k in with_500_keys if customers & {v for _, v in k[1]}], "a key value became a label"


def test_a_stuck_queue_shows_in_the_oldest_age(scenario: Scenario, operator: OperatorProcess) -> None:
    """The oldest queued Job's age rises between scrapes while nothing is admitted (a paused policy), and
    goes back to 0 once the queue empties; only per-policy labels, never `namespace`."""
    labels = {"policy_namespace": scenario.namespace, "policy": "stuck"}
    scenario.policy("stuck", {"app": "s"}, ["customer"], 0)
    scenario.job("s-1", {"app": "s", "customer": "a"})
    first = wait_metrics(
        operator, lambda s: value(s, "jobgate_queued_oldest_age_seconds", **labels) > 0, "an oldest queued age"
    )
    later = wait_metrics(
        operator,
        lambda s: (
            value(s, "jobgate_queued_oldest_age_seconds", **labels)
            >= value(first, "jobgate_queued_oldest_age_seconds", **labels) + 1
        ),
        "the oldest queued age rising",
    )
    assert value(later, "jobgate_queued_with_free_slot", **labels) == 0  # paused: no slot is free
    assert not [key for key in later if "namespace" in dict(key[1])], "a series has a `namespace` label"
    scenario.set_limit("stuck", 1)
    wait_metrics(
        operator,
        lambda s: (
            value(s, "jobgate_queued_oldest_age_seconds", **labels) == 0
            and value(s, "jobgate_jobs", **labels, state="running") + value(s, "jobgate_admissions_total", **labels)
            >= 1
        ),
        "the oldest queued age back at 0 once admitted",
    )


ALERTS = Path(__file__).resolve().parents[1] / "examples" / "monitoring" / "jobgate-alerts.yaml"
PROMQL_WORDS = {"and", "or", "unless", "on", "ignoring", "by", "without", "group_left", "group_right", "bool", "offset"}


def rule_expressions() -> list[str]:
    rule = yaml.safe_load(ALERTS.read_text())
    return [r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]]


def metric_names(expression: str) -> set[str]:
    """The series an expression reads: identifiers that are no function (followed by "("), keyword, label
    matcher (inside {}) or grouping label (inside by/on (...)), nor a number's exponent."""
    bare = re.sub(r"\{[^}]*\}", "", expression)  # label matchers
    bare = re.sub(r"\b(?:on|by|without|ignoring)\s*\([^)]*\)", "", bare)  # grouping labels
    bare = re.sub(r"\[[^]]*\]", "", bare)  # ranges
    found = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", bare))
    return found - PROMQL_WORDS


def test_alert_rules_read_metrics_that_exist(scenario: Scenario, operator: OperatorProcess) -> None:
    """Every metric and label that examples/monitoring/jobgate-alerts.yaml reads is in a real scrape."""
    scenario.policy("alerting", {"app": "al"}, [], 1)
    scenario.job("al-1", {"app": "al"})
    scenario.wait_leader_synced("alerting")
    wait_metrics(
        operator,
        lambda s: (
            ("jobgate_queued_oldest_age_seconds", (("policy", "alerting"), ("policy_namespace", scenario.namespace)))
            in s
        ),
        "the per-policy queue series",
    )
    exposed: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(operator.metrics()):
        for sample in family.samples:
            exposed.setdefault(sample.name, set()).update(sample.labels)
    expressions = rule_expressions()
    assert len(expressions) == 4
    read = set().union(*(metric_names(e) for e in expressions))
    print(f"metrics the alerts read: {sorted(read)}")
    assert read and not read - exposed.keys(), f"not exposed: {sorted(read - exposed.keys())}"
    for expression in expressions:
        for grouping in re.findall(r"\b(?:on|by)\s*\(([^)]*)\)", expression):
            for label in (g.strip() for g in grouping.split(",")):
                assert any(label in exposed[m] for m in metric_names(expression)), (label, expression)
        for name, matchers in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}", expression):
            for label in re.findall(r"(\w+)\s*=", matchers):
                assert label in exposed[name], (label, name)
    # And the rest the issue asks for: build info, the default collectors, the webhook's latency.
    assert {"jobgate_build_info", "process_resident_memory_bytes", "python_info"} <= exposed.keys()
    assert "jobgate_webhook_duration_seconds_bucket" in exposed


@pytest.mark.binaries
def test_the_chart_can_add_a_service_monitor() -> None:
    helm = bin_dir() / "helm"
    if not helm.is_file():
        pytest.fail(f"helm is not at {helm}: build it with `make binaries`", pytrace=False)
    assert not [m for m in chart.render(helm, {}, namespace="ops") if m["kind"] == "ServiceMonitor"]
    values = {"metrics": {"serviceMonitor": {"enabled": True, "interval": "30s", "labels": {"release": "prom"}}}}
    (monitor,) = [m for m in chart.render(helm, values, namespace="ops") if m["kind"] == "ServiceMonitor"]
    (service,) = [m for m in chart.render(helm, values, namespace="ops") if m["kind"] == "Service"]
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ops"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint == {"port": "http-metrics", "path": "/metrics", "interval": "30s"}
    assert "http-metrics" in {p["name"] for p in service["spec"]["ports"]}
