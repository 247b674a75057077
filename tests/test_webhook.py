"""The mutating webhook on a real API server: `jobgate run --webhook-port` behind the chart's webhook rules.

The API server calls the operator on 127.0.0.1 through the chart's own
MutatingWebhookConfiguration (rendered by helm), with only its clientConfig
turned from the chart's Service into a URL. Its scope is the test namespace.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import kubernetes.client
import pytest
from kubernetes.client import ApiException

from jobgate.core.jobs import QUEUED_AT, QUEUED_LABEL
from jobgate.service.handlers import WEBHOOK_ID
from localcluster.access import ClusterAccess
from localcluster.manifests import job_manifest
from localcluster.operator_process import OperatorProcess, free_port
from tests.support.chart import webhook_configuration_at_url
from tests.support.metrics import samples, value
from tests.support.scenario import Scenario, assert_never_over_admitted
from tests.support.waiting import watch_until

pytestmark = pytest.mark.cluster

WEBHOOK_NAME = "suspend-governed-jobs.jobgate.dev"  # charts/jobgate/templates/webhook.yaml
SCOPE_LABEL = "jobgate.dev/webhook-test"
GATED = {"app": "gated"}


@dataclass
class Webhook:
    """The operator serving the webhook, and the webhook configuration that sends it this namespace's Jobs."""

    scenario: Scenario
    args: list[str]
    operator: OperatorProcess

    def restart(self) -> None:
        """Start a new operator on the same port (the configuration names the port)."""
        self.operator = self.scenario.start_operator(*self.args)

    def answered(self, result: str) -> float:
        """How many reviews the operator answered with `result` (suspended, untouched, unavailable)."""
        return value(samples(self.operator), "jobgate_webhook_requests_total", result=result)


@pytest.fixture
def webhook(cluster: ClusterAccess, scenario: Scenario) -> Iterator[Webhook]:
    if not cluster.webhooks_on_loopback:
        pytest.skip("this cluster's API server cannot call a webhook on this machine's 127.0.0.1")
    certificate, ca_bundle = cluster.webhook_certificate()
    cert, key = scenario.tmp_path / "webhook.crt", scenario.tmp_path / "webhook.key"
    certificate.write(cert, key)
    port = free_port()
    args = ["--webhook-port", str(port), "--webhook-addr", "127.0.0.1", "--webhook-cert", str(cert)]
    args += ["--webhook-key", str(key)]
    operator = scenario.start_operator(*args)
    scenario.core.patch_namespace(scenario.namespace, {"metadata": {"labels": {SCOPE_LABEL: "true"}}})
    configuration = webhook_configuration_at_url(
        cluster.tool("helm"),
        name=f"jobgate-{scenario.namespace}",
        url=f"https://127.0.0.1:{port}/{WEBHOOK_ID}",
        ca_bundle=ca_bundle,
        values={
            # The chart's own scoping (watchNamespaces), and a namespace label as users may add.
            "watchNamespaces": [scenario.namespace],
            "webhook": {"failurePolicy": "Fail", "namespaceSelector": {"matchLabels": {SCOPE_LABEL: "true"}}},
        },
    )
    registrations = kubernetes.client.AdmissionregistrationV1Api(scenario.api)
    registrations.create_mutating_webhook_configuration(configuration)
    try:
        yield Webhook(scenario, args, operator)
    finally:
        # Cluster-scoped, and it fails every Job create in scope once the operator is gone.
        registrations.delete_mutating_webhook_configuration(configuration["metadata"]["name"])


@pytest.fixture
def outside(cluster: ClusterAccess) -> Iterator[str]:
    """A namespace outside the webhook's scope."""
    name = cluster.create_namespace("outside-webhook")
    yield name
    cluster.delete_namespace(name)


def first_version(list_function: Any, namespace: str, since: str, until: Any, what: str) -> int:
    """The resourceVersion of the first change after `since` that satisfies `until`, replayed by a watch."""
    found = watch_until(list_function, namespace, resource_version=since, until=until, what=what, timeout=10)
    return int(found.metadata.resource_version)


def test_a_governed_job_is_created_suspended_and_gets_pods_only_once_admitted(
    webhook: Webhook, scenario: Scenario
) -> None:
    scenario.policy("gate", GATED, ["customer"], 1)
    scenario.wait_leader_synced("gate")
    labels = {**GATED, "customer": "42"}
    scenario.wait_webhook(labels)
    since = scenario.batch.list_namespaced_job(scenario.namespace).metadata.resource_version

    # Both ask to run at once; the webhook queues both, the policy lets one run at a time.
    stored = [scenario.job(name, labels, suspend=False, runs_for="2s") for name in ("first", "second")]

    for job in stored:
        assert job.spec.suspend is True, job.metadata.name
        assert QUEUED_AT in job.metadata.annotations, job.metadata.annotations
        assert job.metadata.labels == {**labels, QUEUED_LABEL: "true"}
    scenario.watch.wait_for(lambda w: w.finished("first", "second"), "both Jobs finishing", timeout=60)
    for name in ("first", "second"):  # admitted: out of the queue
        assert scenario.batch.read_namespaced_job(name, scenario.namespace).metadata.labels == labels
    assert_never_over_admitted(scenario.watch)
    assert scenario.watch.peak[("gate", ("42",))] == 1
    # Resource versions order changes across objects: each Job's first pod came after its admission.
    for name in ("first", "second"):
        admitted = first_version(
            scenario.batch.list_namespaced_job,
            scenario.namespace,
            since,
            lambda job, name=name: job.metadata.name == name and not job.spec.suspend,
            f"{name} being admitted",
        )
        first_pod = first_version(
            scenario.core.list_namespaced_pod,
            scenario.namespace,
            since,
            lambda pod, name=name: (pod.metadata.labels or {}).get("batch.kubernetes.io/job-name") == name,
            f"a pod of {name}",
        )
        assert first_pod > admitted, f"{name}: pod at version {first_pod}, admitted at {admitted}"
    assert "Queued" in [reason for reason, _ in scenario.events("second")]


def created_as_stored(batch: kubernetes.client.BatchV1Api, namespace: str, manifest: dict[str, Any]) -> str:
    """Create the Job; return the stored object's JSON as the API server sent it, minus what always differs."""
    response = batch.create_namespaced_job(namespace, manifest, _preload_content=False)
    text: str = response.data.decode()
    text = text.replace(json.loads(text)["metadata"]["uid"], "<uid>").replace(namespace, "<namespace>")
    text = re.sub(r'"resourceVersion":"\d+"', '"resourceVersion":"<version>"', text)
    return re.sub(r'"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"', '"<time>"', text)


def test_an_ungoverned_job_is_stored_exactly_as_without_the_webhook(
    webhook: Webhook, scenario: Scenario, outside: str
) -> None:
    scenario.policy("gate", GATED, [], 1)
    scenario.wait_webhook(GATED)
    manifest = job_manifest("plain", {"app": "other"}, suspend=False, annotations={"team": "a"})
    untouched = webhook.answered("untouched")

    in_scope = created_as_stored(scenario.batch, scenario.namespace, manifest)
    out_of_scope = created_as_stored(scenario.batch, outside, manifest)

    assert in_scope == out_of_scope
    assert '"suspend":false' in in_scope and QUEUED_AT not in in_scope
    # The webhook was asked about the Job in scope, and only about that one.
    assert webhook.answered("untouched") == untouched + 1


def test_while_the_operator_is_down_only_jobs_in_its_scope_are_refused(
    webhook: Webhook, scenario: Scenario, outside: str
) -> None:
    scenario.policy("gate", GATED, [], 1)
    scenario.wait_webhook(GATED)
    webhook.operator.stop()
    assert webhook.operator.process is not None and webhook.operator.process.returncode == 0

    elsewhere = scenario.batch.create_namespaced_job(outside, job_manifest("elsewhere", GATED, suspend=False))
    assert elsewhere.spec.suspend is False

    with pytest.raises(ApiException) as refused:
        scenario.job("refused", GATED, suspend=False)
    assert refused.value.status == 500
    message = json.loads(refused.value.body)["message"]
    print(f"refusal while the operator is down: {message}")
    assert f'failed calling webhook "{WEBHOOK_NAME}"' in message
    assert f"/{WEBHOOK_ID}" in message and "connection refused" in message
    assert scenario.batch.list_namespaced_job(scenario.namespace).items == []

    webhook.restart()
    scenario.wait_webhook(GATED)
    assert scenario.job("accepted", GATED, suspend=False).spec.suspend is True
    scenario.watch.wait_for(lambda w: w.finished("accepted"), "the Job created after the restart finishing")
