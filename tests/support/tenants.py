"""Three namespaces watched together, for ClusterConcurrencyPolicies: the ``tenants`` fixture.

Registered in tests/conftest.py. The operator is started over the three (`-n`
each, so that other tests' namespaces stay their own operators'); an
independent `JobWatch` over them counts a key's Jobs across the namespaces, with
the Namespaces' labels as the test sets them (`Tenants.label`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes.client import ApiException

from jobgate.core.policy import CLUSTER_KIND, CLUSTER_PLURAL, GROUP, VERSION, ConcurrencyPolicy
from localcluster.access import ClusterAccess
from localcluster.jobwatch import JobWatch
from localcluster.manifests import job_manifest, policy_manifest
from tests.support.scenario import Scenario
from tests.support.waiting import poll_until, wait_status

# A cluster policy's selector: every Job with a team label.
TEAM = {"matchExpressions": [{"key": "team", "operator": "Exists"}]}


@dataclass
class Tenants:
    """Three namespaces (the scenario's first), an independent watch over them, and cluster policies to clean up."""

    scenario: Scenario
    others: list[str]
    watch: JobWatch
    created: list[str] = field(default_factory=list)  # cluster policies: deleted at the end

    @property
    def namespaces(self) -> list[str]:
        return [self.scenario.namespace, *self.others]

    @property
    def tag(self) -> dict[str, str]:
        """A Namespace label only this test's namespaces carry, for its cluster policies to select."""
        return {"tenant-of": self.scenario.namespace}

    def start_operator(self, *extra: str) -> None:
        self.scenario.start_operator("--cluster-policies", *extra, namespaces=self.others)

    def label(self, namespace: str, labels: dict[str, str | None]) -> None:
        """Set (or with None remove) labels of a Namespace, telling the independent watch first."""
        current = dict(self.watch.namespace_labels.get(namespace, {}))
        for key, value in labels.items():
            if value is None:
                current.pop(key, None)
            else:
                current[key] = value
        self.watch.relabel(namespace, current)
        self.scenario.core.patch_namespace(namespace, {"metadata": {"labels": labels}})

    def cluster_policy(self, name: str, match: dict[str, Any], keys: list[str], limit: int, **spec: Any) -> str:
        manifest = policy_manifest(name, {}, keys, limit, **spec)
        manifest["kind"] = CLUSTER_KIND
        manifest["spec"]["selector"] = match
        manifest["spec"].setdefault("namespaceSelector", {"matchLabels": self.tag})
        self.created.append(name)
        self.scenario.custom.create_cluster_custom_object(GROUP, VERSION, CLUSTER_PLURAL, manifest)
        self.governed(name)
        return name

    def governed(self, name: str) -> ConcurrencyPolicy:
        body = self.scenario.custom.get_cluster_custom_object(GROUP, VERSION, CLUSTER_PLURAL, name)
        model = ConcurrencyPolicy.from_body(body)
        self.watch.govern(model)
        return model

    def job(self, namespace: str, name: str, labels: dict[str, str], **kwargs: Any) -> Any:
        return self.scenario.batch.create_namespaced_job(namespace, job_manifest(name, labels, **kwargs))

    def status(self, name: str) -> dict[str, Any]:
        body = self.scenario.custom.get_cluster_custom_object(GROUP, VERSION, CLUSTER_PLURAL, name)
        status: dict[str, Any] = body.get("status") or {}
        return status

    def wait_status(self, name: str, check: Any, what: str) -> dict[str, Any]:
        return wait_status(lambda: self.status(name), check, what)

    def wait_synced(self, name: str) -> None:
        """Until the leader has listed the Jobs: it writes the policy's status only after that."""
        self.wait_status(name, lambda s: bool(s.get("conditions")), f"the leader writing {name}'s status")

    def event(self, namespace: str, job: str, reason: str) -> str:
        def found() -> str:
            listed = self.scenario.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={job}")
            return next((e.message for e in listed.items if e.reason == reason), "")

        message: str = poll_until(found, f"a {reason} event on {namespace}/{job}")
        return message

    def running(self, name: str) -> bool:
        namespace, _, job = name.partition("/")
        return not self.scenario.batch.read_namespaced_job(job, namespace).spec.suspend


@pytest.fixture
def tenants(cluster: ClusterAccess, scenario: Scenario) -> Iterator[Tenants]:
    others = [cluster.create_namespace("tenant") for _ in range(2)]
    namespaces = [scenario.namespace, *others]
    labels = {n: dict(scenario.core.read_namespace(n).metadata.labels or {}) for n in namespaces}
    watch = JobWatch(scenario.api, None, among=namespaces, namespaces=labels)
    watch.__enter__()
    tenants = Tenants(scenario, others, watch)
    try:
        yield tenants
    finally:
        watch.__exit__()
        for name in tenants.created:  # cluster-scoped: nothing else deletes them
            try:
                scenario.custom.delete_cluster_custom_object(GROUP, VERSION, CLUSTER_PLURAL, name)
            except ApiException as e:
                if e.status != 404:
                    raise
        for name in others:
            cluster.delete_namespace(name)
