"""End to end on kind: the image from the Dockerfile, the chart installed with it, Jobs gated through the webhook.

Only with `pytest --cluster=kind`, which needs a Docker engine (the `cluster`
fixture skips without one). Here the operator is the chart's pod: the API
server reaches its webhook through the chart's Service, and its leader Lease
lives in the release namespace.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from pytest_kind import KindCluster

from jobgate.core.jobs import QUEUED_AT
from localcluster.access import ClusterAccess, ToolError
from localcluster.manifests import job_manifest
from tests.support import chart
from tests.support.scenario import Scenario, assert_never_over_admitted

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif("config.getoption('--cluster') != 'kind'", reason="end to end on kind only: --cluster=kind"),
]

IMAGE = "jobgate:e2e"
DEPLOYMENT = "deployment/jobgate"  # the chart's fullname for release "jobgate"


@pytest.fixture(scope="module")
def image(cluster: ClusterAccess, request: pytest.FixtureRequest) -> str:
    """The operator image, built from the repository and loaded into kind's nodes (no registry involved)."""
    kind_cluster: KindCluster = request.getfixturevalue("kind_cluster")  # after `cluster`: it skips without Docker
    subprocess.run(["docker", "build", "-t", IMAGE, "."], cwd=chart.ROOT, check=True)
    kind_cluster.load_docker_image(IMAGE)
    return IMAGE


@pytest.fixture
def release(cluster: ClusterAccess, image: str, namespace: str) -> Iterator[str]:
    """The chart installed into a namespace of its own, governing the test namespace; its namespace."""
    repository, tag = image.split(":")
    release_namespace = cluster.create_namespace("jobgate-e2e")
    values = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "watchNamespaces": [namespace],
        "logging": {"format": "text"},
    }
    chart.install(cluster, release_namespace, values)
    try:
        cluster.kubectl("rollout", "status", DEPLOYMENT, "--namespace", release_namespace, "--timeout=180s")
        yield release_namespace
    finally:
        with contextlib.suppress(ToolError):  # shown only when the test fails
            print(cluster.kubectl("logs", DEPLOYMENT, "--namespace", release_namespace, "--tail=100"))
        chart.uninstall(cluster, release_namespace)
        cluster.delete_namespace(release_namespace)


def real_job(name: str, labels: dict[str, str]) -> dict[str, Any]:
    """A Job that asks to run at once, whose pod sleeps 2 s on a real kubelet."""
    manifest = job_manifest(name, labels, suspend=False)
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    container.update(image="busybox:1.36", imagePullPolicy="IfNotPresent", command=["sleep", "2"])
    return manifest


def test_the_installed_chart_gates_jobs_through_its_webhook(release: str, scenario: Scenario) -> None:
    scenario.policy("e2e", {"app": "e2e"}, ["customer"], 1)
    scenario.wait_webhook({"app": "e2e", "customer": "probe"})
    names = [f"e2e-{customer}-{i}" for customer in "ab" for i in range(3)]

    for name in names:
        labels = {"app": "e2e", "customer": name.split("-")[1]}
        stored = scenario.batch.create_namespaced_job(scenario.namespace, real_job(name, labels))
        assert stored.spec.suspend is True and QUEUED_AT in stored.metadata.annotations, name

    scenario.watch.wait_for(lambda w: w.finished(*names), "all 6 Jobs finishing", timeout=300)
    assert_never_over_admitted(scenario.watch)
    assert scenario.watch.peak[("e2e", ("a",))] == scenario.watch.peak[("e2e", ("b",))] == 1
    status = scenario.wait_status("e2e", lambda s: s.get("running") == 0 and s.get("queued") == 0, "status at 0")
    assert status["conditions"][0]["reason"] == "Reconciled"
    scenario.wait_lease_holder(namespace=release)
