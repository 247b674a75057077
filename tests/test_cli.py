"""`jobgate status|queue|why` (and `kubectl jobgate`) against a real API: no operator, the CLI only reads.

Jobs are created in the states the CLI tells apart — running (unsuspended,
its pod runs for an hour), queued (suspend: true), held, ungoverned — and the
CLI runs as a subprocess, as a user would run it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml

from jobgate.core.jobs import HOLD, PRIORITY
from localcluster.access import ClusterAccess
from localcluster.manifests import job_manifest, policy_manifest
from tests.support.crd import crd  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("crd")]

BIN = Path(sys.executable).parent  # the venv's bin: jobgate and kubectl-jobgate
GROUP, VERSION, PLURAL = "jobgate.dev", "v1alpha1", "concurrencypolicies"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run_cli(*args: str, kubeconfig: Path, command: tuple[str, ...] = (str(BIN / "jobgate"),)) -> Result:
    env = {**os.environ, "NO_COLOR": "", "COLUMNS": "120"}
    proc = subprocess.run(
        [*command, *args, "--kubeconfig", str(kubeconfig)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    print(f"$ jobgate {' '.join(args)}  # exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return Result(proc.returncode, proc.stdout, proc.stderr)


def export(customer: str) -> dict[str, str]:
    return {"app": "export", "customer": customer}


@pytest.fixture
def queues(cluster: ClusterAccess, namespace: str) -> Iterator[str]:
    """Policy `exports` (one per customer) with: customer a — one running, two queued, one held;
    customer b — one queued that fits; and one Job that no policy governs."""
    api = cluster.api_client()
    custom = kubernetes.client.CustomObjectsApi(api)
    batch = kubernetes.client.BatchV1Api(api)
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, policy_manifest("exports", {"app": "export"}, ["customer"], 1)
    )
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, policy_manifest("training", {"app": "train"}, [], 2)
    )
    jobs = [
        job_manifest("run-a", export("a"), suspend=False, runs_for="1h"),
        job_manifest("wait-a1", export("a")),
        job_manifest("wait-a2", export("a"), annotations={PRIORITY: "5"}),
        job_manifest("hold-a", export("a"), annotations={HOLD: "true"}),
        job_manifest("wait-b", export("b")),
        job_manifest("stray", {"app": "report"}),
    ]
    for body in jobs:
        batch.create_namespaced_job(namespace, body)
    yield namespace


def test_status_counts_per_key(cluster: ClusterAccess, queues: str) -> None:
    result = run_cli("status", "-n", queues, "-o", "json", kubeconfig=cluster.kubeconfig)
    assert result.code == 0, result.err
    by_name = {p["name"]: p for p in result.json()["policies"]}
    exports = by_name["exports"]
    assert (exports["running"], exports["queued"], exports["held"], exports["keys"]) == (1, 3, 1, 2)
    a, b = exports["busiestKeys"]
    assert (a["key"], a["running"], a["queued"], a["held"], a["admissible"]) == ({"customer": "a"}, 1, 2, 1, 0)
    assert (b["key"], b["running"], b["queued"], b["admissible"]) == ({"customer": "b"}, 0, 1, 1)
    assert a["oldestWaitSeconds"] >= 0
    assert by_name["training"]["keys"] == 0

    table = run_cli("status", "-n", queues, kubeconfig=cluster.kubeconfig)
    assert table.code == 0
    assert f"{queues}/exports: max 1 per customer; 1 running, 3 queued, 1 held in 2 key(s)" in table.out
    assert "customer=a  1/1      2       1" in table.out
    assert f"{queues}/training: max 2 for all its Jobs; nothing running or queued" in table.out
    assert "\x1b[" not in table.out  # not a terminal

    everywhere = run_cli("status", "-A", "-o", "json", kubeconfig=cluster.kubeconfig).json()
    assert everywhere["namespace"] is None
    assert (queues, "exports") in {(p["namespace"], p["name"]) for p in everywhere["policies"]}

    paged = run_cli("status", "-n", queues, "exports", "--limit", "1", "-o", "yaml", kubeconfig=cluster.kubeconfig)
    [policy] = yaml.safe_load(paged.out)["policies"]
    assert (len(policy["busiestKeys"]), policy["moreKeys"]) == (1, 1)


def test_queue_in_admission_order(cluster: ClusterAccess, queues: str) -> None:
    result = run_cli("queue", "-n", queues, "exports", "-o", "json", kubeconfig=cluster.kubeconfig)
    assert result.code == 0, result.err
    rows = [(j["name"], j["rank"], j["position"], j["priority"], j["admitNext"]) for j in result.json()["jobs"]]
    assert rows == [
        ("wait-a2", 1, 1, 5, False),
        ("wait-a1", 2, 2, 0, False),
        ("wait-b", 3, 1, 0, True),
    ]

    only_a = run_cli("queue", "-n", queues, "exports", "--key", "customer=a", kubeconfig=cluster.kubeconfig)
    assert only_a.code == 0
    assert "wait-a2" in only_a.out and "wait-a1" in only_a.out and "wait-b" not in only_a.out

    wrong_label = run_cli("queue", "-n", queues, "exports", "--key", "region=eu", kubeconfig=cluster.kubeconfig)
    assert wrong_label.code == 2
    assert "policy 'exports' has no key label region (its key labels: customer)" in wrong_label.err


def test_why(cluster: ClusterAccess, queues: str) -> None:
    waiting = run_cli("why", "-n", queues, "wait-a1", "-o", "json", kubeconfig=cluster.kubeconfig).json()
    assert waiting["state"] == "queued"
    [gov] = waiting["policies"]
    assert (gov["policy"], gov["key"], gov["running"], gov["maxConcurrent"]) == ("exports", {"customer": "a"}, 1, 1)
    assert (gov["runningJobs"], gov["position"], gov["queued"], gov["slot"]) == (["run-a"], 2, 2, "full")

    table = run_cli("why", "-n", queues, "wait-a1", kubeconfig=cluster.kubeconfig)
    assert table.code == 0
    assert "waits for a slot in policy 'exports' for customer=a (1/1 running: run-a; position 2 of 2)" in " ".join(
        table.out.split()
    )

    fits = run_cli("why", "-n", queues, "wait-b", "-o", "json", kubeconfig=cluster.kubeconfig).json()
    assert fits["admitNext"] is True

    running = run_cli("why", "-n", queues, "run-a", "-o", "json", kubeconfig=cluster.kubeconfig).json()
    assert running["state"] == "running"

    held = run_cli("why", "-n", queues, "hold-a", "-o", "json", kubeconfig=cluster.kubeconfig).json()
    assert held["state"] == "held"

    stray = run_cli("why", "-n", queues, "stray", kubeconfig=cluster.kubeconfig)
    assert stray.code == 0
    assert f"no ConcurrencyPolicy in namespace '{queues}' governs it" in " ".join(stray.out.split())
    assert "exports   needs app=export, the Job has app=report" in stray.out
    assert "training  needs app=train, the Job has app=report" in stray.out


def test_not_found_and_unreachable_exit_codes(cluster: ClusterAccess, queues: str, tmp_path: Path) -> None:
    missing_job = run_cli("why", "-n", queues, "nope", kubeconfig=cluster.kubeconfig)
    assert (missing_job.code, missing_job.err) == (1, f"error: Job 'nope' not found in namespace '{queues}'\n")

    missing_policy = run_cli("queue", "-n", queues, "nope", kubeconfig=cluster.kubeconfig)
    assert missing_policy.code == 1
    assert f"ConcurrencyPolicy 'nope' not found in namespace '{queues}'" in missing_policy.err

    for args in (("status", "-n", "no-such-ns"), ("why", "-n", "no-such-ns", "x"), ("queue", "-n", "no-such-ns", "p")):
        missing_namespace = run_cli(*args, kubeconfig=cluster.kubeconfig)
        assert (missing_namespace.code, missing_namespace.err) == (1, "error: namespace 'no-such-ns' not found\n")

    unreachable = tmp_path / "unreachable.kubeconfig"
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    for entry in config["clusters"]:
        entry["cluster"]["server"] = "https://127.0.0.1:1"
    unreachable.write_text(yaml.safe_dump(config))
    result = run_cli("status", "-n", queues, kubeconfig=unreachable)
    assert result.code == 3
    assert result.err.startswith("error: cannot reach the Kubernetes API at https://127.0.0.1:1")
    assert len(result.err.splitlines()) == 1

    nobody = run_cli("status", "-n", queues, kubeconfig=cluster.user_kubeconfig("nobody"))
    assert nobody.code == 3
    assert nobody.err.startswith("error: not allowed: ")

    no_file = run_cli("status", kubeconfig=tmp_path / "absent")
    assert (no_file.code, no_file.err) == (3, f"error: the kubeconfig '{tmp_path / 'absent'}' does not exist\n")


def test_namespace_defaults_to_the_contexts(cluster: ClusterAccess, queues: str, tmp_path: Path) -> None:
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    for context in config["contexts"]:
        context["context"]["namespace"] = queues
    scoped = tmp_path / "scoped.kubeconfig"
    scoped.write_text(yaml.safe_dump(config))
    result = run_cli("why", "wait-b", "-o", "json", kubeconfig=scoped)
    assert (result.code, result.json()["namespace"]) == (0, queues)


def test_kubectl_plugin(cluster: ClusterAccess, queues: str) -> None:
    kubectl = str(cluster.tool("kubectl"))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        [kubectl, "jobgate", "queue", "-n", queues, "exports", "--kubeconfig", str(cluster.kubeconfig)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    print(f"$ kubectl jobgate queue -n {queues} exports\n{proc.stdout}{proc.stderr}")
    assert proc.returncode == 0, proc.stderr
    assert "wait-a2" in proc.stdout
    help_text = subprocess.run(
        [kubectl, "jobgate", "--help"], capture_output=True, text=True, env=env, timeout=60, check=False
    ).stdout
    assert help_text.startswith("usage: kubectl jobgate")
