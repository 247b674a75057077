"""The webhook's matchConditions, evaluated by a real kube-apiserver: it calls exactly for governed Jobs.

A webhook configuration pointing at a port where nothing listens, with
`failurePolicy: Fail`, turns the API server's verdict into an answer: a
server-side dry run of a Job is refused when the condition holds (the call
fails) and passes when it does not (no call). Each namespace here carries one
case's policies; the condition is `webhook_scope()` of all of them, as the
operator writes it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import kubernetes.client
import pytest
from kubernetes.client import ApiException

from jobgate.core.match_conditions import EXPRESSION_BUDGET, Precision, webhook_scope
from jobgate.core.policy import ConcurrencyPolicy
from jobgate.core.selectors import matches
from localcluster.access import ClusterAccess
from localcluster.manifests import job_manifest
from localcluster.operator_process import free_port
from tests.support.waiting import poll_until

pytestmark = pytest.mark.cluster

SELECTORS: dict[str, list[dict[str, Any]]] = {
    "labels": [{"matchLabels": {"app": "export"}}],
    "two-labels": [{"matchLabels": {"app": "export", "tier": "gold"}}],
    "in": [{"matchExpressions": [{"key": "tier", "operator": "In", "values": ["gold", "silver"]}]}],
    "in-empty-value": [{"matchExpressions": [{"key": "tier", "operator": "In", "values": [""]}]}],
    "not-in": [{"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["gold"]}]}],
    "exists": [{"matchExpressions": [{"key": "example.com/tier", "operator": "Exists"}]}],
    "does-not-exist": [{"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}],
    "mixed": [{"matchLabels": {"app": "export"}, "matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}],
    "union": [{"matchLabels": {"app": "export"}}, {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}],
    "everything": [{}, {"matchLabels": {"app": "export"}}],
}
LABEL_SETS: list[dict[str, str]] = [
    {},
    {"app": "export"},
    {"app": "import"},
    {"app": "export", "tier": "gold"},
    {"app": "export", "tier": "bronze"},
    {"tier": "silver"},
    {"tier": ""},
    {"example.com/tier": "gold"},
    {"other": "x"},
]


def policy(namespace: str, index: int, selector: Mapping[str, Any]) -> ConcurrencyPolicy:
    return ConcurrencyPolicy.model_validate(
        {
            "namespace": namespace,
            "name": f"p{index}",
            "uid": f"{namespace}-{index}",
            "generation": 1,
            "created": 0.0,
            "spec": {"selector": selector, "keyLabels": [], "maxConcurrent": 1},
        }
    )


class Unanswered:
    """A webhook configuration with the given conditions, calling a port nobody listens on."""

    def __init__(self, cluster: ClusterAccess, name: str, namespaces: list[str]) -> None:
        self.api = kubernetes.client.AdmissionregistrationV1Api(cluster.api_client())
        self.batch = kubernetes.client.BatchV1Api(cluster.api_client())
        self.name = name
        self.hook: dict[str, Any] = {
            "name": "suspend-governed-jobs.jobgate.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": 2,
            "clientConfig": {"url": f"https://127.0.0.1:{free_port()}/suspend-governed-jobs"},
            "rules": [{"apiGroups": ["batch"], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["jobs"]}],
            "namespaceSelector": {
                "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": namespaces}]
            },
        }

    def set_conditions(self, conditions: list[Mapping[str, str]]) -> None:
        body = {"metadata": {"name": self.name}, "webhooks": [{**self.hook, "matchConditions": conditions}]}
        try:
            self.api.replace_mutating_webhook_configuration(
                self.name, {**body, "metadata": self.api.read_mutating_webhook_configuration(self.name).metadata}
            )
        except ApiException as e:
            if e.status != 404:
                raise
            self.api.create_mutating_webhook_configuration(body)

    def called(self, namespace: str, labels: Mapping[str, str]) -> bool:
        """Whether the API server calls the webhook for a new Job with these labels (a dry run)."""
        try:
            self.batch.create_namespaced_job(namespace, job_manifest("probe", dict(labels)), dry_run="All")
        except ApiException as e:
            message = json.loads(e.body)["message"]
            assert e.status == 500 and "failed calling webhook" in message, message
            return True
        return False

    def delete(self) -> None:
        self.api.delete_mutating_webhook_configuration(self.name)


@pytest.fixture
def namespaces(cluster: ClusterAccess) -> Iterator[dict[str, str]]:
    """A namespace per case of SELECTORS, by case."""
    created = {case: cluster.create_namespace(f"scope-{case}") for case in SELECTORS}
    yield created
    for name in created.values():
        cluster.delete_namespace(name)


def test_the_api_server_calls_the_webhook_exactly_for_jobs_a_policy_selects(
    cluster: ClusterAccess, namespaces: dict[str, str]
) -> None:
    policies = [
        policy(namespaces[case], i, selector)
        for case, selectors in SELECTORS.items()
        for i, selector in enumerate(selectors)
    ]
    webhook = Unanswered(cluster, f"scope-{namespaces['labels']}", list(namespaces.values()))
    webhook.set_conditions([dict(c) for c in webhook_scope(policies).conditions])
    try:
        # The API server picks the new configuration up through an informer: wait for one known answer.
        poll_until(lambda: webhook.called(namespaces["everything"], {}), "the configuration taking effect")
        wrong = []
        for case, namespace in namespaces.items():
            governing = [p for p in policies if p.namespace == namespace]
            for labels in LABEL_SETS:
                expected = any(matches(p.spec.selector, labels) for p in governing)
                if webhook.called(namespace, labels) != expected:
                    wrong.append(f"{case} {labels}: {'not ' if expected else ''}called")
        assert wrong == []
    finally:
        webhook.delete()


def test_a_condition_at_the_budget_stays_within_the_api_servers_cost_limit(
    cluster: ClusterAccess, namespace: str
) -> None:
    """The costliest shape that fits the budget, against a Job with many long labels: evaluated, not refused.

    Long In lists of long values, every term evaluated (the Job has each key,
    with a value in no list), and a Job whose labels are as long as Kubernetes
    allows. Over its cost limit the API server fails the call and, under
    `failurePolicy: Fail`, refuses the Job.
    """
    values = [f"{i:04}-{'v' * 58}" for i in range(32)]

    def selecting(count: int) -> list[ConcurrencyPolicy]:
        return [
            policy(
                namespace,
                i,
                {"matchExpressions": [{"key": f"example.com/key-{i}", "operator": "In", "values": values}]},
            )
            for i in range(count)
        ]

    count = 1
    while webhook_scope(selecting(count + 1)).precision_for(namespace) is Precision.SELECTOR:
        count += 1
    (condition,) = webhook_scope(selecting(count)).conditions
    print(f"{count} policies of {len(values)} values each: an expression of {len(condition['expression'])} characters")
    assert len(condition["expression"]) > EXPRESSION_BUDGET * 0.85
    labels = {f"example.com/key-{i}": "x" * 63 for i in range(100)}  # every key present, no value in a list
    webhook = Unanswered(cluster, f"cost-{namespace}", [namespace])
    webhook.set_conditions([dict(condition)])
    try:
        poll_until(
            lambda: webhook.called(namespace, {"example.com/key-0": values[-1]}), "the configuration taking effect"
        )
        assert not webhook.called(namespace, labels)  # evaluated to false at full cost, not failed
    finally:
        webhook.delete()
