"""Every manifest under examples/ is applied exactly as written and behaves as its comments say."""

from __future__ import annotations

import pytest

from jobgate.core.policy import GROUP, PLURAL, VERSION, ConcurrencyPolicy
from localcluster.operator_process import REPO
from tests.support.scenario import Scenario, assert_never_over_admitted

pytestmark = pytest.mark.cluster

EXAMPLES = REPO / "examples"


def apply(scenario: Scenario, name: str) -> None:
    scenario.cluster.kubectl("apply", "-n", scenario.namespace, "-f", str(EXAMPLES / name))


def apply_policy(scenario: Scenario, name: str) -> ConcurrencyPolicy:
    apply(scenario, name)
    body = scenario.custom.get_namespaced_custom_object(
        GROUP, VERSION, scenario.namespace, PLURAL, name.removesuffix(".yaml")
    )
    policy = ConcurrencyPolicy.from_body(body)
    scenario.watch.govern(policy)
    return policy


def test_every_example_is_tested() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == [
        "cronjob-two-runs-at-once.yaml",  # these three: tests/test_policy_shapes.py
        "exports-with-a-bigger-customer.yaml",
        "invoice-exports.yaml",
        "one-deploy-per-environment.yaml",
        "one-export-per-customer.yaml",
        "three-backups-per-database.yaml",
        "three-jobs-per-team-across-namespaces.yaml",  # tests/test_cluster_policies.py
    ]


def test_one_export_per_customer_runs_customers_in_parallel_but_each_one_at_a_time(scenario: Scenario) -> None:
    scenario.start_operator()
    watch = scenario.watch
    apply_policy(scenario, "one-export-per-customer.yaml")
    most_at_once = [0]
    watch.listeners.append(lambda *_: most_at_once.__setitem__(0, max(most_at_once[0], len(watch.running()))))
    apply(scenario, "invoice-exports.yaml")
    watch.wait_for(lambda w: w.all_finished(14), "the 14 exports finishing", timeout=120)
    assert_never_over_admitted(watch)
    per_customer = {key: peak for (_, key), peak in watch.peak.items()}
    assert per_customer == {("acme",): 1, ("globex",): 1, ("initech",): 1, ("umbrella",): 1}
    assert most_at_once[0] >= 2  # customers proceed side by side


def test_three_backups_per_database_with_priority_and_manual_backups_left_alone(scenario: Scenario) -> None:
    scenario.start_operator()
    watch = scenario.watch
    apply_policy(scenario, "three-backups-per-database.yaml")
    labels = {"app": "backup", "db-name": "orders"}
    for i in range(4):
        scenario.job(f"nightly-{i}", labels, runs_for="600s")
    watch.wait_for(lambda w: len(w.running()) == 3, "three backups of orders running")
    scenario.job("urgent", labels, annotations={"jobgate.dev/priority": "10"})
    scenario.job("manual", {**labels, "backup-kind": "manual"}, suspend=False, runs_for="600s")
    watch.wait_for(lambda w: "manual" in w.running(), "the manual backup running beside the three")
    # A slot frees: the urgent backup goes before the older nightly one.
    first_running = sorted(watch.running() - {"manual"})[0]
    scenario.batch.delete_namespaced_job(first_running, scenario.namespace, propagation_policy="Background")
    watch.wait_for(lambda w: w.finished("urgent"), "the urgent backup admitted and done")
    nightly = watch.jobs["nightly-3"].admitted_at
    assert nightly is None or nightly > (watch.jobs["urgent"].admitted_at or 0)
    assert_never_over_admitted(watch)
    assert watch.peak[("three-backups-per-database", ("orders",))] == 3  # the manual one is not governed
