"""An invalid ConcurrencyPolicy is refused at `kubectl apply`, with the field named."""

from __future__ import annotations

import pytest
import yaml

from localcluster.access import ClusterAccess, ToolError

pytestmark = pytest.mark.cluster


def manifest(spec: dict[str, object]) -> str:
    return yaml.safe_dump(
        {"apiVersion": "jobgate.dev/v1alpha1", "kind": "ConcurrencyPolicy", "metadata": {"name": "bad"}, "spec": spec}
    )


SELECTOR = {"matchLabels": {"app": "export"}}
KEYED = {"selector": SELECTOR, "keyLabels": ["customer"], "maxConcurrent": 1}

INVALID = {
    "negative maxConcurrent": (
        {"selector": SELECTOR, "maxConcurrent": -1},
        "spec.maxConcurrent: Invalid value: -1: spec.maxConcurrent in body should be greater than or equal to 0",
    ),
    "maxConcurrent not an integer": (
        {"selector": SELECTOR, "maxConcurrent": "two"},
        'spec.maxConcurrent: Invalid value: "string": spec.maxConcurrent in body must be of type integer',
    ),
    "fractional maxConcurrent": ({"selector": SELECTOR, "maxConcurrent": 1.5}, "spec.maxConcurrent"),
    "missing selector": ({"maxConcurrent": 1}, "spec.selector: Required value"),
    "missing maxConcurrent": ({"selector": SELECTOR}, "spec.maxConcurrent: Required value"),
    "bad operator": (
        {"selector": {"matchExpressions": [{"key": "app", "operator": "Near"}]}, "maxConcurrent": 1},
        'spec.selector.matchExpressions[0].operator: Unsupported value: "Near"',
    ),
    "values with Exists": (
        {"selector": {"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]}, "maxConcurrent": 1},
        "spec.selector.matchExpressions[0]: Invalid value: values must be empty for Exists",
    ),
    "In without values": (
        {"selector": {"matchExpressions": [{"key": "app", "operator": "In"}]}, "maxConcurrent": 1},
        "non-empty for In and NotIn",
    ),
    "invalid matchLabels key": (
        {"selector": {"matchLabels": {"not a key!": "x"}}, "maxConcurrent": 1},
        "spec.selector.matchLabels: Invalid value",
    ),
    "invalid keyLabels entry": (
        {"selector": SELECTOR, "keyLabels": ["customer id"], "maxConcurrent": 1},
        'spec.keyLabels[0]: Invalid value: "customer id": must be a valid label key',
    ),
    "duplicate keyLabels": (
        {"selector": SELECTOR, "keyLabels": ["customer", "customer"], "maxConcurrent": 1},
        'spec.keyLabels[1]: Duplicate value: "customer"',
    ),
    "unknown field": ({"selector": SELECTOR, "maxConcurent": 1}, 'unknown field "spec.maxConcurent"'),
    # Per-key limits and bounded queues (issue 12).
    "per-key limit on another label": (
        {**KEYED, "limits": [{"key": {"region": "eu"}, "maxConcurrent": 2}]},
        "spec.limits: Invalid value: every key in limits must name exactly the labels of keyLabels, each with a value",
    ),
    "per-key limit lacking a key label": (
        {**KEYED, "keyLabels": ["customer", "region"], "limits": [{"key": {"customer": "a"}, "maxConcurrent": 2}]},
        "every key in limits must name exactly the labels of keyLabels",
    ),
    "per-key limit without keyLabels": (
        {"selector": SELECTOR, "maxConcurrent": 1, "limits": [{"key": {"customer": "a"}, "maxConcurrent": 2}]},
        "every key in limits must name exactly the labels of keyLabels",
    ),
    "the same key twice": (
        {**KEYED, "limits": [{"key": {"customer": "a"}, "maxConcurrent": n} for n in (2, 3)]},
        "spec.limits: Invalid value: each key may appear only once in limits",
    ),
    "negative per-key limit": (
        {**KEYED, "limits": [{"key": {"customer": "a"}, "maxConcurrent": -1}]},
        "spec.limits[0].maxConcurrent: Invalid value: -1: spec.limits[0].maxConcurrent in body should be "
        "greater than or equal to 0",
    ),
    "per-key limit without maxConcurrent": (
        {**KEYED, "limits": [{"key": {"customer": "a"}}]},
        "spec.limits[0].maxConcurrent: Required value",
    ),
    "invalid key value": (
        {**KEYED, "limits": [{"key": {"customer": "a b"}, "maxConcurrent": 2}]},
        'spec.limits[0].key.customer: Invalid value: "a b": spec.limits[0].key.customer in body should match',
    ),
    "negative maxQueued": (
        {**KEYED, "maxQueued": -1},
        "spec.maxQueued: Invalid value: -1: spec.maxQueued in body should be greater than or equal to 0",
    ),
    "unknown overflow": (
        {**KEYED, "maxQueued": 1, "overflow": "DropNewest"},
        'spec.overflow: Unsupported value: "DropNewest": supported values: "Reject", "ReplaceOldest"',
    ),
    "overflow without maxQueued": (
        {**KEYED, "overflow": "ReplaceOldest"},
        "spec.overflow: Required value: overflow applies to a bounded queue: set maxQueued too",
    ),
}


@pytest.mark.parametrize("case", list(INVALID), ids=list(INVALID))
def test_an_invalid_policy_is_refused_with_the_field_named(
    cluster: ClusterAccess, namespace: str, crd: None, case: str
) -> None:
    spec, message = INVALID[case]
    with pytest.raises(ToolError) as refused:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(spec))
    assert message in str(refused.value)
    assert "bad" not in cluster.kubectl("get", "conpol", "-n", namespace, "-o", "name")


def test_a_valid_policy_is_accepted_and_shown_with_its_columns(
    cluster: ClusterAccess, namespace: str, crd: None
) -> None:
    spec = {"selector": SELECTOR, "keyLabels": ["customer-id", "example.com/tier"], "maxConcurrent": 1}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(spec))
    header = cluster.kubectl("get", "conpol", "-n", namespace).splitlines()[0].split()
    assert header == ["NAME", "KEY", "LABELS", "MAX", "RUNNING", "QUEUED", "AGE"]
    explained = cluster.kubectl("explain", "conpol.spec")
    for field in ("selector", "keyLabels", "maxConcurrent", "limits", "maxQueued", "overflow"):
        assert field in explained


def test_policy_shapes_are_accepted_and_shown_wide(cluster: ClusterAccess, namespace: str, crd: None) -> None:
    spec = {
        "selector": SELECTOR,
        "keyLabels": ["customer", "region"],
        "maxConcurrent": 1,
        "limits": [
            {"key": {"customer": "acme", "region": "eu"}, "maxConcurrent": 5},
            {"key": {"customer": "acme", "region": ""}, "maxConcurrent": 0},  # Jobs without a region label
        ],
        "maxQueued": 10,
        "overflow": "ReplaceOldest",
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(spec))
    header, row = cluster.kubectl("get", "conpol", "-n", namespace, "-o", "wide").splitlines()
    assert header.split()[-4:] == ["AGE", "MAX", "QUEUED", "OVERFLOW"]
    assert row.split()[-2:] == ["10", "ReplaceOldest"]


# --- ClusterConcurrencyPolicy: the same spec, plus namespaceSelector ----------------------------------

TENANTS = {"matchLabels": {"tenant": "true"}}
CLUSTER_INVALID = {
    "missing namespaceSelector": ({"selector": SELECTOR, "maxConcurrent": 1}, "spec.namespaceSelector: Required value"),
    "invalid namespaceSelector key": (
        {"selector": SELECTOR, "namespaceSelector": {"matchLabels": {"not a key!": "x"}}, "maxConcurrent": 1},
        "spec.namespaceSelector.matchLabels: Invalid value",
    ),
    "namespaceSelector In without values": (
        {"selector": SELECTOR, "namespaceSelector": {"matchExpressions": [{"key": "t", "operator": "In"}]}}
        | {"maxConcurrent": 1},
        "spec.namespaceSelector.matchExpressions[0]: Invalid value",
    ),
    "per-key limit on another label": (
        {**KEYED, "namespaceSelector": TENANTS, "limits": [{"key": {"region": "eu"}, "maxConcurrent": 2}]},
        "spec.limits: Invalid value: every key in limits must name exactly the labels of keyLabels, each with a value",
    ),
}


def cluster_manifest(name: str, spec: dict[str, object]) -> str:
    return yaml.safe_dump(
        {"apiVersion": "jobgate.dev/v1alpha1", "kind": "ClusterConcurrencyPolicy", "metadata": {"name": name}}
        | {"spec": spec}
    )


@pytest.mark.parametrize("case", list(CLUSTER_INVALID), ids=list(CLUSTER_INVALID))
def test_an_invalid_cluster_policy_is_refused_with_the_field_named(
    cluster: ClusterAccess, namespace: str, crd: None, case: str
) -> None:
    spec, message = CLUSTER_INVALID[case]
    with pytest.raises(ToolError) as refused:
        cluster.kubectl("apply", "-f", "-", input=cluster_manifest(f"bad-{namespace}", spec))
    assert message in str(refused.value)


def test_a_cluster_policy_keyed_on_the_namespace_is_accepted_cluster_scoped(
    cluster: ClusterAccess, namespace: str, crd: None
) -> None:
    name = f"per-namespace-{namespace}"
    spec = {
        "selector": SELECTOR,
        "namespaceSelector": {},
        "keyLabels": ["team", "jobgate.dev/namespace"],
        "maxConcurrent": 1,
        "limits": [{"key": {"team": "red", "jobgate.dev/namespace": namespace}, "maxConcurrent": 2}],
    }
    cluster.kubectl("apply", "-f", "-", input=cluster_manifest(name, spec))
    try:
        header, row = cluster.kubectl("get", "cconpol", name).splitlines()
        assert header.split() == ["NAME", "KEY", "LABELS", "MAX", "RUNNING", "QUEUED", "AGE"]
        assert row.split()[1:3] == ['["team","jobgate.dev/namespace"]', "1"]
        assert "namespaceSelector" in cluster.kubectl("explain", "cconpol.spec")
    finally:
        cluster.kubectl("delete", "cconpol", name)
