"""`make demo`: jobgate gating labeled Jobs on a local control plane, live in the terminal.

Starts the local control plane (building it on first use), installs the CRD,
runs the operator, applies the policy and the Jobs of `examples/`, and redraws
each key's running / queued / done counts as the API reports them — until every
Job has completed. Then a one-screen summary, and everything is torn down.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import kubernetes.client
import yaml

from jobgate.cli.render import render
from jobgate.cli.report import status_report
from jobgate.core.policy import ConcurrencyPolicy
from localcluster.build import BuildError, ensure_binaries
from localcluster.cluster import ClusterStartError, LocalCluster
from localcluster.jobwatch import JobWatch
from localcluster.operator_process import CRD_FILE, REPO, OperatorProcess

EXAMPLES = REPO / "examples"
POLICY_FILE = EXAMPLES / "one-export-per-customer.yaml"
JOBS_FILE = EXAMPLES / "invoice-exports.yaml"
NAMESPACE = "jobgate-demo"
TIMEOUT = 180.0

BOLD, RESET = "\033[1m", "\033[0m"


class Screen:
    """Redraws in place on a terminal; elsewhere prints a line per change (for logs and CI)."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.last = ""

    def paint(self, text: str, counts: str) -> None:
        """Redraw `text` on a terminal every time; elsewhere print its last line when `counts` change."""
        if self.tty:
            sys.stdout.write("\033[H\033[J" + text + "\n")
        elif counts != self.last:
            sys.stdout.write(text.splitlines()[-1] + "\n")
        self.last = counts
        sys.stdout.flush()

    def color(self, code: str, text: str) -> str:
        return f"{code}{text}{RESET}" if self.tty else text


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def job_durations() -> dict[str, float]:
    """How long each example Job's pod runs, read from its kwok annotation (e.g. "2s")."""
    durations = {}
    for doc in yaml.safe_load_all(JOBS_FILE.read_text()):
        delay = doc["spec"]["template"]["metadata"]["annotations"]["pod-complete.stage.kwok.x-k8s.io/delay"]
        durations[doc["metadata"]["name"]] = float(delay.rstrip("s"))
    return durations


def frame(screen: Screen, watch: JobWatch, policy: ConcurrencyPolicy, started: float) -> tuple[str, str]:
    """The screen, and the counts alone (what a change is): `kubectl jobgate status --watch`'s own view."""
    label = policy.spec.keyLabels[0]
    limit = policy.spec.maxConcurrent
    jobs = list(watch.jobs.values())
    report = status_report(policy.namespace, [policy], jobs, time.time())
    view = render(report, "table", colour=screen.tty, width=100)
    per_key = Counter(job.labels.get(label, "") for job in jobs if job.finished)
    done = ", ".join(f"{key} {count}" for key, count in sorted(per_key.items())) or "none yet"
    lines = [
        screen.color(BOLD, f"jobgate demo — policy {policy.name}: at most {limit} running per {label}"),
        "",
        f"Every Job carries a {label} label. jobgate keeps the Jobs of each {label} suspended",
        f"(queued) while {limit} of them run{'s' if limit == 1 else ''}, and unsuspends the next one the moment",
        f"a slot frees. Different {label} values never wait for each other. Below: `kubectl jobgate status -w`.",
        "",
        view.rstrip(),
        "",
        f"t={time.monotonic() - started:5.1f}s  finished per {label}: {done}",
    ]
    counts = repr(
        [
            (key.key, key.running, key.queued)
            for policy_summary in report.policies
            for key in policy_summary.busiest_keys
        ]
    )
    return "\n".join(lines), counts + repr(sorted(per_key.items()))


def summary(watch: JobWatch, policy: ConcurrencyPolicy, makespan: float) -> tuple[str, bool]:
    label = policy.spec.keyLabels[0]
    limit = policy.spec.maxConcurrent
    durations = job_durations()
    per_key_work: dict[str, list[float]] = {}
    for name, job in watch.jobs.items():
        per_key_work.setdefault(job.labels.get(label, ""), []).append(durations.get(name, 0.0))
    biggest = max(per_key_work, key=lambda k: len(per_key_work[k]))
    ideal = max(math.ceil(len(w) / limit) * max(w) for w in per_key_work.values())
    serial = sum(sum(w) for w in per_key_work.values())
    ok = not watch.admitted_over_limit
    lines = [
        "",
        f"Summary: {len(watch.jobs)} Jobs, {len(per_key_work)} values of {label}, "
        f"policy {policy.name} (at most {limit} running per {label})",
        f"  {label:<12} jobs  most running at once",
    ]
    for key in sorted(per_key_work):
        peak = watch.peak[(policy.name, (key,))]
        ok = ok and peak <= limit
        lines.append(f"  {key:<12} {len(per_key_work[key]):>4}  {peak} (limit {limit})")
    verdict = (
        f"none: no {label} ever had more than {limit} running" if ok else "YES: " + ", ".join(watch.admitted_over_limit)
    )
    lines += [
        f"  over-admission: {verdict}",
        f"  finished in {makespan:.1f}s. Ideal under this limit: {ideal:.0f}s ({biggest}'s "
        f"{len(per_key_work[biggest])} Jobs, {limit} at a time); "
        f"all {len(watch.jobs)} one after another: {serial:.0f}s.",
        "  Beyond the ideal is the control plane's own work per Job: creating, scheduling and",
        "  completing each pod (here kwok's fake kubelet) and marking the Job Complete.",
    ]
    return "\n".join(lines), ok


def run_demo(tty: bool | None = None) -> bool:
    """The whole demo; returns whether every key stayed within its limit."""
    screen = Screen(sys.stdout.isatty() if tty is None else tty)
    print(
        "jobgate limits how many Kubernetes Jobs run at once per value of a label. This demo starts a local\n"
        "Kubernetes control plane, the jobgate operator, a policy of one export per customer, and 14 export Jobs.",
        flush=True,
    )
    say("building (first run only) or reusing the local control plane binaries")
    binaries = ensure_binaries()
    say("starting a local control plane: etcd, kube-apiserver, controller-manager, scheduler, kwok")
    cluster = LocalCluster(bin_dir=binaries)
    cluster.start()
    access = cluster.access()
    api = access.api_client()
    with tempfile.TemporaryDirectory(prefix="jobgate-demo-") as logs:
        operator = OperatorProcess(access.kubeconfig, [NAMESPACE], Path(logs), "--leader-election-namespace", NAMESPACE)
        try:
            say("installing the ConcurrencyPolicy CRD")
            access.kubectl("apply", "-f", str(CRD_FILE))
            access.kubectl("wait", "--for=condition=Established", "crd/concurrencypolicies.jobgate.dev")
            access.kubectl("create", "namespace", NAMESPACE)
            say("starting the jobgate operator (jobgate run)")
            operator.start()
            say(f"kubectl apply -f {POLICY_FILE.relative_to(REPO)}")
            access.kubectl("apply", "-n", NAMESPACE, "-f", str(POLICY_FILE))
            policy_body = kubernetes.client.CustomObjectsApi(api).get_namespaced_custom_object(
                "jobgate.dev", "v1alpha1", NAMESPACE, "concurrencypolicies", "one-export-per-customer"
            )
            policy = ConcurrencyPolicy.from_body(policy_body)
            with JobWatch(api, NAMESPACE) as watch:
                watch.govern(policy)
                total = len(job_durations())
                say(f"kubectl apply -f {JOBS_FILE.relative_to(REPO)}  ({total} labeled Jobs)")
                access.kubectl("apply", "-n", NAMESPACE, "-f", str(JOBS_FILE))
                started = time.monotonic()
                deadline = started + TIMEOUT
                with watch.changed:
                    while not watch.all_finished(total):
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"the demo's Jobs did not finish within {TIMEOUT:.0f}s")
                        screen.paint(*frame(screen, watch, policy, started))
                        watch.changed.wait(0.5)
                    makespan = time.monotonic() - started
                    screen.paint(*frame(screen, watch, policy, started))
                    text, ok = summary(watch, policy, makespan)
            print(text)
            say("tearing everything down")
            return ok
        except Exception:
            print(f"--- jobgate log ---\n{operator.log_tail(40)}", file=sys.stderr)
            raise
        finally:
            operator.stop()
            api.close()
            access.close()
            cluster.stop()


def main() -> int:
    try:
        return 0 if run_demo() else 1
    except (BuildError, ClusterStartError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
