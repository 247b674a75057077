"""The mutating webhook on a real API server: `jobgate run --webhook-port` behind the chart's webhook rules.

The API server calls the operator on 127.0.0.1 through the chart's own
MutatingWebhookConfiguration (rendered by helm), with only its clientConfig
turned from the chart's Service into a URL. Its scope is the namespaces that
carry this test's label; within it, the operator keeps the matchConditions
(`--webhook-configuration`), as the chart has it do.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import kubernetes.client
import kubernetes.watch
import pytest
from kubernetes.client import ApiException

from jobgate.core.jobs import QUEUED_AT, QUEUED_LABEL
from jobgate.core.match_conditions import CONDITION_NAME
from jobgate.core.policy import GROUP, PLURAL, VERSION
from jobgate.service.handlers import WEBHOOK_ID
from localcluster.access import ClusterAccess
from localcluster.certs import CertificateAuthority
from localcluster.manifests import job_manifest, policy_manifest
from localcluster.operator_process import OperatorProcess, free_port
from tests.support.chart import webhook_configuration_at_url
from tests.support.metrics import samples, value
from tests.support.scenario import Scenario, assert_never_over_admitted
from tests.support.waiting import poll_until, watch_until
from tests.support.webhook import MountedSecret, MutatingWebhookServer

pytestmark = pytest.mark.cluster

WEBHOOK_NAME = "suspend-governed-jobs.jobgate.dev"  # charts/jobgate/templates/webhook.yaml
SCOPE_LABEL = "jobgate.dev/webhook-test"
GATED = {"app": "gated"}
# The acceptance bound: a policy change reaches the API server's view of the webhook this fast.
SCOPE_SECONDS = 2.0


@dataclass
class Webhook:
    """The operator serving the webhook, and the webhook configuration that sends it this scope's Jobs."""

    scenario: Scenario
    args: list[str]
    operator: OperatorProcess
    configuration: str
    registrations: kubernetes.client.AdmissionregistrationV1Api
    labeled: list[str] = field(default_factory=list)  # namespaces given the scope label
    namespaces: list[str] = field(default_factory=list)  # watched besides the scenario's

    def restart(self) -> None:
        """Start a new operator on the same port (the configuration names the port)."""
        self.operator = self.scenario.start_operator(*self.args, namespaces=self.namespaces)

    def answered(self, result: str) -> float:
        """How many reviews the operator answered with `result` (suspended, untouched, unavailable)."""
        return value(samples(self.operator), "jobgate_webhook_requests_total", result=result)

    def put_in_scope(self, namespace: str) -> None:
        """Let the chart's namespaceSelector take `namespace` (the matchConditions still decide)."""
        self.scenario.core.patch_namespace(namespace, {"metadata": {"labels": {SCOPE_LABEL: self.scenario.namespace}}})
        self.labeled.append(namespace)

    def expression(self) -> str:
        (hook,) = self.registrations.read_mutating_webhook_configuration(self.configuration).webhooks
        conditions = hook.match_conditions or []
        return "".join(c.expression for c in conditions if c.name == CONDITION_NAME)

    def wait_expression(self, check: Callable[[str], bool], what: str, timeout: float = 30) -> float:
        """Seconds until the configuration's condition satisfies `check`, seen by a watch started now."""
        started = time.monotonic()
        watch_until(
            self.registrations.list_mutating_webhook_configuration,
            field_selector=f"metadata.name={self.configuration}",
            until=lambda c: check("".join(m.expression for m in c.webhooks[0].match_conditions or [])),
            what=what,
            timeout=timeout,
        )
        return time.monotonic() - started


@pytest.fixture
def webhook(cluster: ClusterAccess, scenario: Scenario) -> Iterator[Webhook]:
    if not cluster.webhooks_on_loopback:
        pytest.skip("this cluster's API server cannot call a webhook on this machine's 127.0.0.1")
    certificate, ca_bundle = cluster.webhook_certificate()
    cert, key = scenario.tmp_path / "webhook.crt", scenario.tmp_path / "webhook.key"
    certificate.write(cert, key)
    webhook = _configured_webhook(
        cluster, scenario, ca_bundle, ["--webhook-cert", str(cert), "--webhook-key", str(key)]
    )
    try:
        yield webhook
    finally:
        _remove(webhook)


def _configured_webhook(
    cluster: ClusterAccess,
    scenario: Scenario,
    ca_bundle: bytes,
    tls_args: list[str],
    *,
    namespaces: Sequence[str] = (),
    extra: Sequence[str] = (),
) -> Webhook:
    """The chart's webhook configuration for every namespace labeled for this test, and the operator.

    `namespaces`: more namespaces for the operator to watch, put in the webhook's scope too.
    """
    port = free_port()
    configuration = webhook_configuration_at_url(
        cluster.tool("helm"),
        name=f"jobgate-{scenario.namespace}",
        url=f"https://127.0.0.1:{port}/{WEBHOOK_ID}",
        ca_bundle=ca_bundle,
        values={
            # The chart's own scoping (every namespace but kube-system and its own), narrowed to the
            # namespaces a test labels, as users may.
            "webhook": {
                "failurePolicy": "Fail",
                "namespaceSelector": {"matchLabels": {SCOPE_LABEL: scenario.namespace}},
            },
        },
    )
    registrations = kubernetes.client.AdmissionregistrationV1Api(scenario.api)
    registrations.create_mutating_webhook_configuration(configuration)
    name = configuration["metadata"]["name"]
    args = ["--webhook-port", str(port), "--webhook-addr", "127.0.0.1", *tls_args, "--webhook-configuration", name]
    args += extra
    webhook = Webhook(scenario, args, None, name, registrations, namespaces=list(namespaces))  # type: ignore[arg-type]
    for namespace in [scenario.namespace, *namespaces]:
        webhook.put_in_scope(namespace)
    try:
        webhook.operator = scenario.start_operator(*args, namespaces=namespaces)
    except BaseException:
        _remove(webhook)
        raise
    return webhook


def _remove(webhook: Webhook) -> None:
    # Cluster-scoped, and it fails every governed Job create in scope once the operator is gone.
    webhook.registrations.delete_mutating_webhook_configuration(webhook.configuration)
    for namespace in webhook.labeled:
        webhook.scenario.core.patch_namespace(namespace, {"metadata": {"labels": {SCOPE_LABEL: None}}})


@pytest.fixture
def outside(cluster: ClusterAccess) -> Iterator[str]:
    """A namespace without policies."""
    name = cluster.create_namespace("no-policies")
    yield name
    cluster.delete_namespace(name)


def selects(namespace: str) -> Callable[[str], bool]:
    return lambda expression: f"'{namespace}'" in expression


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
    webhook.wait_expression(selects(scenario.namespace), "the policy in the webhook's matchConditions")
    manifest = job_manifest("plain", {"app": "other"}, suspend=False, annotations={"team": "a"})
    untouched = webhook.answered("untouched")

    in_scope = created_as_stored(scenario.batch, scenario.namespace, manifest)
    out_of_scope = created_as_stored(scenario.batch, outside, manifest)

    assert in_scope == out_of_scope
    assert '"suspend":false' in in_scope and QUEUED_AT not in in_scope
    # The API server did not even ask: its matchConditions let only governed Jobs through.
    assert webhook.answered("untouched") == untouched


def test_while_the_operator_is_down_only_governed_jobs_are_refused(
    webhook: Webhook, scenario: Scenario, outside: str
) -> None:
    # Every namespace here is in the chart's namespaceSelector but kube-system, which the chart
    # always leaves out: what keeps the others' Jobs away from the webhook is the matchConditions.
    for namespace in (outside, "kube-system"):
        webhook.put_in_scope(namespace)
    scenario.policy("gate", GATED, [], 1)
    scenario.wait_webhook(GATED)
    webhook.wait_expression(selects(scenario.namespace), "the policy in the webhook's matchConditions")
    webhook.operator.stop()
    assert webhook.operator.process is not None and webhook.operator.process.returncode == 0

    ungoverned = job_manifest("ungoverned", {"app": "other"}, suspend=False)
    assert scenario.batch.create_namespaced_job(scenario.namespace, ungoverned).spec.suspend is False
    assert scenario.batch.create_namespaced_job(outside, job_manifest("elsewhere", GATED, suspend=False))
    system = scenario.batch.create_namespaced_job("kube-system", job_manifest(f"jobgate-{scenario.namespace}", GATED))
    scenario.batch.delete_namespaced_job(system.metadata.name, "kube-system", propagation_policy="Background")

    with pytest.raises(ApiException) as refused:
        scenario.job("refused", GATED, suspend=False)
    assert refused.value.status == 500
    message = json.loads(refused.value.body)["message"]
    print(f"refusal while the operator is down: {message}")
    assert f'failed calling webhook "{WEBHOOK_NAME}"' in message
    assert f"/{WEBHOOK_ID}" in message and "connection refused" in message
    assert [j.metadata.name for j in scenario.batch.list_namespaced_job(scenario.namespace).items] == ["ungoverned"]

    webhook.restart()
    scenario.wait_webhook(GATED)
    assert scenario.job("accepted", GATED, suspend=False).spec.suspend is True
    scenario.watch.wait_for(lambda w: w.finished("accepted"), "the Job created after the restart finishing")


def test_policy_changes_reach_the_match_conditions_within_seconds(webhook: Webhook, scenario: Scenario) -> None:
    custom = scenario.custom
    webhook.wait_expression(lambda e: e == "false", "the operator writing the conditions of no policy")

    scenario.policy("exports", {"app": "export"}, [], 1)
    created = webhook.wait_expression(lambda e: "'export'" in e, "the new policy in the matchConditions")
    scoped = scenario.wait_status("exports", lambda s: len(s.get("conditions", [])) == 2, "the WebhookScoped condition")
    assert [(c["type"], c["status"], c["reason"]) for c in scoped["conditions"]] == [
        ("Ready", "True", "Reconciled"),
        ("WebhookScoped", "True", "Selector"),
    ]
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, scenario.namespace, PLURAL, "exports", {"spec": {"selector": {"matchLabels": {"app": "sync"}}}}
    )
    changed = webhook.wait_expression(lambda e: "'sync'" in e and "'export'" not in e, "the new selector")
    custom.delete_namespaced_custom_object(GROUP, VERSION, scenario.namespace, PLURAL, "exports")
    deleted = webhook.wait_expression(lambda e: e == "false", "the deleted policy gone from the matchConditions")

    print(f"policy to matchConditions: created {created:.3f}s, selector changed {changed:.3f}s, deleted {deleted:.3f}s")
    assert max(created, changed, deleted) < SCOPE_SECONDS
    # A watch started just before each change: the figures include its start, so they are upper bounds.
    assert scenario.job("sync-1", {"app": "sync"}, suspend=False).spec.suspend is False  # no policy left


def test_jobs_created_before_the_conditions_follow_a_new_policy_are_suspended_again(
    webhook: Webhook, scenario: Scenario
) -> None:
    # The gap, made wide: the policy appears while no operator keeps the conditions.
    webhook.wait_expression(lambda e: e == "false", "the operator writing the conditions of no policy")
    webhook.operator.stop()
    policy = scenario.policy("late", {"app": "late"}, [], 1)
    # The backstop counts Jobs created in the policy's own second (timestamps have whole seconds) as
    # older than the policy, so those it leaves alone: create these strictly after it.
    poll_until(lambda: time.time() >= policy.created + 1, "the second after the policy's creation")
    names = [f"late-{i}" for i in range(3)]
    stored = [scenario.job(name, {"app": "late"}, suspend=False, runs_for="3s") for name in names]
    assert [job.spec.suspend for job in stored] == [False, False, False]  # the webhook was not called

    webhook.restart()
    webhook.wait_expression(selects(scenario.namespace), "the policy in the matchConditions")
    scenario.watch.wait_for(lambda w: w.finished(*names), "all three Jobs finishing, one at a time", timeout=60)
    resuspended = [name for name in names if "Resuspended" in [reason for reason, _ in scenario.events(name)]]
    print(f"created unsuspended before the conditions followed: {names}; suspended again: {resuspended}")
    assert len(resuspended) == 2
    assert_never_over_admitted(scenario.watch)
    # From now on the webhook queues them at creation.
    assert scenario.job("late-after", {"app": "late"}, suspend=False).spec.suspend is True


def test_the_leader_restores_conditions_that_something_replaced(webhook: Webhook, scenario: Scenario) -> None:
    scenario.policy("gate", GATED, [], 1)
    webhook.wait_expression(selects(scenario.namespace), "the policy in the matchConditions")
    current = webhook.registrations.read_mutating_webhook_configuration(webhook.configuration)
    current.webhooks[0].match_conditions = None  # as `kubectl replace` of the chart's render would

    webhook.registrations.replace_mutating_webhook_configuration(webhook.configuration, current)
    restored = webhook.wait_expression(selects(scenario.namespace), "the leader restoring the conditions")

    print(f"matchConditions restored {restored:.3f}s after a replace without them")
    assert restored < SCOPE_SECONDS


def test_a_namespace_whose_selectors_are_too_large_is_taken_whole_and_says_so(
    webhook: Webhook, scenario: Scenario
) -> None:
    # 2 x 256 values of 50 characters: about 27,000 characters of CEL, over the budget of 20,000.
    values = [f"customer-{i:04}-{'x' * 36}" for i in range(256)]
    expressions = [{"key": f"key-{k}", "operator": "In", "values": values} for k in range(2)]
    huge = policy_manifest("huge", {}, [], 1, selector={"matchExpressions": expressions})
    scenario.custom.create_namespaced_custom_object(GROUP, VERSION, scenario.namespace, PLURAL, huge)

    webhook.wait_expression(lambda e: e == f"request.namespace in ['{scenario.namespace}']", "the whole namespace")
    condition = scenario.wait_status(
        "huge",
        lambda s: any(c["type"] == "WebhookScoped" for c in s.get("conditions", [])),
        "the WebhookScoped condition",
    )["conditions"][-1]
    assert (condition["status"], condition["reason"]) == ("False", "NamespaceOnly")
    assert "every Job of the namespace" in condition["message"]
    assert f"namespace(s) {scenario.namespace} would make" in webhook.operator.log_path.read_text()
    # The price: the API server now asks about every Job of the namespace.
    untouched = webhook.answered("untouched")
    scenario.job("plain", {"app": "other"}, suspend=False)
    assert webhook.answered("untouched") == untouched + 1


def test_certificate_rotation_under_load_refuses_no_job(cluster: ClusterAccess, scenario: Scenario) -> None:
    """A new CA and certificate, as a chart upgrade or cert-manager brings them, while Jobs are created.

    The order that never refuses: trust both CAs, then serve the new certificate
    (the files change under the running operator), then trust only the new CA.
    """
    if not cluster.webhooks_on_loopback:
        pytest.skip("this cluster's API server cannot call a webhook on this machine's 127.0.0.1")
    old_ca, new_ca = CertificateAuthority.create("old-webhook-ca"), CertificateAuthority.create("new-webhook-ca")
    secret = MountedSecret(scenario.tmp_path / "webhook-tls", old_ca.issue_webhook_serving())
    tls_args = ["--webhook-cert", str(secret.cert), "--webhook-key", str(secret.key)]
    webhook = _configured_webhook(cluster, scenario, old_ca.cert_pem, tls_args)
    try:
        scenario.policy("paused", GATED, [], 0)  # every Job queued: the load is on admission, not on pods
        scenario.wait_webhook(GATED)
        with AdmissionBarrier(cluster, scenario) as barrier, JobCreator(cluster, scenario.namespace) as load:
            load.wait_created(20)
            set_ca_bundle(webhook, old_ca.cert_pem + new_ca.cert_pem)
            barrier.wait()
            trusted_both = load.created
            swapped = time.monotonic()
            secret.write(new_ca.issue_webhook_serving())
            poll_until(lambda: served_by(webhook, new_ca), "the operator serving the new certificate", timeout=10)
            served_after = time.monotonic() - swapped
            set_ca_bundle(webhook, new_ca.cert_pem)
            barrier.wait()
            load.wait_created(load.created + 20)  # all of these under the new CA only
        print(
            f"rotation under load: {load.created} Jobs created ({load.created - trusted_both} during the rotation), "
            f"{len(load.refused)} refused; new certificate served {served_after:.2f}s after the files changed"
        )
        assert load.refused == []
        assert served_after < 3
        assert all(job.spec.suspend for job in scenario.batch.list_namespaced_job(scenario.namespace).items)
    finally:
        _remove(webhook)


class JobCreator:
    """Creates governed Jobs one after another in a thread, counting what the API server refused."""

    def __init__(self, cluster: ClusterAccess, namespace: str) -> None:
        self.batch = kubernetes.client.BatchV1Api(cluster.api_client())
        self.namespace = namespace
        self.created = 0
        self.refused: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._create, daemon=True)

    def __enter__(self) -> JobCreator:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def wait_created(self, count: int) -> None:
        poll_until(lambda: self.created >= count or self.refused, f"{count} Jobs created", timeout=60)

    def _create(self) -> None:
        while not self._stop.is_set():
            try:
                self.batch.create_namespaced_job(self.namespace, job_manifest(f"load-{self.created}", GATED))
                self.created += 1
            except ApiException as e:
                self.refused.append(f"load-{self.created}: {e.status} {e.body}")


def set_ca_bundle(webhook: Webhook, bundle: bytes) -> None:
    configuration = webhook.registrations.read_mutating_webhook_configuration(webhook.configuration)
    configuration.webhooks[0].client_config.ca_bundle = base64.b64encode(bundle).decode()
    webhook.registrations.replace_mutating_webhook_configuration(webhook.configuration, configuration)


class AdmissionBarrier:
    """Waits until the API server admits with every webhook configuration written before `wait()`.

    The API server reads webhook configurations through one informer, which
    delivers changes in order: once it calls a canary webhook configured after
    a change, it has that change too.
    """

    def __init__(self, cluster: ClusterAccess, scenario: Scenario) -> None:
        certificate, ca_bundle = cluster.webhook_certificate()
        self.scenario = scenario
        self.server = MutatingWebhookServer(certificate, lambda _: [])
        self.name = f"barrier-{scenario.namespace}"
        self.ca_bundle = base64.b64encode(ca_bundle).decode()
        self.token = 0

    def __enter__(self) -> AdmissionBarrier:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        with contextlib.suppress(ApiException):
            self.registrations.delete_mutating_webhook_configuration(self.name)
        self.server.__exit__(*exc)

    @property
    def registrations(self) -> kubernetes.client.AdmissionregistrationV1Api:
        return kubernetes.client.AdmissionregistrationV1Api(self.scenario.api)

    def wait(self) -> None:
        self.token += 1
        token = str(self.token)
        hook = {
            "name": "barrier.jobgate.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Ignore",
            "clientConfig": {"url": self.server.url, "caBundle": self.ca_bundle},
            "rules": [{"apiGroups": ["batch"], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["jobs"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": self.scenario.namespace}},
            "objectSelector": {"matchLabels": {"jobgate.dev/barrier": token}},
        }
        body = {"metadata": {"name": self.name}, "webhooks": [hook]}
        try:
            self.registrations.patch_mutating_webhook_configuration(self.name, body)
        except ApiException as e:
            if e.status != 404:
                raise
            self.registrations.create_mutating_webhook_configuration(body)
        probe = job_manifest(f"barrier-{token}", {"jobgate.dev/barrier": token})

        def seen() -> bool:
            self.scenario.batch.create_namespaced_job(self.scenario.namespace, probe, dry_run="All")
            return any(
                r["object"]["metadata"]["labels"].get("jobgate.dev/barrier") == token for r in self.server.requests
            )

        poll_until(seen, "the API server calling the canary webhook", timeout=30, interval=0.02)


def served_by(webhook: Webhook, ca: CertificateAuthority) -> bool:
    """Whether a new connection to the operator's webhook port gets a certificate that `ca` signed."""
    port = int(webhook.args[webhook.args.index("--webhook-port") + 1])
    context = ssl.create_default_context(cadata=ca.cert_pem.decode())
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1"),
        ):
            return True
    except ssl.SSLCertVerificationError:
        return False
