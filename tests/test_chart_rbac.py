"""The chart's RBAC at work: `jobgate run` as the chart's ServiceAccount gates Jobs, and can do nothing else.

The chart is installed namespaced (`watchNamespaces: [<test namespace>]`) into
a release namespace of its own; no pod runs (no image here), but its
ServiceAccount, Roles and RoleBindings exist. The operator runs locally with a
token of that ServiceAccount instead of admin. The denials are real API calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
from kubernetes.client import ApiException

from jobgate.core.policy import GROUP, PLURAL, VERSION
from localcluster.access import ClusterAccess
from localcluster.manifests import job_manifest
from tests.support import chart
from tests.support.scenario import LEASE, Scenario, assert_never_over_admitted
from tests.support.tenants import TEAM, Tenants

pytestmark = pytest.mark.cluster

SERVICE_ACCOUNT = "jobgate"  # the chart's fullname for release "jobgate"


@pytest.fixture
def release_namespace(cluster: ClusterAccess) -> Iterator[str]:
    name = cluster.create_namespace("jobgate-release")
    yield name
    cluster.delete_namespace(name)


@pytest.fixture
def chart_identity(cluster: ClusterAccess, namespace: str, release_namespace: str, crd: None) -> Iterator[Path]:
    """A kubeconfig of the chart's ServiceAccount, installed to govern `namespace`."""
    yield from installed_identity(
        cluster,
        release_namespace,
        watchNamespaces=[namespace],
        # Its Service cannot route here: the webhook may intercept nothing (a label no namespace has),
        # but exists, so that the operator keeps its matchConditions with the chart's permissions.
        webhook={"failurePolicy": "Ignore", "namespaceSelector": {"matchLabels": {"jobgate.dev/never": "x"}}},
    )


def installed_identity(cluster: ClusterAccess, release_namespace: str, **values: Any) -> Iterator[Path]:
    """The chart installed with `values` (and the session's CRDs); yields its ServiceAccount's kubeconfig."""
    values = {
        **values,
        "image": {"pullPolicy": "Never"},
        "crds": {"install": False},  # the session's, applied with kubectl
        "rbac": {"aggregateToDefaultRoles": False},
    }
    chart.install(cluster, release_namespace, values)
    try:
        yield cluster.service_account_kubeconfig(release_namespace, SERVICE_ACCOUNT)
    finally:
        chart.uninstall(cluster, release_namespace)


def test_the_operator_gates_jobs_as_the_charts_service_account(
    chart_identity: Path, scenario: Scenario, release_namespace: str
) -> None:
    configuration = f"{release_namespace}-{SERVICE_ACCOUNT}"  # the chart's webhook configuration
    operator = scenario.start_operator(
        "--lease-name",
        LEASE,
        "--webhook-configuration",
        configuration,
        kubeconfig=chart_identity,
        lease_namespace=release_namespace,
    )
    scenario.policy("exports", {"app": "export"}, ["customer"], 1)
    scenario.wait_leader_synced("exports")
    names = [f"export-{customer}-{i}" for customer in "abc" for i in range(2)]
    for name in names:
        scenario.job(name, {"app": "export", "customer": name.split("-")[1]})

    scenario.watch.wait_for(lambda w: w.finished(*names), "all 6 exports finishing", timeout=60)
    assert_never_over_admitted(scenario.watch)
    assert set(scenario.watch.peak.values()) == {1}
    # Status and events are written with the ServiceAccount's permissions too.
    status = scenario.wait_status(
        "exports", lambda s: s.get("running") == 0 and s.get("queued") == 0, "status back to 0 running, 0 queued"
    )
    assert status["observedGeneration"] == 1
    assert "exports" in scenario.wait_event("export-a-1", "Queued")
    assert "exports" in scenario.wait_event("export-a-1", "Admitted")
    # It keeps the webhook's matchConditions with the chart's permissions too.
    registrations = kubernetes.client.AdmissionregistrationV1Api(scenario.api)
    hook = registrations.read_mutating_webhook_configuration(configuration).webhooks[0]
    assert f"'{scenario.namespace}'" in hook.match_conditions[0].expression
    log = operator.log_path.read_text()
    complaints = [line for line in log.splitlines() if " WARNING " in line or " ERROR " in line]
    assert complaints == [] and "forbidden" not in log.lower(), operator.log_tail()


def status_of(call: Callable[[], Any]) -> int:
    try:
        call()
    except ApiException as e:
        return int(e.status)
    return 200


def test_the_charts_service_account_is_denied_everything_else(
    cluster: ClusterAccess, chart_identity: Path, namespace: str, release_namespace: str, crd: None
) -> None:
    client = cluster.api_client(chart_identity)
    core = kubernetes.client.CoreV1Api(client)
    batch = kubernetes.client.BatchV1Api(client)
    apps = kubernetes.client.AppsV1Api(client)
    custom = kubernetes.client.CustomObjectsApi(client)
    leases = kubernetes.client.CoordinationV1Api(client)
    admission = kubernetes.client.AdmissionregistrationV1Api(client)
    lease = {"metadata": {"name": "someone-elses"}, "spec": {"holderIdentity": "me"}}
    try:
        # The token works: what the operator needs is allowed.
        assert status_of(lambda: batch.list_namespaced_job(namespace)) == 200
        assert status_of(lambda: leases.read_namespaced_lease(LEASE, release_namespace)) == 404  # allowed, absent
        # Queued Jobs of a full queue (overflow: ReplaceOldest); the operator sends uid and version preconditions.
        assert status_of(lambda: batch.delete_namespaced_job("any", namespace)) == 404  # allowed, absent
        calls: dict[str, Callable[[], Any]] = {
            "list Secrets in its own namespace": lambda: core.list_namespaced_secret(release_namespace),
            "read a Secret in its own namespace": lambda: core.read_namespaced_secret("any", release_namespace),
            "list Secrets in the namespace it governs": lambda: core.list_namespaced_secret(namespace),
            "list Secrets cluster-wide": core.list_secret_for_all_namespaces,
            "patch its own Deployment": lambda: apps.patch_namespaced_deployment(
                SERVICE_ACCOUNT, release_namespace, {"spec": {"replicas": 2}}
            ),
            "patch a Deployment where it governs": lambda: apps.patch_namespaced_deployment(
                "any", namespace, {"spec": {"replicas": 2}}
            ),
            "list Jobs cluster-wide": batch.list_job_for_all_namespaces,
            "list Jobs in its own namespace": lambda: batch.list_namespaced_job(release_namespace),
            "list Jobs in another namespace": lambda: batch.list_namespaced_job("default"),
            "create a Job": lambda: batch.create_namespaced_job(namespace, job_manifest("j", {})),
            "delete a Job where it does not govern": lambda: batch.delete_namespaced_job("any", release_namespace),
            "change a policy's spec": lambda: custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, "any", {"spec": {"maxConcurrent": 9}}
            ),
            "create a policy": lambda: custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, {"metadata": {"name": "p"}}
            ),
            "list policies cluster-wide": lambda: custom.list_cluster_custom_object(GROUP, VERSION, PLURAL),
            "renew another Lease": lambda: leases.replace_namespaced_lease("someone-elses", release_namespace, lease),
            "create a Lease where it governs": lambda: leases.create_namespaced_lease(namespace, lease),
            "create a pod": lambda: core.create_namespaced_pod(
                namespace, {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
            ),
            "list namespaces": core.list_namespace,
            "patch another webhook configuration": lambda: admission.patch_mutating_webhook_configuration(
                "someone-elses", {"metadata": {"labels": {"a": "b"}}}
            ),
            "list webhook configurations": admission.list_mutating_webhook_configuration,
        }
        statuses = {what: status_of(call) for what, call in calls.items()}
    finally:
        client.close()
    assert {what: status for what, status in statuses.items() if status != 403} == {}


@pytest.fixture
def cluster_policy_identity(
    cluster: ClusterAccess, tenants: Tenants, release_namespace: str, crd: None
) -> Iterator[Path]:
    """The chart's ServiceAccount's kubeconfig, installed with clusterPolicies.enabled for the tenants' namespaces."""
    yield from installed_identity(
        cluster,
        release_namespace,
        watchNamespaces=tenants.namespaces,
        clusterPolicies={"enabled": True},
        webhook={"enabled": False},
    )


def test_cluster_policies_work_with_the_charts_service_account(
    cluster_policy_identity: Path, tenants: Tenants, release_namespace: str
) -> None:
    first, second, third = tenants.namespaces
    for namespace in (first, second):
        tenants.label(namespace, tenants.tag)
    operator = tenants.scenario.start_operator(
        "--lease-name",
        LEASE,
        "--cluster-policies",
        kubeconfig=cluster_policy_identity,
        lease_namespace=release_namespace,
        namespaces=tenants.others,
    )
    name = tenants.cluster_policy(f"rbac-{first}", TEAM, ["team"], 1)
    tenants.wait_synced(name)  # its status, written with the ServiceAccount's permissions
    for namespace in (first, second):
        for i in range(2):
            tenants.job(namespace, f"red-{i}", {"team": "red"}, runs_for="1s")
    tenants.watch.wait_for(lambda w: w.all_finished(4), "the 4 red Jobs finishing", timeout=90)
    # A Namespace relabeled in, read through the ServiceAccount's watch of Namespaces.
    tenants.label(third, tenants.tag)
    tenants.job(third, "red-late", {"team": "red"}, runs_for="1s")
    tenants.watch.wait_for(lambda w: w.finished(f"{third}/red-late"), "the third namespace's red Job admitted")
    assert tenants.watch.jobs[f"{third}/red-late"].admitted_at is not None
    assert_never_over_admitted(tenants.watch)
    assert {key: peak for (policy, key), peak in tenants.watch.peak.items() if policy == name} == {("red",): 1}
    log = operator.log_path.read_text()
    complaints = [line for line in log.splitlines() if " WARNING " in line or " ERROR " in line]
    assert complaints == [] and "forbidden" not in log.lower(), operator.log_tail()
