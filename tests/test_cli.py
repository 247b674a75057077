"""`jobgate` (and `kubectl jobgate`) against a real API, as a subprocess, as a user would run it.

Mostly without an operator: Jobs are created in the states the CLI tells apart
— running (unsuspended, its pod runs for an hour), queued (suspend: true),
held, ungoverned. A test per kubectl flag convention and per write command;
the estimated start is checked against an operator at work.
"""

from __future__ import annotations

import json
import os
import pty
import secrets
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml

from jobgate.core.jobs import HOLD, PRIORITY
from jobgate.core.timestamps import format_timestamp, parse_timestamp
from localcluster.access import ClusterAccess
from localcluster.manifests import job_manifest, policy_manifest
from tests.support.crd import crd  # noqa: F401  (the fixture)
from tests.support.scenario import Scenario

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


def run_cli(
    *args: str, kubeconfig: Path | None, command: tuple[str, ...] = (str(BIN / "jobgate"),), timeout: float = 60
) -> Result:
    """`jobgate ARGS --kubeconfig FILE` (no --kubeconfig if None: the test passes it where it wants)."""
    env = {**os.environ, "NO_COLOR": "", "COLUMNS": "120"}
    where = ["--kubeconfig", str(kubeconfig)] if kubeconfig is not None else []
    proc = subprocess.run(
        [*command, *args, *where],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
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


# --- kubectl's flag conventions ------------------------------------------------------------------


def test_cluster_flags_go_before_or_after_the_command(cluster: ClusterAccess, queues: str) -> None:
    expected = "job.batch/wait-a2\njob.batch/wait-a1\njob.batch/wait-b\n"
    before = run_cli(
        "--kubeconfig", str(cluster.kubeconfig), "-n", queues, "queue", "exports", "-o", "name", kubeconfig=None
    )
    after = run_cli("queue", "exports", "-o", "name", "--namespace", queues, kubeconfig=cluster.kubeconfig)
    mixed = run_cli("--namespace=" + queues, "queue", "-o", "name", "exports", kubeconfig=cluster.kubeconfig)
    assert (before.code, before.out) == (after.code, after.out) == (mixed.code, mixed.out) == (0, expected)


def two_contexts(cluster: ClusterAccess, tmp_path: Path) -> Path:
    """A kubeconfig whose current context points nowhere, and whose context `good` is the cluster."""
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    [real] = config["clusters"]
    [context] = config["contexts"]
    config["clusters"].append({"name": "nowhere", "cluster": {**real["cluster"], "server": "https://127.0.0.1:1"}})
    config["contexts"] = [
        {"name": "good", "context": context["context"]},
        {"name": "broken", "context": {**context["context"], "cluster": "nowhere"}},
    ]
    config["current-context"] = "broken"
    path = tmp_path / "two-contexts.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def test_context_flag(cluster: ClusterAccess, queues: str, tmp_path: Path) -> None:
    kubeconfig = two_contexts(cluster, tmp_path)
    assert run_cli("--context", "good", "status", "-n", queues, kubeconfig=kubeconfig).code == 0
    assert run_cli("status", "-n", queues, "--context", "good", kubeconfig=kubeconfig).code == 0
    assert run_cli("status", "-n", queues, kubeconfig=kubeconfig).code == 3  # the current context: nowhere
    unknown = run_cli("--context", "nope", "status", kubeconfig=kubeconfig)
    assert (unknown.code, unknown.err) == (3, "error: the kubeconfig has no context 'nope' (it has: good, broken)\n")


def test_all_namespaces(cluster: ClusterAccess, queues: str) -> None:
    every = run_cli("queue", "-A", "-o", "json", kubeconfig=cluster.kubeconfig)
    assert every.code == 0, every.err
    mine = [q for q in every.json()["queues"] if q["namespace"] == queues]
    assert [(q["policy"], len(q["jobs"])) for q in mine] == [("exports", 3), ("training", 0)]
    named = run_cli("-A", "queue", "exports", "-o", "json", kubeconfig=cluster.kubeconfig).json()
    assert (queues, "exports") in {(q["namespace"], q["policy"]) for q in named["queues"]}
    batch = kubernetes.client.BatchV1Api(cluster.api_client())
    unique = f"only-{secrets.token_hex(4)}"  # other tests' namespaces may hold a wait-a1 too
    batch.create_namespaced_job(queues, job_manifest(unique, export("c")))
    found = run_cli("why", "-A", unique, "-o", "json", kubeconfig=cluster.kubeconfig)
    assert (found.code, found.json()["namespace"]) == (0, queues)
    other = cluster.create_namespace("other")
    try:
        batch.create_namespaced_job(other, job_manifest(unique, export("c")))
        twice = run_cli("why", "-A", unique, kubeconfig=cluster.kubeconfig)
    finally:
        cluster.delete_namespace(other)
    where = ", ".join(sorted([queues, other]))
    assert (twice.code, twice.err) == (2, f"error: Job '{unique}' exists in namespaces {where}: give one with -n\n")
    missing = run_cli("why", "-A", "no-such-job", kubeconfig=cluster.kubeconfig)
    assert (missing.code, missing.err) == (1, "error: Job 'no-such-job' not found in any namespace\n")


def test_request_timeout(cluster: ClusterAccess, tmp_path: Path) -> None:
    """An API that accepts connections and never answers: --request-timeout bounds the wait."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        config = yaml.safe_load(cluster.kubeconfig.read_text())
        for entry in config["clusters"]:
            entry["cluster"]["server"] = f"https://127.0.0.1:{silent.getsockname()[1]}"
        kubeconfig = tmp_path / "silent.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(config))
        started = time.monotonic()
        result = run_cli("--request-timeout", "1s", "status", "-n", "default", kubeconfig=kubeconfig, timeout=30)
        took = time.monotonic() - started
    finally:
        silent.close()
    assert result.code == 3
    assert (
        result.err.startswith("error: cannot reach the Kubernetes API at https://127.0.0.1:")
        and "timed out" in result.err
    )
    assert len(result.err.splitlines()) == 1
    assert took < 10, f"took {took:.1f}s"  # two attempts of 1 s, plus start-up


def test_label_selector_on_jobs(cluster: ClusterAccess, queues: str) -> None:
    only_b = run_cli("queue", "-n", queues, "exports", "-l", "customer=b", "-o", "json", kubeconfig=cluster.kubeconfig)
    assert only_b.code == 0, only_b.err
    assert [(j["name"], j["rank"]) for j in only_b.json()["jobs"]] == [("wait-b", 3)]  # its rank in the whole queue
    malformed = run_cli("queue", "-n", queues, "-l", "customer in ((", kubeconfig=cluster.kubeconfig)
    assert malformed.code == 2
    assert malformed.err.startswith("error: ") and len(malformed.err.splitlines()) == 1


def test_output_formats(cluster: ClusterAccess, queues: str) -> None:
    def out(*fmt: str) -> str:
        result = run_cli("queue", "-n", queues, "exports", *fmt, kubeconfig=cluster.kubeconfig)
        assert result.code == 0, result.err
        return result.out

    assert "EST. START" in out() and "BASIS" not in out()
    assert "BASIS" in out("-o", "wide")
    assert [j["name"] for j in yaml.safe_load(out("-o", "yaml"))["jobs"]] == ["wait-a2", "wait-a1", "wait-b"]
    assert out("-o", "name") == "job.batch/wait-a2\njob.batch/wait-a1\njob.batch/wait-b\n"
    template = '{range .jobs[?(@.admitNext == true)]}{.name}{"\\n"}{end}'
    assert out("-o", f"jsonpath={template}") == "wait-b\n"
    assert out("--output=jsonpath={.jobs[*].position}") == "1 2 1"
    status = run_cli("status", "-n", queues, "-o", "name", kubeconfig=cluster.kubeconfig)
    assert status.out == "concurrencypolicy.jobgate.dev/exports\nconcurrencypolicy.jobgate.dev/training\n"


def test_version_and_completion(cluster: ClusterAccess, queues: str) -> None:
    version = run_cli("--version", kubeconfig=None)
    assert (version.code, version.out) == (0, "jobgate 0.1.0\n")
    kubeconfig = str(cluster.kubeconfig)
    jobs = run_cli("__complete", "--kubeconfig", kubeconfig, "why", "-n", queues, "wait-a", kubeconfig=None)
    assert jobs.out == "wait-a1\nwait-a2\n:4\n"
    policies = run_cli("__complete", "--kubeconfig", kubeconfig, "-n", queues, "queue", "", kubeconfig=None)
    assert policies.out == "exports\ntraining\n:4\n"
    for shell in ("bash", "zsh", "fish"):
        script = run_cli("completion", shell, kubeconfig=None)
        assert script.code == 0 and "__complete" in script.out

    # kubectl >= 1.26 completes a plugin's arguments through kubectl_complete-<plugin>.
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    kubectl = subprocess.run(
        [
            str(cluster.tool("kubectl")),
            "__complete",
            "jobgate",
            "--kubeconfig",
            kubeconfig,
            "-n",
            queues,
            "why",
            "wait-a",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    print(f"$ kubectl __complete jobgate ... why wait-a\n{kubectl.stdout}{kubectl.stderr}")
    assert kubectl.stdout.splitlines()[:2] == ["wait-a1", "wait-a2"]


def test_kubeconfig_errors_are_one_line(cluster: ClusterAccess, queues: str, tmp_path: Path) -> None:
    malformed = tmp_path / "malformed.kubeconfig"
    malformed.write_text("apiVersion: v1\nclusters: [\n  - {name: c\n")
    result = run_cli("status", kubeconfig=malformed)
    assert result.code == 3
    problem = "expected the node content, but found '-' at line 3, column 3"
    assert result.err == f"error: the kubeconfig '{malformed}' is not valid YAML: {problem}\n"

    config = yaml.safe_load(cluster.kubeconfig.read_text())
    for user in config["users"]:
        user["user"] = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "no-such-plugin"}}
    plugin = tmp_path / "plugin.kubeconfig"
    plugin.write_text(yaml.safe_dump(config))
    result = run_cli("status", kubeconfig=plugin)
    assert result.code == 3
    assert "gets credentials from 'no-such-plugin', which is not installed (not on PATH)" in result.err
    assert len(result.err.splitlines()) == 1


def test_skipping_tls_verification_prints_no_warning(cluster: ClusterAccess, queues: str, tmp_path: Path) -> None:
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    for entry in config["clusters"]:
        entry["cluster"].pop("certificate-authority-data", None)
        entry["cluster"].pop("certificate-authority", None)
        entry["cluster"]["insecure-skip-tls-verify"] = True
    insecure = tmp_path / "insecure.kubeconfig"
    insecure.write_text(yaml.safe_dump(config))
    result = run_cli("status", "-n", queues, kubeconfig=insecure)
    assert (result.code, result.err) == (0, "")


# --- acting on the queue -------------------------------------------------------------------------


def job_annotations(cluster: ClusterAccess, namespace: str, name: str) -> dict[str, str]:
    job = kubernetes.client.BatchV1Api(cluster.api_client()).read_namespaced_job(name, namespace)
    return dict(job.metadata.annotations or {})


def test_hold_and_unhold(cluster: ClusterAccess, queues: str) -> None:
    held = run_cli("hold", "-n", queues, "wait-a1", kubeconfig=cluster.kubeconfig)
    assert (held.code, held.out) == (0, 'job.batch/wait-a1 held (jobgate.dev/hold: "true"; was not set)\n')
    assert job_annotations(cluster, queues, "wait-a1")[HOLD] == "true"
    again = run_cli("hold", "-n", queues, "wait-a1", kubeconfig=cluster.kubeconfig)
    assert again.out == 'job.batch/wait-a1 unchanged (jobgate.dev/hold: "true")\n'
    why = run_cli("why", "-n", queues, "wait-a1", "-o", "json", kubeconfig=cluster.kubeconfig).json()
    assert why["state"] == "held"

    unheld = run_cli("unhold", "-n", queues, "wait-a1", "hold-a", kubeconfig=cluster.kubeconfig)
    assert unheld.out.splitlines() == [
        'job.batch/wait-a1 unheld (jobgate.dev/hold removed; was "true")',
        'job.batch/hold-a unheld (jobgate.dev/hold removed; was "true")',
    ]
    assert HOLD not in job_annotations(cluster, queues, "hold-a")

    by_label = run_cli("hold", "-n", queues, "-l", "customer=b", "-o", "name", kubeconfig=cluster.kubeconfig)
    assert (by_label.code, by_label.out) == (0, "job.batch/wait-b\n")

    running = run_cli("hold", "-n", queues, "run-a", kubeconfig=cluster.kubeconfig)
    assert running.out.rstrip().endswith("it is running: a hold acts only while a Job is queued")

    partly = run_cli("hold", "-n", queues, "nope", "wait-a2", kubeconfig=cluster.kubeconfig)
    assert partly.code == 1
    assert partly.out == 'job.batch/wait-a2 held (jobgate.dev/hold: "true"; was not set)\n'
    assert partly.err == f"error: Job 'nope' not found in namespace '{queues}'\n"


def test_prioritize(cluster: ClusterAccess, queues: str) -> None:
    result = run_cli("prioritize", "-n", queues, "wait-a1", "7", kubeconfig=cluster.kubeconfig)
    assert (result.code, result.out) == (0, 'job.batch/wait-a1 prioritized (jobgate.dev/priority: "7"; was not set)\n')
    assert job_annotations(cluster, queues, "wait-a1")[PRIORITY] == "7"
    order = run_cli("queue", "-n", queues, "exports", "-o", "jsonpath={.jobs[*].name}", kubeconfig=cluster.kubeconfig)
    assert order.out == "wait-a1 wait-a2 wait-b"  # 7 beats wait-a2's 5
    lowered = run_cli("prioritize", "-n", queues, "wait-a2", "-3", "-o", "json", kubeconfig=cluster.kubeconfig)
    assert lowered.json()["jobs"][0] | {"namespace": ""} == {
        "namespace": "",
        "name": "wait-a2",
        "annotation": PRIORITY,
        "before": "5",
        "after": "-3",
        "changed": True,
        "note": None,
    }
    out_of_range = run_cli("prioritize", "-n", queues, "wait-a2", "1000001", kubeconfig=cluster.kubeconfig)
    assert out_of_range.code == 2


def test_writes_need_only_what_kubectl_annotate_needs(cluster: ClusterAccess, queues: str) -> None:
    """get and patch on jobs: a user with just that holds, prioritizes and unholds; one without patch cannot."""
    rbac = kubernetes.client.RbacAuthorizationV1Api(cluster.api_client())
    rbac.create_namespaced_role(
        queues,
        {
            "metadata": {"name": "annotate-jobs"},
            "rules": [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "patch"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        queues,
        {
            "metadata": {"name": "annotator"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "annotate-jobs"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "annotator"}],
        },
    )
    annotator = cluster.user_kubeconfig("annotator")
    for args in (("hold", "wait-a1"), ("prioritize", "wait-a1", "3"), ("unhold", "wait-a1")):
        result = run_cli(*args, "-n", queues, kubeconfig=annotator)
        assert result.code == 0, result.err
    assert job_annotations(cluster, queues, "wait-a1").get(PRIORITY) == "3"
    nobody = run_cli("hold", "-n", queues, "wait-a1", kubeconfig=cluster.user_kubeconfig("nobody"))
    assert nobody.code == 3 and nobody.err.startswith("error: not allowed: ")


def test_a_patch_tests_what_it_read(cluster: ClusterAccess, queues: str) -> None:
    """Against the real API server: a patch made from a stale read is refused, a fresh one applies,
    and a Job without any annotation takes one (the `test` of an absent member passes)."""
    from jobgate.cli.annotate import annotation_patch
    from jobgate.cli.reader import Conflict, connect

    api = connect(str(cluster.kubeconfig))
    try:
        batch = kubernetes.client.BatchV1Api(cluster.api_client())
        for before in (None, {PRIORITY: "1"}):  # the Job without annotations, then with another one
            if before is not None:
                batch.patch_namespaced_job("wait-a1", queues, {"metadata": {"annotations": before}})
            stale = api.job_body(queues, "wait-a1")
            assert stale is not None
            patch = annotation_patch(stale, HOLD, "true")
            assert patch is not None
            batch.patch_namespaced_job("wait-a1", queues, {"metadata": {"annotations": {HOLD: "false"}}})
            with pytest.raises(Conflict):
                api.patch_job(queues, "wait-a1", patch)
            assert job_annotations(cluster, queues, "wait-a1")[HOLD] == "false"  # not overwritten
            batch.patch_namespaced_job("wait-a1", queues, {"metadata": {"annotations": {HOLD: None}}})

        kubernetes.client.BatchV1Api(cluster.api_client()).create_namespaced_job(
            queues, {**job_manifest("bare", export("c")), "metadata": {"name": "bare", "labels": export("c")}}
        )
        bare = api.job_body(queues, "bare")
        assert bare is not None and "annotations" not in bare["metadata"]
        fresh = annotation_patch(bare, HOLD, "true")
        assert fresh is not None
        api.patch_job(queues, "bare", fresh)
        assert job_annotations(cluster, queues, "bare") == {HOLD: "true"}
    finally:
        api.close()


# --- status --watch ------------------------------------------------------------------------------


def test_status_watch_appends_a_report_when_counts_change(cluster: ClusterAccess, queues: str) -> None:
    proc = subprocess.Popen(
        [
            str(BIN / "jobgate"),
            "status",
            "-n",
            queues,
            "--watch",
            "--interval",
            "0.3",
            "--kubeconfig",
            str(cluster.kubeconfig),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NO_COLOR": ""},
    )
    assert proc.stdout is not None
    try:
        lines: list[str] = []
        while "customer=b" not in "".join(lines):
            lines.append(proc.stdout.readline())
        assert lines[0].startswith("--- ")
        kubernetes.client.BatchV1Api(cluster.api_client()).create_namespaced_job(
            queues, job_manifest("wait-c", export("c"))
        )
        while "customer=c" not in "".join(lines):
            lines.append(proc.stdout.readline())
        assert sum(1 for line in lines if line.startswith("--- ")) == 2  # one report per change, not per read
        assert "\x1b[" not in "".join(lines)
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    print("".join(lines))


def test_status_watch_redraws_on_a_terminal(cluster: ClusterAccess, queues: str) -> None:
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [
            str(BIN / "jobgate"),
            "status",
            "-n",
            queues,
            "-w",
            "--interval",
            "0.2",
            "--kubeconfig",
            str(cluster.kubeconfig),
        ],
        stdout=follower,
        stderr=subprocess.PIPE,
        env={**os.environ, "NO_COLOR": "", "COLUMNS": "120", "LINES": "40"},
    )
    os.close(follower)
    screen = b""
    try:
        deadline = time.monotonic() + 30
        while screen.count(b"\x1b[H\x1b[2J") < 3 and time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1)
            if ready:
                screen += os.read(leader, 65536)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        os.close(leader)
    assert screen.count(b"\x1b[H\x1b[2J") >= 3, screen[-500:]
    assert b"Every 0.2s: " in screen and b"customer=a" in screen


# --- when will it start? -------------------------------------------------------------------------

RUN_SECONDS = 4  # each Job's pod runs this long (kwok), so every run of the key takes as long
# The documented error for constant run times: about a second per Job ahead (the cluster's delay
# between one Job ending and the next starting, which run times do not include), plus 2 s for
# whole seconds (startTime, completionTime, and the estimate's "at").
ALLOWED_ERROR_PER_JOB_AHEAD = 1.0
ALLOWED_ERROR = 2.0


def test_estimated_start_against_the_real_start(cluster: ClusterAccess, scenario: Scenario) -> None:
    """`why` on a queued Job whose key has history, then the moment jobgate really admits it."""
    scenario.start_operator()
    scenario.policy("paced", {"app": "paced"}, ["customer"], 1)
    scenario.wait_leader_synced("paced")
    labels = {"app": "paced", "customer": "acme"}
    runs_for = f"{RUN_SECONDS}s"
    for name in ("done-1", "done-2"):
        scenario.job(name, labels, runs_for=runs_for)
    scenario.watch.wait_for(lambda w: w.finished("done-1", "done-2"), "the history runs finishing", timeout=90)
    scenario.job("running", labels, runs_for=runs_for)
    scenario.watch.wait_for(lambda w: "running" in w.running(), "the first one admitted")
    waiting = ["next-1", "next-2", "next-3"]
    for name in waiting:
        scenario.job(name, labels, runs_for=runs_for)
    scenario.watch.wait_for(lambda w: all(n in w.jobs for n in waiting), "three queued")
    namespace = scenario.namespace
    why = run_cli("why", "-n", namespace, "next-3", "-o", "json", kubeconfig=cluster.kubeconfig)
    run_cli("queue", "-n", namespace, "paced", kubeconfig=cluster.kubeconfig)  # for the log: the whole line
    run_cli("why", "-n", namespace, "next-3", kubeconfig=cluster.kubeconfig)
    assert why.code == 0, why.err
    estimate = why.json()["estimatedStart"]
    [paced] = why.json()["policies"]
    assert estimate["inSeconds"] is not None, estimate
    assert "median run" in estimate["basis"] and "recent run(s) of this key" in estimate["basis"]

    scenario.watch.wait_for(lambda w: w.jobs["next-3"].admitted_at is not None, "next-3 admitted", timeout=120)
    admitted_at = scenario.watch.jobs["next-3"].admitted_at
    assert admitted_at is not None
    # "at" is what a user reads (whole seconds); on a busy machine the CLI's own start-up would
    # otherwise count as error.
    error = admitted_at - parse_timestamp(estimate["at"])
    ahead = paced["position"] - 1 + paced["running"]  # at the time of asking: the running Job and the queue
    print(f"estimated start at {estimate['at']}, admitted at {format_timestamp(admitted_at)}: error {error:+.1f}s")
    assert abs(error) <= ALLOWED_ERROR + ahead * ALLOWED_ERROR_PER_JOB_AHEAD
