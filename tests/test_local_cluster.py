"""The test cluster behaves like Kubernetes where jobgate depends on it: Jobs, RBAC, CRDs, webhooks."""

from __future__ import annotations

import asyncio
import base64
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import kubernetes.aio.client
import kubernetes.client
import pytest
import yaml
from kubernetes.client import ApiException

from localcluster.access import ClusterAccess
from localcluster.cluster import FAIL_ANNOTATION, ClusterStartError, LocalCluster, running_pids
from localcluster.processes import process_is_running
from tests.support.waiting import job_condition, poll_until, watch_until
from tests.support.webhook import MutatingWebhookServer

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[1]


def job_manifest(name: str, *, suspend: bool = False, fail: bool = False, backoff_limit: int = 6) -> dict[str, Any]:
    annotations = {FAIL_ANNOTATION: "true"} if fail else {}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "suspend": suspend,
            "backoffLimit": backoff_limit,
            "template": {
                "metadata": {"annotations": annotations},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "registry.example/never-pulled:1"}],
                },
            },
        },
    }


def wait_for_job(batch: kubernetes.client.BatchV1Api, namespace: str, name: str, condition: str) -> Any:
    return watch_until(
        batch.list_namespaced_job,
        namespace,
        field_selector=f"metadata.name={name}",
        until=lambda job: job_condition(job, condition) is not None,
        what=f"Job {namespace}/{name} reaching {condition}",
    )


def pods_of(core: kubernetes.client.CoreV1Api, namespace: str, job: str) -> list[Any]:
    items: list[Any] = core.list_namespaced_pod(namespace, label_selector=f"batch.kubernetes.io/job-name={job}").items
    return items


def test_a_job_runs_to_complete(cluster: ClusterAccess, namespace: str) -> None:
    batch = kubernetes.client.BatchV1Api(cluster.api_client())
    started = time.monotonic()
    batch.create_namespaced_job(namespace, job_manifest("plain"))

    job = wait_for_job(batch, namespace, "plain", "Complete")

    assert job.status.succeeded == 1
    assert time.monotonic() - started < 15, "kwok should finish a pod in about a second"
    [pod] = pods_of(kubernetes.client.CoreV1Api(cluster.api_client()), namespace, "plain")
    assert pod.status.phase == "Succeeded"
    assert pod.spec.node_name.startswith("kwok-node-")


def test_a_job_whose_pod_fails_reaches_failed(cluster: ClusterAccess, namespace: str) -> None:
    batch = kubernetes.client.BatchV1Api(cluster.api_client())
    batch.create_namespaced_job(namespace, job_manifest("doomed", fail=True, backoff_limit=0))

    job = wait_for_job(batch, namespace, "doomed", "Failed")

    assert job_condition(job, "Failed").reason == "BackoffLimitExceeded"
    assert not job.status.succeeded
    [pod] = pods_of(kubernetes.client.CoreV1Api(cluster.api_client()), namespace, "doomed")
    assert pod.status.phase == "Failed"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 1


def test_a_suspended_job_creates_no_pods_until_resumed(cluster: ClusterAccess, namespace: str) -> None:
    batch = kubernetes.client.BatchV1Api(cluster.api_client())
    core = kubernetes.client.CoreV1Api(cluster.api_client())
    batch.create_namespaced_job(namespace, job_manifest("held", suspend=True))

    # The Job controller marks the Job Suspended when it syncs it: past that point it has
    # decided, and any pod it meant to create would be there.
    wait_for_job(batch, namespace, "held", "Suspended")
    assert pods_of(core, namespace, "held") == []

    batch.patch_namespaced_job("held", namespace, {"spec": {"suspend": False}})
    job = wait_for_job(batch, namespace, "held", "Complete")

    assert job.status.succeeded == 1
    assert len(pods_of(core, namespace, "held")) == 1


def test_a_service_account_needs_a_role_to_patch_jobs(cluster: ClusterAccess, namespace: str) -> None:
    batch = kubernetes.client.BatchV1Api(cluster.api_client())
    batch.create_namespaced_job(namespace, job_manifest("guarded", suspend=True))
    as_worker = cluster.service_account_client(namespace, "worker")
    worker_batch = kubernetes.client.BatchV1Api(as_worker)
    label = {"metadata": {"labels": {"touched": "yes"}}}

    review = kubernetes.client.AuthenticationV1Api(as_worker).create_self_subject_review({})
    assert review.status.user_info.username == f"system:serviceaccount:{namespace}:worker"
    with pytest.raises(ApiException) as denied:
        worker_batch.patch_namespaced_job("guarded", namespace, label)
    assert denied.value.status == 403

    rbac = kubernetes.client.RbacAuthorizationV1Api(cluster.api_client())
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "job-patcher"},
            "rules": [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "patch"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "worker-patches-jobs"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "job-patcher"},
            "subjects": [{"kind": "ServiceAccount", "name": "worker", "namespace": namespace}],
        },
    )

    def patched() -> Any:
        # The authorizer sees new bindings through an informer: allow it a moment.
        try:
            return worker_batch.patch_namespaced_job("guarded", namespace, label)
        except ApiException as e:
            if e.status != 403:
                raise
            return None

    job = poll_until(patched, "the RoleBinding taking effect")
    assert job.metadata.labels["touched"] == "yes"
    as_worker.close()


def test_a_user_is_authenticated_with_its_groups(cluster: ClusterAccess) -> None:
    as_alice = cluster.user_client("alice", ["team-a"])

    review = kubernetes.client.AuthenticationV1Api(as_alice).create_self_subject_review({})

    assert review.status.user_info.username == "alice"
    assert "team-a" in review.status.user_info.groups
    with pytest.raises(ApiException) as denied:
        kubernetes.client.CoreV1Api(as_alice).list_namespace()
    assert denied.value.status == 403
    as_alice.close()


def test_async_clients_act_as_admin_or_as_a_service_account(cluster: ClusterAccess, namespace: str) -> None:
    async def names() -> tuple[list[str], str]:
        admin = await cluster.aio_api_client()
        reader = await cluster.aio_api_client(cluster.service_account_kubeconfig(namespace, "reader"))
        try:
            nodes = await kubernetes.aio.client.CoreV1Api(admin).list_node()
            review = await kubernetes.aio.client.AuthenticationV1Api(reader).create_self_subject_review({})
            return [n.metadata.name for n in nodes.items], review.status.user_info.username
        finally:
            await admin.close()
            await reader.close()

    nodes, reader = asyncio.run(names())

    assert nodes, "the admin lists the nodes"
    assert reader == f"system:serviceaccount:{namespace}:reader"


def test_a_custom_resource_has_a_status_subresource(cluster: ClusterAccess, namespace: str) -> None:
    group = "localcluster-test.jobgate.dev"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {"type": "object", "properties": {"size": {"type": "integer"}}},
                                "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
                            },
                        }
                    },
                }
            ],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(crd))
    try:
        cluster.kubectl("wait", "--for=condition=Established", f"crd/widgets.{group}", "--timeout=30s")
        objects = kubernetes.client.CustomObjectsApi(cluster.api_client())
        widget = {"apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 3}}
        objects.create_namespaced_custom_object(group, "v1", namespace, "widgets", widget)

        objects.patch_namespaced_custom_object_status(
            group, "v1", namespace, "widgets", "w", {"status": {"phase": "Ready"}}
        )
        # With the status subresource, writes to the main resource leave status alone.
        objects.patch_namespaced_custom_object(group, "v1", namespace, "widgets", "w", {"status": {"phase": "Lost"}})

        stored = objects.get_namespaced_custom_object(group, "v1", namespace, "widgets", "w")
        assert stored["status"] == {"phase": "Ready"}
        assert stored["spec"] == {"size": 3}
    finally:
        # CRDs are cluster-scoped: the namespace's deletion would leave it behind.
        cluster.kubectl("delete", "crd", f"widgets.{group}", "--ignore-not-found", "--wait=false")


def test_a_mutating_webhook_on_loopback_is_called(cluster: ClusterAccess, namespace: str) -> None:
    if not cluster.webhooks_on_loopback:
        pytest.skip("this cluster's apiserver cannot reach a webhook on this machine's 127.0.0.1")
    certificate, ca_bundle = cluster.webhook_certificate()

    def add_label(request: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"op": "add", "path": "/metadata/labels", "value": {"mutated-by": "test-webhook"}}]

    name = f"localcluster-test-{secrets.token_hex(3)}"
    admission = kubernetes.client.AdmissionregistrationV1Api(cluster.api_client())
    core = kubernetes.client.CoreV1Api(cluster.api_client())
    with MutatingWebhookServer(certificate, add_label) as server:
        admission.create_mutating_webhook_configuration(
            {
                "metadata": {"name": name},
                "webhooks": [
                    {
                        "name": "label.localcluster.jobgate.dev",
                        "clientConfig": {"url": server.url, "caBundle": base64.b64encode(ca_bundle).decode()},
                        "rules": [
                            {
                                "apiGroups": [""],
                                "apiVersions": ["v1"],
                                "operations": ["CREATE"],
                                "resources": ["configmaps"],
                            }
                        ],
                        # Only this test's namespace: other tests must never depend on this server.
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                        "failurePolicy": "Fail",
                        "sideEffects": "None",
                        "admissionReviewVersions": ["v1"],
                        "timeoutSeconds": 5,
                    }
                ],
            }
        )
        try:
            attempts = iter(range(1000))

            def mutated_config_map() -> Any:
                # The apiserver learns of new webhook configurations through an informer.
                created = core.create_namespaced_config_map(
                    namespace, {"metadata": {"name": f"probe-{next(attempts)}"}, "data": {"k": "v"}}
                )
                return created if (created.metadata.labels or {}).get("mutated-by") == "test-webhook" else None

            created = poll_until(mutated_config_map, "the webhook being called", interval=0.2)
        finally:
            admission.delete_mutating_webhook_configuration(name)

    assert created.data == {"k": "v"}
    seen = [r for r in server.requests if r["name"] == created.metadata.name]
    assert seen and seen[0]["namespace"] == namespace and seen[0]["operation"] == "CREATE"


# -- the harness itself (local control plane only) -------------------------


@pytest.fixture
def local_only(cluster_flavor: str) -> None:
    if cluster_flavor != "local":
        pytest.skip("tests the local control plane harness itself")


@pytest.mark.usefixtures("local_only", "cluster")
def test_a_failing_component_is_named_and_everything_is_stopped(tmp_path: Path, capsys: Any) -> None:
    broken = LocalCluster(tmp_path / "broken", extra_args={"kube-apiserver": ["--no-such-flag"]})

    with pytest.raises(ClusterStartError, match="kube-apiserver exited"):
        broken.start()

    assert "no-such-flag" in capsys.readouterr().err, "the component's log tail should be shown"
    assert all(c.exit_code() is not None for c in broken.components)
    assert not (tmp_path / "broken").exists()


@pytest.mark.usefixtures("local_only")
def test_up_leaves_a_cluster_running_until_down(cluster: ClusterAccess, tmp_path: Path) -> None:
    directory = tmp_path / "detached"

    def localcluster(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "localcluster", *args, "--dir", str(directory)],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=240,
        ).stdout

    printed = localcluster("up", "--nodes", "1")
    try:
        assert "get nodes" in printed
        pids = running_pids(directory)
        assert len(pids) == 5, "etcd, apiserver, controller-manager, scheduler and kwok outlive `up`"
        access = ClusterAccess(directory / "kubeconfig", bin_dir=cluster.bin_dir)
        assert access.kubectl("get", "nodes", "-o", "name").split() == ["node/kwok-node-0"]
        access.close()
    finally:
        localcluster("down")

    assert not directory.exists()
    assert not any(process_is_running(pid) for pid in pids)
