"""The `jobgate` command (also `kubectl jobgate`): `run` the operator, or look at the queues."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from jobgate.cli.reader import Cluster, NotFound, Unreachable, connect
from jobgate.cli.render import OUTPUTS, Report, render, use_colour
from jobgate.cli.report import queue_report, status_report, why_report
from jobgate.service import run

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

EXIT_CODES = """\
exit codes:
  0  done
  1  not found: the namespace, Job or policy does not exist, or jobgate's CRD is not installed
  2  usage error
  3  cannot reach the cluster: no kubeconfig, no answer from the API, or not allowed to read"""

EXAMPLES = (
    """\
examples:
  {prog} status                          per key: running/max, queued, oldest wait (current namespace)
  {prog} status -A                       the same for every namespace
  {prog} queue -n billing exports        the queue of policy 'exports' in admission order
  {prog} why -n billing export-42-7      why this Job waits, and for which Jobs
  {prog} status -o json | jq .           for scripts; also -o yaml

  As a kubectl plugin, with kubectl-jobgate on PATH: kubectl jobgate status -A

Reads the cluster directly, as the kubeconfig's user: it needs get/list on jobs
and concurrencypolicies. Counts and positions come from the same code that the
operator decides with. Colour only on a terminal, and never when NO_COLOR is set.

"""
    + EXIT_CODES
)

STATUS_EPILOG = (
    """\
Keys are sorted busiest first (most queued, then most running), as in the
policy's status.busiestKeys; keys that have only held Jobs are counted in HELD
but not listed. NOTE says how many queued Jobs fit in free slots now: jobgate
admits them at its next decision (if that stays, is the operator running?).

examples:
  {prog} status                          every policy of the current namespace
  {prog} status -n billing exports       one policy
  {prog} status -A --limit 5             5 busiest keys per policy, all namespaces

output fields (-o json|yaml):
  namespace                      the namespace read; null with -A
  policies[]                     by namespace, then name
    namespace, name, keyLabels, maxConcurrent
    running, queued, held        Jobs over all keys
    keys                         keys that have running or queued Jobs
    moreKeys                     keys left out by --limit
    busiestKeys[]                most queued first, then most running
      key                        {{label: value}}; a missing label is ""
      running, queued, held      Jobs of this key
      oldestWaitSeconds          now - queued-at (else creation) of its longest-waiting queued Job; null if none
      admissible                 its queued Jobs that jobgate admits at its next decision

"""
    + EXIT_CODES
)

QUEUE_EPILOG = (
    """\
# is the Job's rank in the policy's whole queue, in admission order (higher
jobgate.dev/priority first, then older, then by name). POSITION is its place in
its key's queue: 1 is the next to be admitted for its key, as soon as the key
has a free slot (and every other policy that governs it has one too).

examples:
  {prog} queue -n billing exports
  {prog} queue -n billing exports --key customer-id=42
  {prog} queue -n billing exports -o json | jq -r '.jobs[] | select(.position == 1) | .name'

output fields (-o json|yaml):
  namespace, policy, keyLabels, maxConcurrent
  keyFilter                      the --key values, {{label: value}}
  queued                         queued Jobs of the policy, all keys
  matching                       of those, the ones --key selects
  more                           matching Jobs left out by --limit
  jobs[]                         in admission order
    name, key, priority
    rank                         1-based, in the policy's whole queue
    position                     1-based, in its key's queue (1 = next for its key)
    keyQueued                    length of its key's queue
    running                      running Jobs of its key (out of maxConcurrent)
    waitingSeconds               now - jobgate.dev/queued-at, else creationTimestamp
    admitNext                    true if jobgate admits it at its next decision

"""
    + EXIT_CODES
)

WHY_EPILOG = (
    """\
Answers with the Job's state: running (holds a slot), finished, held
(annotation jobgate.dev/hold: "true"), queued (and for what: each governing
policy, the Job's key there, running/max, the Jobs that hold the slots, its
position in that key's queue), or suspended with no policy governing it (and
why each policy of the namespace does not match). A queued Job that fits now
is reported as admitted at jobgate's next decision.

SLOT: free; taken (free now, but going to other Jobs at the next decision);
full (running = maxConcurrent); paused (maxConcurrent 0).

examples:
  {prog} why -n billing export-42-7
  {prog} why export-42-7 -o json | jq -r .summary

output fields (-o json|yaml):
  namespace, name
  state                          running | finished | held | queued | suspended (no policy governs it)
  summary                        the answer in a sentence or two
  admitNext                      jobgate admits it at its next decision
  release                        jobgate unsuspends it at its next decision (it queued it; no policy governs it now)
  resuspend                      jobgate suspends it again (unsuspended by someone else, over a limit)
  waitingSeconds                 for a suspended Job: now - queued-at (else creation); else null
  policies[]                     the policies that govern it
    policy, key, missingLabels   its key there; missing key labels count as ""
    running, maxConcurrent       Jobs holding the key's slots
    runningJobs                  their names, in admission order
    queued, position             the key's queue length, and the Job's place in it (null if not queued)
    slot                         free | taken | full | paused
  unmatchedPolicies[]            the namespace's other policies
    policy, reason               why its selector does not match the Job

"""
    + EXIT_CODES
)


class UsageError(Exception):
    """Arguments that parse but do not fit the cluster, e.g. --key with a label the policy does not key on."""


def build_parser(prog: str = "jobgate") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Limit how many Kubernetes Jobs run at once per value of a label.",
        epilog=EXAMPLES.format(prog=prog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=version("jobgate"), help="print the version and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_parser = commands.add_parser("run", help="run the operator", description="Run the jobgate operator.")
    run.add_run_arguments(run_parser)
    run_parser.set_defaults(handler=run.run)

    status = _inspector(
        commands,
        prog,
        "status",
        "per policy and key: running/max, queued, oldest wait",
        "Show each policy's keys, busiest first: running/max, queued and held Jobs, and the oldest wait.",
        STATUS_EPILOG,
        status_of,
    )
    scope = status.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", metavar="NS", help="namespace (default: the kubeconfig context's)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    status.add_argument("policy", nargs="?", metavar="POLICY", help="only this ConcurrencyPolicy")
    status.add_argument("--limit", type=_count, default=20, metavar="N", help="keys per policy (default 20; 0: all)")

    queue = _inspector(
        commands,
        prog,
        "queue",
        "a policy's queued Jobs in admission order, with positions",
        "List a policy's queued Jobs in admission order, with each Job's position in its key's queue.",
        QUEUE_EPILOG,
        queue_of,
    )
    queue.add_argument("-n", "--namespace", metavar="NS", help="namespace (default: the kubeconfig context's)")
    queue.add_argument("policy", metavar="POLICY", help="the ConcurrencyPolicy")
    queue.add_argument(
        "--key",
        action="append",
        type=_label_value,
        default=[],
        metavar="LABEL=VALUE",
        help="only Jobs whose key has this value (repeatable, for policies with several key labels)",
    )
    queue.add_argument("--limit", type=_count, default=50, metavar="N", help="Jobs to show (default 50; 0: all)")

    why = _inspector(
        commands,
        prog,
        "why",
        "why a Job waits: policy, key, slot holders, position",
        "Explain a Job's state: which policies govern it, its key, who holds the slots, its place in line.",
        WHY_EPILOG,
        why_of,
    )
    why.add_argument("-n", "--namespace", metavar="NS", help="namespace (default: the kubeconfig context's)")
    why.add_argument("job", metavar="JOB", help="the Job's name")
    return parser


Inspection = Callable[[Cluster, argparse.Namespace, float], Report]


def _inspector(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    prog: str,
    name: str,
    summary: str,
    description: str,
    epilog: str,
    inspection: Inspection,
) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog.format(prog=prog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-o", "--output", choices=OUTPUTS, default="table", help="table (default), json or yaml")
    parser.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context (default: its current context)")
    parser.set_defaults(handler=inspect, inspection=inspection)
    return parser


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got '{text}'")
    return value


def _label_value(text: str) -> tuple[str, str]:
    label, sep, value = text.partition("=")
    if not sep or not label:
        raise argparse.ArgumentTypeError(f"expected LABEL=VALUE, e.g. customer-id=42, got '{text}'")
    return label, value


def inspect(args: argparse.Namespace) -> int:
    """Run status, queue or why: read the cluster, compute the report, print it."""
    try:
        cluster = connect(args.kubeconfig, args.context)
        try:
            report = args.inspection(cluster, args, time.time())
        finally:
            cluster.close()
    except NotFound as e:
        return _fail(e, EXIT_NOT_FOUND)
    except UsageError as e:
        return _fail(e, EXIT_USAGE)
    except Unreachable as e:
        return _fail(e, EXIT_UNREACHABLE)
    colour = args.output == "table" and use_colour(sys.stdout, os.environ)
    text = render(report, args.output, colour, width=shutil.get_terminal_size((100, 24)).columns)
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK


def status_of(cluster: Cluster, args: argparse.Namespace, now: float) -> Report:
    namespace = None if args.all_namespaces else args.namespace or cluster.namespace
    policies = cluster.policies(namespace)
    only = None
    if args.policy is not None:
        only = [p for p in policies if p.name == args.policy]
        if not only:
            raise _policy_missing(cluster, namespace, args.policy)
    elif not policies and namespace is not None:
        _require_namespace(cluster, namespace)
    jobs = cluster.jobs(namespace) if policies else []
    return status_report(namespace, policies, jobs, now, args.limit, only)


def queue_of(cluster: Cluster, args: argparse.Namespace, now: float) -> Report:
    namespace = args.namespace or cluster.namespace
    policies = cluster.policies(namespace)
    policy = next((p for p in policies if p.name == args.policy), None)
    if policy is None:
        raise _policy_missing(cluster, namespace, args.policy)
    key_filter = dict(args.key)
    unknown = sorted(set(key_filter) - set(policy.spec.keyLabels))
    if unknown:
        labels = ", ".join(policy.spec.keyLabels) or "none"
        raise UsageError(f"policy '{policy.name}' has no key label {', '.join(unknown)} (its key labels: {labels})")
    return queue_report(policy, policies, cluster.jobs(namespace), now, key_filter, args.limit)


def why_of(cluster: Cluster, args: argparse.Namespace, now: float) -> Report:
    namespace = args.namespace or cluster.namespace
    job = cluster.job(namespace, args.job)
    if job is None:
        _require_namespace(cluster, namespace)
        raise NotFound(f"Job '{args.job}' not found in namespace '{namespace}'")
    policies = cluster.policies(namespace)
    return why_report(job, policies, cluster.jobs(namespace) if policies else [job], now)


def _require_namespace(cluster: Cluster, namespace: str) -> None:
    if not cluster.namespace_exists(namespace):
        raise NotFound(f"namespace '{namespace}' not found")


def _policy_missing(cluster: Cluster, namespace: str | None, name: str) -> NotFound:
    if namespace is None:
        return NotFound(f"no ConcurrencyPolicy named '{name}' in any namespace")
    _require_namespace(cluster, namespace)
    return NotFound(f"ConcurrencyPolicy '{name}' not found in namespace '{namespace}'")


def _fail(error: Exception, code: int) -> int:
    print(f"error: {error}", file=sys.stderr)
    return code


def _prog() -> str:
    """`kubectl jobgate` when kubectl runs us as its plugin, else `jobgate`."""
    return "kubectl jobgate" if Path(sys.argv[0]).name.startswith("kubectl-") else "jobgate"


def main(argv: list[str] | None = None) -> int:
    args = build_parser(_prog()).parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
