"""Policy shapes on the real local control plane (issue 12): per-key limits, bounded queues, CronJobs.

The examples are applied exactly as written. Each test also checks, through
an independent watch of the API, that no admission ever took a key over its
limit (its own limit, for a named key), and that no running Job was deleted.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from kubernetes.client import ApiException

from jobgate.core.jobs import JobView
from jobgate.core.policy import GROUP, PLURAL, VERSION, ConcurrencyPolicy
from jobgate.kube import api as kube
from jobgate.telemetry.metrics import Metrics
from localcluster.access import ClusterAccess, ToolError
from localcluster.manifests import job_manifest, policy_manifest
from localcluster.operator_process import REPO
from tests.support.scenario import Scenario, assert_never_over_admitted
from tests.test_webhook import (
    GATED,
    Webhook,
    webhook,  # noqa: F401  (the fixture, shared with the webhook tests)
)

pytestmark = pytest.mark.cluster

EXAMPLES = REPO / "examples"
BIN = Path(sys.executable).parent


def apply_example(scenario: Scenario, name: str) -> None:
    scenario.cluster.kubectl("apply", "-n", scenario.namespace, "-f", str(EXAMPLES / name))


def governed(scenario: Scenario, policy: str) -> ConcurrencyPolicy:
    """The policy as stored, handed to the independent watch to check its limits."""
    body = scenario.custom.get_namespaced_custom_object(GROUP, VERSION, scenario.namespace, PLURAL, policy)
    model = ConcurrencyPolicy.from_body(body)
    scenario.watch.govern(model)
    return model


def create_policy(
    scenario: Scenario, name: str, match: dict[str, str], keys: list[str], limit: int, **spec: Any
) -> None:
    manifest = policy_manifest(name, match, keys, limit, **spec)
    scenario.custom.create_namespaced_custom_object(GROUP, VERSION, scenario.namespace, PLURAL, manifest)
    governed(scenario, name)


class Deletions:
    """Every Job deletion the watch sees, with the Job's last state: was it running?"""

    def __init__(self, scenario: Scenario) -> None:
        self.running: list[str] = []
        self.queued: list[str] = []
        scenario.watch.listeners.append(self._seen)

    def _seen(self, _: float, before: JobView | None, after: JobView | None) -> None:
        if before is not None and after is None:
            (self.running if before.running else self.queued).append(before.name)


def replaced(scenario: Scenario, job: str) -> str:
    return scenario.wait_event(job, "Replaced")


def jobgate_cli(scenario: Scenario, *args: str) -> str:
    """`jobgate ...` as a user runs it; printed, so that `pytest -s` shows what users see."""
    command = [str(BIN / "jobgate"), *args, "-n", scenario.namespace, "--kubeconfig", str(scenario.cluster.kubeconfig)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout
    print(f"$ kubectl jobgate {' '.join(args)}\n{out}")
    return out


def kubectl(scenario: Scenario, *args: str) -> str:
    out = scenario.cluster.kubectl(*args, "-n", scenario.namespace)
    print(f"$ kubectl {' '.join(args)}\n{out}")
    return out


# --- per-key limits ---------------------------------------------------------------------------------


def test_a_named_customer_runs_three_at_once_and_every_other_one(scenario: Scenario) -> None:
    scenario.start_operator()
    apply_example(scenario, "exports-with-a-bigger-customer.yaml")
    policy = governed(scenario, "exports-with-a-bigger-customer")
    apply_example(scenario, "invoice-exports.yaml")  # 14 exports of four customers, 2 s each
    scenario.watch.wait_for(lambda w: w.all_finished(14), "the 14 exports finishing", timeout=120)
    assert_never_over_admitted(scenario.watch)
    peaks = {key: peak for (_, key), peak in scenario.watch.peak.items()}
    assert peaks == {("acme",): 3, ("globex",): 1, ("initech",): 1, ("umbrella",): 1}

    # While acme's slots are full, status and the CLI show its own limit.
    labels = {"app": "invoice-export", "customer-id": "acme"}
    for i in range(4):
        scenario.job(f"long-acme-{i}", labels, runs_for="600s")
    scenario.watch.wait_for(lambda w: len(w.running()) == 3, "three long acme exports running")
    acme = {"key": {"customer-id": "acme"}, "running": 3, "queued": 1, "maxConcurrent": 3}
    scenario.wait_status(policy.name, lambda s: s.get("busiestKeys") == [acme], "acme at 3/3 in the status")
    kubectl(scenario, "get", "conpol", "-o", "wide")
    status = jobgate_cli(scenario, "status")
    assert "customer-id=acme  3/3      1       0" in status and "own limit" in status
    why = jobgate_cli(scenario, "why", "long-acme-3")
    assert "(3/3 running under its own limit" in why

    # Raising acme's own limit admits the fourth at once; the default is unchanged. The watch learns
    # the new limit first: the operator may act on it before the patch call returns.
    raised = {"limits": [{"key": {"customer-id": "acme"}, "maxConcurrent": 4}]}
    body = scenario.custom.get_namespaced_custom_object(GROUP, VERSION, scenario.namespace, PLURAL, policy.name)
    scenario.watch.govern(ConcurrencyPolicy.from_body({**body, "spec": {**body["spec"], **raised}}))
    scenario.custom.patch_namespaced_custom_object(
        GROUP, VERSION, scenario.namespace, PLURAL, policy.name, {"spec": raised}
    )
    scenario.watch.wait_for(lambda w: len(w.running()) == 4, "the fourth acme export admitted")
    assert_never_over_admitted(scenario.watch)


# --- bounded queues ---------------------------------------------------------------------------------


def test_replace_oldest_keeps_only_the_newest_waiting_deploy(scenario: Scenario) -> None:
    scenario.start_operator()
    apply_example(scenario, "one-deploy-per-environment.yaml")
    policy = governed(scenario, "one-deploy-per-environment")
    scenario.wait_leader_synced(policy.name)
    deletions = Deletions(scenario)
    prod, staging = {"app": "deploy", "environment": "prod"}, {"app": "deploy", "environment": "staging"}
    scenario.job("prod-1", prod, runs_for="600s")
    scenario.watch.wait_for(lambda w: "prod-1" in w.running(), "prod-1 running")
    scenario.job("staging-1", staging, runs_for="600s")
    for name in ("prod-2", "prod-3", "prod-4"):  # created in this order: same second at worst, then by name
        scenario.job(name, prod)
    scenario.watch.wait_for(
        lambda w: {"prod-2", "prod-3"}.isdisjoint(w.jobs) and "prod-4" in w.jobs, "prod-2 and prod-3 deleted"
    )
    assert "Deleted from the queue by jobgate: policy one-deploy-per-environment keeps at most 1 queued Job(s) " \
        "for environment=prod (overflow: ReplaceOldest)" in replaced(scenario, "prod-2")  # fmt: skip
    replaced(scenario, "prod-3")
    assert scenario.suspended("prod-4") and "staging-1" in scenario.watch.running()
    scenario.wait_status(policy.name, lambda s: s.get("queued") == 1, "one deploy queued in the status")
    kubectl(scenario, "get", "conpol", "-o", "wide")
    jobgate_cli(scenario, "status")
    assert deletions.running == [] and sorted(deletions.queued) == ["prod-2", "prod-3"]

    scenario.batch.delete_namespaced_job("prod-1", scenario.namespace, propagation_policy="Background")
    scenario.watch.wait_for(lambda w: "prod-4" in w.running(), "prod-4 admitted once prod-1 is gone")
    assert_never_over_admitted(scenario.watch)
    assert scenario.watch.peak[(policy.name, ("prod",))] == 1


def test_a_deletion_decided_on_a_queued_job_never_deletes_it_once_admitted(
    cluster: ClusterAccess, namespace: str
) -> None:
    """The guarantee behind ReplaceOldest's "never touches running Jobs", against the API server itself."""

    async def scenario() -> tuple[bool, bool]:
        client = await cluster.aio_api_client()
        try:
            api = kube.KubeApi(client, Metrics())
            batch = kubernetes.client.BatchV1Api(cluster.api_client())
            batch.create_namespaced_job(namespace, job_manifest("queued", {"app": "x"}))
            [decided_on], _ = await api.list_jobs(namespace)
            batch.patch_namespaced_job("queued", namespace, {"spec": {"suspend": False}})  # admitted meanwhile
            late = await api.delete_job(decided_on)
            # A decision on what the API holds now does delete it. The Job controller writes the status of
            # the unsuspended Job meanwhile (a newer resourceVersion): a few fresh reads settle that race.
            for _ in range(5):
                [current], _ = await api.list_jobs(namespace)
                if await api.delete_job(current):
                    return late, True
            return late, False
        finally:
            await client.close()

    late, current = asyncio.run(scenario())
    assert (late, current) == (False, True)


def test_reject_refuses_a_job_beyond_the_bound_at_creation(request: pytest.FixtureRequest, scenario: Scenario) -> None:
    hook: Webhook = request.getfixturevalue("webhook")
    create_policy(scenario, "gate", GATED, ["customer"], 1, maxQueued=1, overflow="Reject")
    scenario.wait_leader_synced("gate")
    labels = {**GATED, "customer": "42"}
    scenario.wait_webhook(labels)
    scenario.job("first", labels, suspend=False, runs_for="600s")
    scenario.watch.wait_for(lambda w: "first" in w.running(), "first running")
    scenario.job("second", labels, suspend=False)  # queued: the one place in the queue
    with pytest.raises(ToolError) as refused:  # what a user sees
        manifest = yaml.safe_dump(job_manifest("third", labels, suspend=False))
        scenario.cluster.kubectl("apply", "-n", scenario.namespace, "-f", "-", input=manifest)
    print(refused.value)
    assert (
        'admission webhook "suspend-governed-jobs.jobgate.dev" denied the request: jobgate: the queue of '
        "ConcurrencyPolicy gate for customer=42 is full (1/1 queued, 1/1 running; overflow: Reject)"
        in str(refused.value)
    )
    with pytest.raises(ApiException) as forbidden:
        scenario.job("third", labels, suspend=False)
    assert forbidden.value.status == 403
    scenario.job("other-key", {**GATED, "customer": "7"}, suspend=False)  # another key has its own queue
    assert hook.answered("rejected") == 2

    scenario.batch.delete_namespaced_job("first", scenario.namespace, propagation_policy="Background")
    scenario.watch.wait_for(lambda w: "second" in w.running(), "second admitted")
    scenario.job("third", labels, suspend=False)  # room again
    assert_never_over_admitted(scenario.watch)


# --- CronJobs ---------------------------------------------------------------------------------------


@pytest.fixture
def cronjob_cleanup(scenario: Scenario) -> Iterator[None]:
    yield
    # The CronJob would go on firing until the namespace is gone: stop it first.
    scenario.batch.delete_namespaced_cron_job("sales-report", scenario.namespace)


def test_a_cronjob_runs_two_at_once_and_its_newest_run_waits(scenario: Scenario, cronjob_cleanup: None) -> None:
    scenario.start_operator()
    apply_example(scenario, "cronjob-two-runs-at-once.yaml")
    policy = governed(scenario, "sales-report-runs")
    scenario.wait_leader_synced(policy.name)
    deletions = Deletions(scenario)
    # Runs started by hand from the CronJob ("run it now"), then the CronJob's own, within a minute.
    for i in range(1, 5):
        kubectl(scenario, "create", "job", f"manual-{i}", "--from=cronjob/sales-report")
    scenario.watch.wait_for(lambda w: {"manual-1", "manual-2"} <= w.running(), "two runs running")
    scenario.watch.wait_for(lambda w: "manual-3" not in w.jobs, "manual-3 replaced by manual-4")
    replaced(scenario, "manual-3")
    assert scenario.suspended("manual-4")

    scenario.watch.wait_for(
        lambda w: any(name.startswith("sales-report-") for name in w.jobs), "the CronJob's scheduled run", timeout=90
    )
    [scheduled] = [name for name in scenario.watch.jobs if name.startswith("sales-report-")]
    owner = scenario.batch.read_namespaced_job(scheduled, scenario.namespace).metadata.owner_references[0]
    assert (owner.kind, owner.name) == ("CronJob", "sales-report")
    scenario.watch.wait_for(lambda w: "manual-4" not in w.jobs, "manual-4 replaced by the scheduled run")
    replaced(scenario, "manual-4")
    assert scenario.suspended(scheduled)
    kubectl(scenario, "get", "cronjob,jobs")
    kubectl(scenario, "get", "conpol", "-o", "wide")
    jobgate_cli(scenario, "status")
    assert_never_over_admitted(scenario.watch)
    assert scenario.watch.peak[(policy.name, ())] == 2
    assert deletions.running == [] and sorted(deletions.queued) == ["manual-3", "manual-4"]
