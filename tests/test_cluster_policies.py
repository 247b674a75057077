"""ClusterConcurrencyPolicies on the real local control plane (issue 12, item 3): keys that span namespaces.

The operator runs with `--cluster-policies` over three namespaces of this test
(`-n` each: the namespaces of other tests stay their own operators'). An
independent watch of the Jobs of those three namespaces checks at every event
that no admission took a key over its limit, counting a key's Jobs across the
namespaces as the policy does, with the Namespaces' labels as the test set them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import kubernetes.client
import pytest
from kubernetes.client import ApiException

from jobgate.core.policy import GROUP, NAMESPACE_KEY, VERSION, ConcurrencyPolicy
from localcluster.access import ClusterAccess
from localcluster.jobwatch import JobWatch
from localcluster.manifests import job_manifest, policy_manifest
from localcluster.operator_process import REPO
from tests.support.scenario import assert_never_over_admitted
from tests.support.tenants import TEAM, Tenants
from tests.support.waiting import poll_until
from tests.test_webhook import Webhook, _configured_webhook, _remove
from tests.test_webhook_scope import Unanswered

pytestmark = pytest.mark.cluster

EXAMPLE = REPO / "examples" / "three-jobs-per-team-across-namespaces.yaml"
BIN = Path(sys.executable).parent


def jobgate_cli(tenants: Tenants, *args: str) -> str:
    """`jobgate ...` as a user runs it; printed, so that `pytest -s` shows what users see."""
    command = [str(BIN / "jobgate"), *args, "--kubeconfig", str(tenants.scenario.cluster.kubeconfig)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout
    print(f"$ kubectl jobgate {' '.join(args)}\n{out}")
    return out


def peaks(watch: JobWatch, policy: str) -> dict[tuple[str, ...], int]:
    return {key: peak for (name, key), peak in watch.peak.items() if name == policy}


# --- the example ------------------------------------------------------------------------------------


def test_three_jobs_per_team_run_at_once_across_namespaces(tenants: Tenants) -> None:
    for namespace in tenants.namespaces:
        tenants.label(namespace, {"tenant": "true"})
    tenants.start_operator()
    tenants.scenario.cluster.kubectl("apply", "-f", str(EXAMPLE))  # cluster-scoped: no -n
    name = EXAMPLE.stem
    tenants.created.append(name)
    tenants.governed(name)
    tenants.wait_synced(name)
    # 4 Jobs per team in each of the 3 namespaces: 12 per team, 2 s each.
    for namespace in tenants.namespaces:
        for team in ("red", "blue"):
            for i in range(4):
                tenants.job(namespace, f"{team}-{i}", {"team": team}, runs_for="2s")
    tenants.watch.wait_for(lambda w: w.all_finished(24), "the 24 Jobs finishing", timeout=240)
    assert_never_over_admitted(tenants.watch)
    # Three at once per team in all three namespaces together, never three per namespace.
    assert peaks(tenants.watch, name) == {("red",): 3, ("blue",): 3}

    # While red's slots are full, its status says so, in all namespaces together.
    for namespace in tenants.namespaces[:2]:
        for i in range(2):
            tenants.job(namespace, f"long-red-{i}", {"team": "red"}, runs_for="600s")
    tenants.watch.wait_for(lambda w: len(w.running()) == 3, "three long red Jobs running")
    red = {"key": {"team": "red"}, "running": 3, "queued": 1}
    status = tenants.wait_status(name, lambda s: s.get("busiestKeys") == [red], "red at 3/3, one queued")
    assert (status["running"], status["queued"], status["keys"]) == (3, 1, 1)
    assert status["conditions"][0]["message"] == (
        "admitting up to 3 Job(s) per key across the namespaces namespaceSelector selects"
    )
    table = tenants.scenario.cluster.kubectl("get", "cconpol", name)
    print(f"$ kubectl get cconpol {name}\n{table}")
    header, row = table.splitlines()
    assert header.split() == ["NAME", "KEY", "LABELS", "MAX", "RUNNING", "QUEUED", "AGE"]
    assert row.split()[:5] == [name, '["team"]', "3", "3", "1"]

    # The CLI shows it with -A, and with -n in each namespace it selects, counting every namespace.
    everywhere = jobgate_cli(tenants, "status", "-A")
    assert f"{name} (cluster-wide): max 3 per team across namespaces; 3 running, 1 queued" in everywhere
    in_one = jobgate_cli(tenants, "status", "-n", tenants.others[0])
    assert in_one.splitlines()[:2] == everywhere.splitlines()[:2]  # the same policy and key (waits tick on)
    [waiting] = [n for n, j in tenants.watch.jobs.items() if j.queued]
    queue = jobgate_cli(tenants, "queue", "-A")
    assert waiting in queue and "3/3" in queue
    namespace, _, job = waiting.partition("/")
    jobgate_cli(tenants, "why", job, "-n", namespace)
    why = json.loads(jobgate_cli(tenants, "why", job, "-n", namespace, "-o", "json"))
    assert (
        f"waits for a slot in cluster policy '{name}' for team=red (3/3 running across namespaces: " in why["summary"]
    )
    assert why["policies"][0]["acrossNamespaces"] is True
    assert_never_over_admitted(tenants.watch)


# --- the namespace as a key part, and composition ----------------------------------------------------


def test_the_namespace_as_a_key_part_gives_each_namespace_its_own_slots(tenants: Tenants) -> None:
    for namespace in tenants.namespaces:
        tenants.label(namespace, tenants.tag)
    tenants.start_operator()
    name = tenants.cluster_policy(f"per-team-and-ns-{tenants.scenario.namespace}", TEAM, ["team", NAMESPACE_KEY], 1)
    tenants.wait_synced(name)
    at_once = [0]
    tenants.watch.listeners.append(lambda *_: at_once.__setitem__(0, max(at_once[0], len(tenants.watch.running()))))
    for namespace in tenants.namespaces:
        for i in range(3):
            tenants.job(namespace, f"red-{i}", {"team": "red"}, runs_for="2s")
    tenants.watch.wait_for(lambda w: w.all_finished(9), "the 9 Jobs finishing", timeout=180)
    assert_never_over_admitted(tenants.watch)
    assert peaks(tenants.watch, name) == {("red", namespace): 1 for namespace in tenants.namespaces}
    assert at_once[0] >= 2  # the namespaces' red Jobs ran side by side


def test_a_job_needs_a_slot_in_the_cluster_policy_and_in_its_namespaces_policy(tenants: Tenants) -> None:
    for namespace in tenants.namespaces:
        tenants.label(namespace, tenants.tag)
    tenants.start_operator()
    cluster_wide = tenants.cluster_policy(f"two-per-team-{tenants.scenario.namespace}", TEAM, ["team"], 2)
    # In the first namespace, one Job at a time, whatever the team.
    tenants.scenario.custom.create_namespaced_custom_object(
        GROUP, VERSION, tenants.scenario.namespace, "concurrencypolicies", policy_manifest("one-here", {}, [], 1)
    )
    body = tenants.scenario.custom.get_namespaced_custom_object(
        GROUP, VERSION, tenants.scenario.namespace, "concurrencypolicies", "one-here"
    )
    tenants.watch.govern(ConcurrencyPolicy.from_body(body))
    tenants.wait_synced(cluster_wide)
    for namespace in tenants.namespaces[:2]:
        for i in range(4):
            tenants.job(namespace, f"red-{i}", {"team": "red"}, runs_for="2s")
    tenants.watch.wait_for(lambda w: w.all_finished(8), "the 8 Jobs finishing", timeout=180)
    assert_never_over_admitted(tenants.watch)
    assert peaks(tenants.watch, cluster_wide) == {("red",): 2}
    assert peaks(tenants.watch, "one-here") == {(): 1}


# --- the webhook, Reject queues and relabeled namespaces ---------------------------------------------


@pytest.fixture
def tenant_webhook(cluster: ClusterAccess, tenants: Tenants) -> Iterator[Webhook]:
    if not cluster.webhooks_on_loopback:
        pytest.skip("this cluster's API server cannot call a webhook on this machine's 127.0.0.1")
    certificate, ca_bundle = cluster.webhook_certificate()
    cert, key = tenants.scenario.tmp_path / "webhook.crt", tenants.scenario.tmp_path / "webhook.key"
    certificate.write(cert, key)
    tls = ["--webhook-cert", str(cert), "--webhook-key", str(key)]
    webhook = _configured_webhook(
        cluster, tenants.scenario, ca_bundle, tls, namespaces=tenants.others, extra=["--cluster-policies"]
    )
    try:
        yield webhook
    finally:
        _remove(webhook)


def refusal(tenants: Tenants, namespace: str, labels: dict[str, str], *, dry_run: bool = False) -> str:
    """The webhook's refusal of a new Job, or "" when it was created."""
    try:
        tenants.scenario.batch.create_namespaced_job(
            namespace,
            job_manifest("probe" if dry_run else f"new-{len(tenants.watch.jobs)}", labels, suspend=False),
            **({"dry_run": "All"} if dry_run else {}),
        )
    except ApiException as e:
        return str(json.loads(e.body)["message"]) if e.status == 403 else ""
    return ""


def test_relabeling_a_namespace_moves_its_jobs_in_and_out_of_a_cluster_policy(
    tenants: Tenants, tenant_webhook: Webhook
) -> None:
    first, second, third = tenants.namespaces
    for namespace in (first, second):
        tenants.label(namespace, tenants.tag)
    name = tenants.cluster_policy(f"one-per-team-{first}", TEAM, ["team"], 1, maxQueued=1, overflow="Reject")
    tenants.wait_synced(name)
    red = {"team": "red"}
    tenants.scenario.wait_webhook(red)
    # The webhook suspends a red Job of either selected namespace; the first runs, the second waits.
    tenants.job(first, "red-a", red, suspend=False, runs_for="600s")
    tenants.watch.wait_for(lambda w: f"{first}/red-a" in w.running(), "red-a admitted")
    tenants.job(second, "red-b", red, suspend=False, runs_for="600s")
    tenants.watch.wait_for(lambda w: w.jobs.get(f"{second}/red-b") is not None, "red-b created")
    assert not tenants.running(f"{second}/red-b")
    # The queue of red, over both namespaces, is full: a third red Job is refused, wherever it comes from.
    message = refusal(tenants, first, red)
    assert message.startswith(
        f'admission webhook "suspend-governed-jobs.jobgate.dev" denied the request: jobgate: the queue of '
        f"ClusterConcurrencyPolicy {name} for team=red is full (1/1 queued, 1/1 running; overflow: Reject)"
    ), message
    # The third namespace is not selected: its red Job runs at once, untouched.
    tenants.job(third, "red-c", red, suspend=False, runs_for="1s")
    tenants.watch.wait_for(lambda w: w.finished(f"{third}/red-c"), "red-c running alone, and done")
    assert tenants.watch.jobs[f"{third}/red-c"].admitted_at is None

    # Labeled in, the third namespace's new red Jobs share red's queue: refused, since it is full.
    tenants.label(third, tenants.tag)
    refused = poll_until(lambda: refusal(tenants, third, red, dry_run=True), "the relabel reaching the webhook")
    assert f"ClusterConcurrencyPolicy {name} for team=red is full" in refused

    # Labeled out, the second namespace's queued red Job is governed by nothing: jobgate releases it.
    tenants.label(second, {"tenant-of": None})
    tenants.watch.wait_for(lambda w: f"{second}/red-b" in w.running(), "red-b released", timeout=30)
    assert "no policy governs" in tenants.event(second, "red-b", "Released")
    assert_never_over_admitted(tenants.watch)

    # While jobgate is down, a red Job of a namespace the policy does not select is created as if jobgate
    # did not exist: the matchCondition names the selected namespaces. One of a selected namespace is refused.
    tenant_webhook.operator.stop()
    blue = {"team": "blue"}  # a key with room: only the webhook being down can refuse it
    elsewhere = job_manifest("down-elsewhere", blue, suspend=False)
    assert tenants.scenario.batch.create_namespaced_job(second, elsewhere, dry_run="All").spec.suspend is False
    with pytest.raises(ApiException) as refused_while_down:
        tenants.scenario.batch.create_namespaced_job(first, job_manifest("down", blue, suspend=False), dry_run="All")
    assert refused_while_down.value.status == 500 and "failed calling webhook" in refused_while_down.value.body


def test_match_conditions_cannot_read_the_namespace_of_a_webhook_call(cluster: ClusterAccess, namespace: str) -> None:
    """Why a cluster policy's matchCondition names its namespaces rather than read their labels: the API server declares
    `namespaceObject` for webhooks' matchConditions but leaves it empty, and a condition that reads it
    fails, which under failurePolicy Fail refuses the Job."""
    webhook = Unanswered(cluster, f"namespace-object-{namespace}", [namespace])
    condition = "has(namespaceObject.metadata.labels) && 'tenant' in namespaceObject.metadata.labels"
    webhook.set_conditions([{"name": "namespace-object", "expression": condition}])
    try:
        batch = kubernetes.client.BatchV1Api(cluster.api_client())

        def refused() -> str:
            try:
                batch.create_namespaced_job(namespace, job_manifest("probe", {}), dry_run="All")
            except ApiException as e:
                return str(json.loads(e.body)["message"])
            return ""

        message = poll_until(refused, "the configuration taking effect")
        assert "no such key: metadata" in message, message
    finally:
        webhook.delete()
