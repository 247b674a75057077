"""Prometheus metrics follow what happens, and their cardinality does not grow with key values."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from localcluster.operator_process import OperatorProcess
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
    labels = {"namespace": scenario.namespace, "policy": "metered"}
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
            lambda s: value(s, "jobgate_jobs", namespace=namespace, policy="metered", state="queued") == expected,
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
