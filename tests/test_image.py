"""The operator image, built as `make image` builds it, running the chart's own Deployment on the local control plane.

No kubelet and no Docker here: the chart is rendered by helm, its ServiceAccount,
RBAC and webhook Secret are applied, and its Deployment's container is run from
the image by buildah as a kubelet would run it (tests/support/container.py): the
chart's args over the image's entrypoint, its env, user, read-only root
filesystem, and the Secret and ServiceAccount token mounted where the chart
mounts them. The API server cannot resolve the chart's Service here, so the test
calls the webhook as the API server would through it: TLS to the Service's DNS
name, checked against the webhook configuration's caBundle, at the
configuration's path, on the port the Service targets. A mismatch between the
chart, the image and the code fails here, not in a user's cluster.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonpatch
import kubernetes.client
import pytest
import yaml

from jobgate.core.jobs import QUEUED_AT, JobView
from localcluster.access import ClusterAccess
from localcluster.image import Buildah, Built, ImageError, build_image, buildah_available, package_version
from localcluster.manifests import job_manifest
from localcluster.operator_process import free_port
from tests.support import chart
from tests.support.container import PodContainer, PodContext
from tests.support.scenario import Scenario, assert_never_over_admitted

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        not buildah_available(),
        reason="buildah is not installed (`apt-get install buildah`; .ci/run installs it): "
        "the operator image cannot be built and run without Docker",
    ),
    # A cold build makes the Debian base and installs every locked package: minutes on two cores.
    pytest.mark.timeout(1800),
]

CONTAINER = "jobgate"  # the chart's container name
# Applied from the chart as they are; the Deployment runs here instead, and the Service and the
# webhook configuration point at a Service that the API server cannot reach on this machine.
NOT_APPLIED = {"Deployment", "Service", "MutatingWebhookConfiguration", "PodDisruptionBudget"}


@pytest.fixture(scope="module")
def image() -> Built:
    """The image from `make image`'s code path, reused as it is when its inputs did not change."""
    try:
        return build_image(engine="buildah", write_archives=False)
    except ImageError as e:
        pytest.fail(f"the image did not build: {e}", pytrace=False)


class ImageShell:
    """Commands in one throwaway container of the image, as the image's user (a vfs container is a full copy)."""

    def __init__(self, built: Built) -> None:
        self.buildah = Buildah()
        self.name = self.buildah.run("from", built.reference)

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        run = self.buildah.command("run", "--isolation", "chroot", self.name, "--", *command)
        return subprocess.run(run, capture_output=True, text=True, check=False)

    def remove(self) -> None:
        subprocess.run(self.buildah.command("rm", self.name), capture_output=True, check=False)


def test_the_image_is_the_package_version_without_build_tools(image: Built) -> None:
    version = package_version()
    inspected = Buildah().image(image.reference)
    assert inspected is not None
    labels = inspected["OCIv1"]["config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == version, "the Dockerfile's JOBGATE_VERSION lags pyproject"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert "org.opencontainers.image.source" in labels
    shell = ImageShell(image)
    try:
        assert shell.run("jobgate", "--version").stdout.strip() == f"jobgate {version}"
        # No compiler, no package installer, nothing of the build stage: only /opt/jobgate came over.
        found = shell.run(
            "sh", "-c", "for t in pip pip3 gcc cc c++ make; do command -v $t; done; ls -A /opt; ls -d /src"
        )
        assert found.stdout.split() == ["jobgate"], found.stdout
        assert "No module named pip" in shell.run("python3", "-m", "pip", "--version").stderr
        assert shell.run("id", "-u").stdout.strip() == "65532"
    finally:
        shell.remove()


@pytest.fixture
def release_namespace(cluster: ClusterAccess) -> Iterator[str]:
    name = cluster.create_namespace("jobgate-image")
    yield name
    cluster.delete_namespace(name)


def apiserver_address(kubeconfig: Path) -> tuple[str, int]:
    config = yaml.safe_load(kubeconfig.read_text())
    current = next(c["context"] for c in config["contexts"] if c["name"] == config["current-context"])
    server = next(c["cluster"]["server"] for c in config["clusters"] if c["name"] == current["cluster"])
    url = urlsplit(server)
    assert url.hostname is not None and url.port is not None, server
    return url.hostname, url.port


@pytest.fixture
def pod(
    cluster: ClusterAccess, image: Built, namespace: str, release_namespace: str, scenario: Scenario, tmp_path: Path
) -> Iterator[tuple[PodContainer, list[chart.Manifest]]]:
    """The chart's Deployment, its container running from the image; and every object the chart rendered."""
    host, port = apiserver_address(cluster.kubeconfig)
    if not host.startswith("127."):
        pytest.skip("the container reaches the API server over the host network: needs an API server on 127.0.0.1")
    values = {
        "watchNamespaces": [namespace],
        # Ports of their own: this machine is shared, and the chart wires each value to a flag and a containerPort.
        "metrics": {"port": free_port()},
        "health": {"port": free_port()},
        "webhook": {"port": free_port()},
        # Cluster-wide and owned by no release once applied here: the session's CRD stays the one
        # tests/support/crd.py applied, and no role is left for a later `helm install` to collide with.
        "crds": {"install": False},
        "rbac": {"aggregateToDefaultRoles": False},
    }
    rendered = chart.render(cluster.tool("helm"), values, namespace=release_namespace)
    applied = [m for m in rendered if m["kind"] not in NOT_APPLIED]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(applied))
    (deployment,) = [m for m in rendered if m["kind"] == "Deployment"]
    pod_spec = deployment["spec"]["template"]["spec"]

    # What the kubelet fetches for the pod: its Secrets, a token of its ServiceAccount, the cluster's CA.
    core = kubernetes.client.CoreV1Api(cluster.api_client())
    secret_names = [v["secret"]["secretName"] for v in pod_spec.get("volumes", []) if "secret" in v]
    secrets = {
        name: {
            key: base64.b64decode(value)
            for key, value in core.read_namespaced_secret(name, release_namespace).data.items()
        }
        for name in secret_names
    }
    request = kubernetes.client.AuthenticationV1TokenRequest(spec=kubernetes.client.V1TokenRequestSpec(audiences=[]))
    token = core.create_namespaced_service_account_token(pod_spec["serviceAccountName"], release_namespace, request)
    root_ca = core.read_namespaced_config_map("kube-root-ca.crt", release_namespace).data["ca.crt"]
    context = PodContext(
        namespace=release_namespace,
        secrets=secrets,
        service_account={
            "token": token.status.token.encode(),
            "ca.crt": root_ca.encode(),
            "namespace": release_namespace.encode(),
        },
        apiserver_host=host,
        apiserver_port=port,
    )
    container = PodContainer(Buildah(), image.reference, pod_spec, CONTAINER, context, tmp_path)
    try:
        yield container.start(), rendered
    finally:
        container.stop()
        # pytest shows captured output only for failed tests: there, this log explains.
        print(f"--- container log {container.log_path} ---\n{container.log_tail(100)}")


def served_certificate(port: int, server_name: str, ca_bundle: bytes) -> bytes:
    """The certificate served on 127.0.0.1:port, verified for ``server_name`` against ``ca_bundle``."""
    context = ssl.create_default_context(cadata=ca_bundle.decode())
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        certificate = tls.getpeercert(binary_form=True)
    assert certificate is not None
    return certificate


def admission_review(
    port: int, server_name: str, ca_bundle: bytes, path: str, job: dict[str, Any], namespace: str
) -> dict[str, Any]:
    """POST an AdmissionReview for creating ``job``, as the API server does through the webhook's Service."""
    group_version = {"group": "batch", "version": "v1"}
    uid = str(uuid.uuid4())
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {**group_version, "kind": "Job"},
            "resource": {**group_version, "resource": "jobs"},
            "requestKind": {**group_version, "kind": "Job"},
            "requestResource": {**group_version, "resource": "jobs"},
            "name": job["metadata"]["name"],
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]},
            "object": {**job, "metadata": {**job["metadata"], "namespace": namespace}},
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }
    context = ssl.create_default_context(cadata=ca_bundle.decode())
    connection = http.client.HTTPConnection(server_name, port, timeout=10)
    connection.sock = context.wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname=server_name
    )
    try:
        connection.request("POST", path, json.dumps(review), {"Content-Type": "application/json"})
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == 200, body
    answer: dict[str, Any] = json.loads(body)["response"]
    assert answer["uid"] == uid and answer["allowed"], answer
    return answer


def follow(scenario: Scenario) -> list[str]:
    """A line per change of a Job's state, as the test's own watch saw it: shown when the test fails (or with -s)."""
    lines: list[str] = []
    started = time.monotonic()

    def state(job: JobView | None) -> str:
        return "-" if job is None else "finished" if job.finished else "running" if job.running else "queued"

    def record(seen: float, before: JobView | None, after: JobView | None) -> None:
        if after is not None and state(before) != state(after):
            running = ", ".join(sorted(scenario.watch.running())) or "none"
            lines.append(f"{seen - started:5.1f}s  {after.name:<13} {state(after):<8}  running: {running}")

    scenario.watch.listeners.append(record)
    return lines


def test_the_charts_deployment_runs_from_the_image_serves_the_webhook_and_gates_jobs(
    pod: tuple[PodContainer, list[chart.Manifest]], scenario: Scenario, release_namespace: str
) -> None:
    container, rendered = pod
    started_in = container.wait_until("startupProbe")
    container.wait_until("readinessProbe")
    print(f"the container passed its startup probe in {started_in:.1f}s")

    # The webhook: served on the port the Service targets, with the Secret's certificate, valid for the Service.
    (service,) = [m for m in rendered if m["kind"] == "Service"]
    (webhook_port,) = [p["targetPort"] for p in service["spec"]["ports"] if p["port"] == 443]
    (configuration,) = [m for m in rendered if m["kind"] == "MutatingWebhookConfiguration"]
    (hook,) = configuration["webhooks"]
    client_config = hook["clientConfig"]
    assert client_config["service"]["name"] == service["metadata"]["name"]
    server_name = f"{service['metadata']['name']}.{release_namespace}.svc"  # the name the API server connects to
    ca_bundle = base64.b64decode(client_config["caBundle"])
    (secret,) = [m for m in rendered if m["kind"] == "Secret"]
    secret_certificate = ssl.PEM_cert_to_DER_cert(base64.b64decode(secret["data"]["tls.crt"]).decode())
    port = container.port(webhook_port)
    assert served_certificate(port, server_name, ca_bundle) == secret_certificate

    # Jobs as the API server stores them after the webhook: created to run at once, queued by jobgate.
    transcript = follow(scenario)
    scenario.policy("one-at-a-time", {"app": "image"}, [], 1)
    scenario.wait_leader_synced("one-at-a-time")
    names = [f"from-image-{i}" for i in range(3)]
    for name in names:
        manifest = job_manifest(name, {"app": "image"}, suspend=False, runs_for="2s")
        answer = admission_review(
            port, server_name, ca_bundle, client_config["service"]["path"], manifest, scenario.namespace
        )
        assert answer.get("patchType") == "JSONPatch", answer
        mutated = jsonpatch.apply_patch(manifest, json.loads(base64.b64decode(answer["patch"])))
        assert mutated["spec"]["suspend"] is True and QUEUED_AT in mutated["metadata"]["annotations"], mutated
        scenario.batch.create_namespaced_job(scenario.namespace, mutated)

    scenario.watch.wait_for(lambda w: w.finished(*names), "the three Jobs finishing, one at a time", timeout=90)
    print("\n".join(transcript))
    assert_never_over_admitted(scenario.watch)
    assert scenario.watch.peak[("one-at-a-time", ())] == 1
    assert "Admitted" in [reason for reason, _ in scenario.events(names[-1])]
    # The leader Lease is in the pod's own namespace (POD_NAMESPACE), under the chart's lease name.
    (deployment,) = [m for m in rendered if m["kind"] == "Deployment"]
    (args,) = [c["args"] for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == CONTAINER]
    lease_name = next(a.split("=", 1)[1] for a in args if a.startswith("--lease-name="))
    leases = kubernetes.client.CoordinationV1Api(scenario.api)
    assert leases.read_namespaced_lease(lease_name, release_namespace).spec.holder_identity
    log = container.log_path.read_text(errors="replace")
    assert "Traceback" not in log, container.log_tail()

    # Stopped as a kubelet stops it: SIGTERM, then a clean exit that hands the Lease back within the grace period.
    assert container.stop() == 0, container.log_tail()
    assert not leases.read_namespaced_lease(lease_name, release_namespace).spec.holder_identity
