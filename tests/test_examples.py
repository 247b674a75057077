"""Every manifest under examples/ is applied exactly as written and behaves as its comments say."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import kubernetes.client
import pytest

from jobgate.policy import ConcurrencyPolicy
from localcluster.access import ClusterAccess
from localcluster.jobwatch import JobWatch
from localcluster.operator_process import REPO, OperatorProcess
from tests.support.manifests import job_manifest

pytestmark = pytest.mark.cluster

EXAMPLES = REPO / "examples"


@pytest.fixture
def operator(cluster: ClusterAccess, namespace: str, crd: None, tmp_path: Path) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        cluster.kubeconfig, [namespace], tmp_path, "--leader-election-namespace", namespace, "--lease-seconds", "3"
    )
    process.start()
    yield process
    process.stop()
    print(process.log_tail(60))


def apply(cluster: ClusterAccess, namespace: str, name: str) -> ConcurrencyPolicy | None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / name))
    if "per-" not in name:
        return None
    policy_name = name.removesuffix(".yaml")
    body = kubernetes.client.CustomObjectsApi(cluster.api_client()).get_namespaced_custom_object(
        "jobgate.dev", "v1alpha1", namespace, "concurrencypolicies", policy_name
    )
    return ConcurrencyPolicy.from_body(body)


def test_every_example_is_tested() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == [
        "invoice-exports.yaml",
        "one-export-per-customer.yaml",
        "three-backups-per-database.yaml",
    ]


def test_one_export_per_customer_runs_customers_in_parallel_but_each_one_at_a_time(
    cluster: ClusterAccess, namespace: str, operator: OperatorProcess
) -> None:
    with JobWatch(cluster.api_client(), namespace) as watch:
        policy = apply(cluster, namespace, "one-export-per-customer.yaml")
        assert policy is not None
        watch.govern(policy)
        apply(cluster, namespace, "invoice-exports.yaml")
        most_at_once = [0]
        watch.listeners.append(
            lambda _t, _b, _a: most_at_once.__setitem__(0, max(most_at_once[0], len(watch.running())))
        )
        watch.wait_for(lambda w: w.all_finished(14), "the 14 exports finishing", timeout=120)
    assert watch.admitted_over_limit == []
    per_customer = {key: peak for (_, key), peak in watch.peak.items()}
    assert per_customer == {("acme",): 1, ("globex",): 1, ("initech",): 1, ("umbrella",): 1}
    assert most_at_once[0] >= 2  # customers proceed side by side


def test_three_backups_per_database_with_priority_and_manual_backups_left_alone(
    cluster: ClusterAccess, namespace: str, operator: OperatorProcess
) -> None:
    batch = kubernetes.client.BatchV1Api(cluster.api_client())
    with JobWatch(cluster.api_client(), namespace) as watch:
        policy = apply(cluster, namespace, "three-backups-per-database.yaml")
        assert policy is not None
        watch.govern(policy)
        labels = {"app": "backup", "db-name": "orders"}
        for i in range(4):
            batch.create_namespaced_job(namespace, job_manifest(f"nightly-{i}", labels, runs_for="600s"))
        watch.wait_for(lambda w: len(w.running()) == 3, "three backups of orders running")
        urgent = job_manifest("urgent", labels, annotations={"jobgate.dev/priority": "10"})
        batch.create_namespaced_job(namespace, urgent)
        manual = job_manifest("manual", {**labels, "backup-kind": "manual"}, suspend=False, runs_for="600s")
        batch.create_namespaced_job(namespace, manual)
        watch.wait_for(lambda w: "manual" in w.running(), "the manual backup running beside the three")
        # A slot frees: the urgent backup goes before the older nightly one.
        first_running = sorted(watch.running() - {"manual"})[0]
        batch.delete_namespaced_job(first_running, namespace, propagation_policy="Background")
        watch.wait_for(lambda w: w.finished("urgent"), "the urgent backup admitted and done")
        nightly = watch.jobs["nightly-3"].admitted_at
        assert nightly is None or nightly > (watch.jobs["urgent"].admitted_at or 0)
    assert watch.admitted_over_limit == []
    assert watch.peak[("three-backups-per-database", ("orders",))] == 3  # the manual one is not governed
