"""The `jobgate` command (also `kubectl jobgate`): `run` the operator, look at the queues, act on them.

Flags follow kubectl's: --kubeconfig, --context, -n/--namespace,
-A/--all-namespaces and --request-timeout go before or after the command;
-o table|wide|json|yaml|name|jsonpath=...; every error is one line on stderr
with a documented exit code. Kopf and the engine are imported only by `run`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from jobgate.core.jobs import PRIORITY_MAX, PRIORITY_MIN
from jobgate.service.options import add_run_arguments

if TYPE_CHECKING:
    from jobgate.cli.annotate import Change
    from jobgate.cli.reader import Cluster
    from jobgate.cli.render import Report
    from jobgate.core.jobs import JobView
    from jobgate.core.policy import ConcurrencyPolicy

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_CONFLICT = 4
WRITE_ATTEMPTS = 5  # reads and patches of one Job before giving up on a Job that keeps changing

EXIT_CODES = """\
exit codes:
  0  done
  1  not found: the namespace, Job or policy does not exist, or jobgate's CRD is not installed
  2  usage error, or a label selector the API server refuses
  3  cannot reach the cluster: no usable kubeconfig, no answer from the API, or not allowed
  4  a Job kept changing while hold, unhold or prioritize wrote it: run it again
  130  interrupted (Ctrl-C); status --watch ends with 0"""

GLOBAL_FLAGS = """\
--kubeconfig, --context, -n/--namespace, -A/--all-namespaces and --request-timeout
go before or after the command, as with kubectl."""

EXAMPLES = (
    """\
examples:
  {prog} status                          per key: running/max, queued, oldest wait (current namespace)
  {prog} status -A --watch               the same for every namespace, redrawn every 2 s
  {prog} queue -n billing                every queued Job with its position and estimated start
  {prog} why -n billing export-42-7      why this Job waits, for which Jobs, and until about when
  {prog} hold -n billing export-42-7     keep it queued; `unhold` to let it go
  {prog} prioritize export-42-7 100      admit it before lower priorities
  {prog} status -o json | jq .           for scripts; also -o yaml|name|jsonpath=TEMPLATE
  {prog} completion bash                 shell completion (bash, zsh, fish)

  As a kubectl plugin, with kubectl-jobgate on PATH: kubectl jobgate status -A

"""
    + GLOBAL_FLAGS
    + """

The read commands need get/list on jobs and concurrencypolicies; hold, unhold
and prioritize need what `kubectl annotate jobs` needs: get and patch on jobs.
Counts and positions come from the same code that the operator decides with.
Colour only on a terminal, and never when NO_COLOR is set.

"""
    + EXIT_CODES
)

STATUS_EPILOG = (
    """\
Keys are sorted busiest first (most queued, then most running), as in the
policy's status.busiestKeys; keys that have only held Jobs are counted in HELD
but not listed. NOTE says how many queued Jobs fit in free slots now: jobgate
admits them at its next decision (if that stays, is the operator running?).

--watch reads again every --interval seconds: on a terminal it redraws the
screen; otherwise it prints the report again, after a line with the time, each
time a count changes. Ctrl-C ends it.

examples:
  {prog} status                          every policy of the current namespace
  {prog} status -n billing exports       one policy
  {prog} status -A --limit 5             5 busiest keys per policy, all namespaces
  {prog} status -o name                  concurrencypolicy.jobgate.dev/NAME per policy

ClusterConcurrencyPolicies (when jobgate's CRD for them is installed and you may
read them) are shown with -A, and with -n for the namespaces they select, as
NAME (cluster-wide): their counts take every namespace's Jobs.

output fields (-o json|yaml|jsonpath):
  namespace                      the namespace read; null with -A
  policies[]                     by namespace, then name
    namespace, name, keyLabels, maxConcurrent   namespace "": a ClusterConcurrencyPolicy
    running, queued, held        Jobs over all keys
    keys                         keys that have running or queued Jobs
    moreKeys                     keys left out by --limit
    maxQueued, overflow          the bound of each key's queue (null: none), and Reject or ReplaceOldest
    busiestKeys[]                most queued first, then most running
      key                        {{label: value}}; a missing label is ""
      running, queued, held      Jobs of this key
      maxConcurrent, ownLimit    the key's limit, and whether spec.limits gives it its own
      oldestWaitSeconds          now - queued-at (else creation) of its longest-waiting queued Job; null if none
      admissible                 its queued Jobs that jobgate admits at its next decision

"""
    + EXIT_CODES
)

ESTIMATES = """\
EST. START is an estimate of when the Job starts, from its position in its
key's queue, how long the Jobs holding the key's slots have run, and the
median run time (startTime to completion) of the key's most recent finished
Jobs that the API still holds (up to 20; if the key has none, those of the
policy's other keys; `wide` and the JSON say which). It assumes that no Job
jumps the line and that run times stay typical: for Jobs that all run as long,
it is exact up to the cluster's own delay between one Job ending and the next
one starting (about a second per Job ahead on a quiet cluster). "unknown":
no finished Job to learn from, or the policy is paused."""

QUEUE_EPILOG = (
    """\
Without POLICY: the queue of every policy of the namespace (-A: of every
namespace). # is the Job's rank in the policy's whole queue, in admission
order (higher jobgate.dev/priority first, then older, then by name). POSITION
is its place in its key's queue: 1 is the next to be admitted for its key, as
soon as the key has a free slot (and every other policy that governs it has
one too). -l and --key show fewer Jobs, with their ranks and positions in the
whole queue. A ClusterConcurrencyPolicy's queue holds Jobs of every namespace
it selects: they are named NAMESPACE/NAME.

"""
    + ESTIMATES
    + """

examples:
  {prog} queue -n billing exports
  {prog} queue -n billing exports --key customer-id=42
  {prog} queue -A -l team=data -o wide
  {prog} queue exports -o jsonpath='{{range .jobs[*]}}{{.name}} {{.estimatedStart.at}}{{"\\n"}}{{end}}'

output fields (-o json|yaml|jsonpath), for one POLICY (else {{namespace, queues: [...]}}):
  namespace, policy, keyLabels, maxConcurrent
  keyFilter                      the --key values, {{label: value}}
  queued                         queued Jobs of the policy, all keys
  matching                       of those, the ones --key and -l select
  more                           matching Jobs left out by --limit
  jobs[]                         in admission order
    name, key, priority
    rank                         1-based, in the policy's whole queue
    position                     1-based, in its key's queue (1 = next for its key)
    keyQueued                    length of its key's queue
    running, maxConcurrent       running Jobs of its key, and its limit (its own in spec.limits, or the policy's)
    waitingSeconds               now - jobgate.dev/queued-at, else creationTimestamp
    admitNext                    true if jobgate admits it at its next decision
    estimatedStart               inSeconds (from now; null: unknown), at (RFC 3339), basis (what it rests on)

"""
    + EXIT_CODES
)

WHY_EPILOG = (
    """\
Answers with the Job's state: running (holds a slot), finished, held
(annotation jobgate.dev/hold: "true"), queued (and for what: each governing
policy, the Job's key there, running/max, the Jobs that hold the slots and how
long they have run, its position in that key's queue, and its estimated
start), or suspended with no policy governing it (and why each policy of the
namespace does not match). With -A, the Job is looked for in every namespace.

SLOT: free; taken (free now, but going to other Jobs at the next decision);
full (running = maxConcurrent); paused (maxConcurrent 0).

"""
    + ESTIMATES
    + """

examples:
  {prog} why -n billing export-42-7
  {prog} why export-42-7 -o jsonpath='{{.estimatedStart.inSeconds}}'

output fields (-o json|yaml|jsonpath):
  namespace, name
  state                          running | finished | held | queued | suspended (no policy governs it)
  summary                        the answer in a sentence or two
  admitNext                      jobgate admits it at its next decision
  release                        jobgate unsuspends it at its next decision (it queued it; no policy governs it now)
  resuspend                      jobgate suspends it again (unsuspended by someone else, over a limit)
  evict                          jobgate deletes it: newer Jobs fill its key's queue (overflow: ReplaceOldest)
  waitingSeconds                 for a suspended Job: now - queued-at (else creation); else null
  estimatedStart                 for a queued Job: inSeconds (null: unknown), at, basis; else null
  policies[]                     the policies that govern it
    policy, key, missingLabels   its key there; missing key labels count as ""
    clusterScoped                a ClusterConcurrencyPolicy
    acrossNamespaces             its key counts the Jobs of every namespace it selects
    running, maxConcurrent       Jobs holding the key's slots, and the key's limit
    ownLimit                     the key has its own limit (spec.limits)
    runningJobs, runningSeconds  their names, in admission order, and how long each has run
    queued, position             the key's queue length, and the Job's place in it (null if not queued)
    slot                         free | taken | full | paused
  unmatchedPolicies[]            the namespace's other policies, and the cluster policies
    policy, reason               why its selector (or namespaceSelector) does not match the Job

"""
    + EXIT_CODES
)

WRITE_EPILOG = (
    """\
Writes the annotation {annotation}, with a JSON patch that
tests the Job's uid and the annotation's value as read, so that it never
undoes a change made meanwhile (it reads again and retries). Prints what
changed. Needs get and patch on jobs, as `kubectl annotate` does.

{effect}

examples:
{examples}

"""
    + EXIT_CODES
)

HOLD_EFFECT = """A held Job stays queued (suspended) until
unheld; holding a running Job does not stop it."""
UNHOLD_EFFECT = """The Job queues again in its place (by priority,
then age): jobgate admits it when its key has a free slot."""
PRIORITIZE_EFFECT = f"""Queued Jobs with a higher priority are
admitted first (then older first); never past a limit. N: an integer from
{PRIORITY_MIN} to {PRIORITY_MAX}; 0 is the default."""


class UsageError(Exception):
    """Arguments that parse but do not fit, e.g. --key with a label the policy does not key on."""


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, with where to look, as kubectl prints them."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message} (see '{self.prog} --help')\n")


# --- the command line ----------------------------------------------------------------------------


def build_parser(prog: str = "jobgate") -> Parser:
    parser = Parser(
        prog=prog,
        description="Limit how many Kubernetes Jobs run at once per value of a label.",
        epilog=EXAMPLES.format(prog=prog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}", help="print the version")
    _cluster_flags(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_parser = commands.add_parser("run", help="run the operator", description="Run the jobgate operator.")
    add_run_arguments(run_parser)
    run_parser.set_defaults(handler=run_operator)

    status = _command(commands, prog, "status", "per policy and key: running/max, queued, oldest wait", STATUS_EPILOG)
    status.add_argument("policy", nargs="?", metavar="POLICY", help="only this ConcurrencyPolicy")
    status.add_argument("--limit", type=_count, default=20, metavar="N", help="keys per policy (default 20; 0: all)")
    status.add_argument("-w", "--watch", action="store_true", help="read and show again every --interval seconds")
    status.add_argument("--interval", type=_seconds, default=2.0, metavar="SECONDS", help="for --watch (default 2)")
    status.set_defaults(handler=inspect, inspection=status_of)

    queue = _command(commands, prog, "queue", "queued Jobs in admission order, with estimated starts", QUEUE_EPILOG)
    queue.add_argument("policy", nargs="?", metavar="POLICY", help="the ConcurrencyPolicy (default: every one)")
    queue.add_argument(
        "--key",
        action="append",
        type=_label_value,
        default=[],
        metavar="LABEL=VALUE",
        help="only Jobs whose key has this value (repeatable, for policies with several key labels)",
    )
    _selector_flag(queue)
    queue.add_argument("--limit", type=_count, default=50, metavar="N", help="Jobs per policy (default 50; 0: all)")
    queue.set_defaults(handler=inspect, inspection=queue_of)

    why = _command(commands, prog, "why", "why a Job waits, for whom, and until about when", WHY_EPILOG)
    why.add_argument("job", metavar="JOB", help="the Job's name")
    why.set_defaults(handler=inspect, inspection=why_of)

    examples = f"  {prog} hold -n billing export-42-7 export-42-8\n  {prog} hold -n billing -l customer-id=42"
    hold = _command(
        commands,
        prog,
        "hold",
        'keep Jobs queued: jobgate.dev/hold: "true"',
        WRITE_EPILOG.replace("{annotation}", 'jobgate.dev/hold: "true"')
        .replace("{effect}", HOLD_EFFECT)
        .replace("{examples}", examples),
        outputs=WRITE_OUTPUTS,
    )
    examples = f"  {prog} unhold -n billing export-42-7\n  {prog} unhold -A -l customer-id=42"
    unhold = _command(
        commands,
        prog,
        "unhold",
        "release a hold: remove jobgate.dev/hold",
        WRITE_EPILOG.replace("{annotation}", "jobgate.dev/hold (removes it)")
        .replace("{effect}", UNHOLD_EFFECT)
        .replace("{examples}", examples),
        outputs=WRITE_OUTPUTS,
    )
    for command, action in ((hold, "hold"), (unhold, "unhold")):
        command.add_argument("jobs", nargs="*", metavar="JOB", help="the Jobs' names (or -l)")
        _selector_flag(command)
        command.set_defaults(handler=annotate, action=action)
    examples = (
        f"  {prog} prioritize -n billing export-42-7 100\n  {prog} prioritize export-42-7 0   back to the default"
    )
    prioritize = _command(
        commands,
        prog,
        "prioritize",
        "set a Job's jobgate.dev/priority",
        WRITE_EPILOG.replace("{annotation}", "jobgate.dev/priority: N")
        .replace("{effect}", PRIORITIZE_EFFECT)
        .replace("{examples}", examples),
        outputs=WRITE_OUTPUTS,
    )
    prioritize.add_argument("jobs", nargs=1, metavar="JOB", help="the Job's name")
    prioritize.add_argument("priority", type=_priority, metavar="N", help=f"{PRIORITY_MIN}..{PRIORITY_MAX}")
    prioritize.set_defaults(handler=annotate, action="prioritize", selector=None)

    completion = commands.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh, fish)",
        description="Print a completion script for the shell: commands, flags, -o values, and the names of "
        "policies and Jobs (read from the cluster as you type).",
        epilog=COMPLETION_EPILOG.format(prog=prog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    completion.add_argument("shell", choices=("bash", "zsh", "fish"), metavar="SHELL", help="bash, zsh or fish")
    completion.set_defaults(handler=print_completion)
    return parser


COMPLETION_EPILOG = """\
examples:
  source <({prog} completion bash)                      # bash, this shell; add it to ~/.bashrc to keep it
  {prog} completion zsh > "${{fpath[1]}}/_jobgate"        # zsh
  {prog} completion fish > ~/.config/fish/completions/jobgate.fish

As a kubectl plugin (kubectl >= 1.26), `kubectl jobgate <TAB>` completes through
kubectl_complete-jobgate, installed with the package: no script needed."""

READ_OUTPUTS = "table (default), wide, json, yaml, name, jsonpath=TEMPLATE (kubectl's JSONPath)"
WRITE_OUTPUTS = "table (default: a line per Job), json, yaml, name, jsonpath=TEMPLATE"


def _command(
    commands: argparse._SubParsersAction[Parser],
    prog: str,
    name: str,
    summary: str,
    epilog: str,
    outputs: str = READ_OUTPUTS,
) -> Parser:
    parser = commands.add_parser(
        name,
        help=summary,
        description=summary[:1].upper() + summary[1:] + ".",
        epilog=epilog.replace("{prog}", prog).replace("{{", "{").replace("}}", "}"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-o", "--output", type=_output, default="table", metavar="FORMAT", help=outputs)
    _cluster_flags(parser, top=False)
    return parser


def _cluster_flags(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """kubectl's connection and scope flags, before the command (``top``) or after it.

    Before it, they go to ``top_*`` and are merged in ``parse_args``; after it,
    they are absent unless given (SUPPRESS), so that they override those before.
    """
    prefix, default = ("top_", None) if top else ("", argparse.SUPPRESS)
    group = parser.add_argument_group("cluster flags (before or after the command)")
    group.add_argument(
        "--kubeconfig",
        dest=prefix + "kubeconfig",
        default=default,
        metavar="FILE",
        help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)",
    )
    group.add_argument(
        "--context", dest=prefix + "context", default=default, help="kubeconfig context (default: its current)"
    )
    group.add_argument(
        "-n",
        "--namespace",
        dest=prefix + "namespace",
        default=default,
        metavar="NS",
        help="namespace (default: the kubeconfig context's)",
    )
    group.add_argument(
        "-A",
        "--all-namespaces",
        dest=prefix + "all_namespaces",
        action="store_const",
        const=True,
        default=default,
        help="every namespace",
    )
    group.add_argument(
        "--request-timeout",
        dest=prefix + "request_timeout",
        type=_duration,
        default=default,
        metavar="DURATION",
        help="give up on a request after this long: 30s, 1m, 500ms; 0: never (default: 10s to connect, 60s to read)",
    )


def _selector_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-l",
        "--selector",
        metavar="SELECTOR",
        help="only the Jobs this label selector selects, as kubectl -l: 'customer-id=42', 'tier in (a,b)', '!debug'",
    )


CLUSTER_FLAGS = ("kubeconfig", "context", "namespace", "all_namespaces", "request_timeout")


def parse_args(argv: Sequence[str] | None = None, prog: str = "jobgate") -> argparse.Namespace:
    """Parse, and merge the cluster flags given before the command with those after it."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    top = {name: getattr(args, "top_" + name) for name in CLUSTER_FLAGS}
    if args.command == "run":
        if top["request_timeout"] is not None:
            parser.error("--request-timeout is for the commands that read or write the cluster, not for run")
        args.kubeconfig = args.kubeconfig or top["kubeconfig"]
        args.context = args.context or top["context"]
        if top["namespace"] and not args.namespaces:
            args.namespaces = [top["namespace"]]
        args.all_namespaces = bool(args.all_namespaces or top["all_namespaces"])
        if args.namespaces and args.all_namespaces:
            parser.error("-n/--namespace and -A/--all-namespaces cannot be used together")
        return args
    for name in CLUSTER_FLAGS:
        if getattr(args, name, None) is None:
            setattr(args, name, top[name])
    args.all_namespaces = bool(args.all_namespaces)
    if args.namespace and args.all_namespaces:
        parser.error("-n/--namespace and -A/--all-namespaces cannot be used together")
    if getattr(args, "jobs", None) is not None and args.command in ("hold", "unhold"):
        if args.jobs and args.selector:
            parser.error(f"{args.command}: name Jobs or give -l, not both")
        if not args.jobs and not args.selector:
            parser.error(f"{args.command}: name at least one Job, or give -l SELECTOR")
    if args.all_namespaces and args.command in ("hold", "unhold") and args.jobs:
        parser.error(f"{args.command} -A needs -l SELECTOR; to name Jobs, give their namespace with -n")
    return args


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got '{text}'")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got '{text}'")
    return value


def _priority(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer priority, got '{text}'") from None
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise argparse.ArgumentTypeError(f"priority must be from {PRIORITY_MIN} to {PRIORITY_MAX}, got {value}")
    return value


def _label_value(text: str) -> tuple[str, str]:
    label, sep, value = text.partition("=")
    if not sep or not label:
        raise argparse.ArgumentTypeError(f"expected LABEL=VALUE, e.g. customer-id=42, got '{text}'")
    return label, value


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(text: str) -> float:
    """kubectl's --request-timeout: a Go duration (1m30s, 500ms) or whole seconds; 0 means no limit."""
    if re.fullmatch(r"\d+", text):
        return float(text)
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"expected a duration such as 30s, 1m or 500ms, got '{text}'")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def _output(text: str) -> str:
    if text in ("table", "wide", "json", "yaml", "name"):
        return text
    if text.startswith("jsonpath="):
        from jobgate.cli.jsonpath import TemplateError, check_template

        try:
            check_template(text.removeprefix("jsonpath="))
        except TemplateError as e:
            raise argparse.ArgumentTypeError(f"bad jsonpath template: {e}") from None
        return text
    raise argparse.ArgumentTypeError(
        f"unknown output format '{text}': use table, wide, json, yaml, name or jsonpath=TEMPLATE"
    )


def _version() -> str:
    try:
        return version("jobgate")
    except PackageNotFoundError:
        return "unknown"


# --- reading ------------------------------------------------------------------------------------


def _connect(args: argparse.Namespace) -> Cluster:
    from jobgate.cli.reader import TIMEOUT, connect

    timeout = TIMEOUT if args.request_timeout is None else (args.request_timeout or None)
    return connect(args.kubeconfig, args.context, timeout)


def inspect(args: argparse.Namespace) -> int:
    """Run status, queue or why: read the cluster, compute the report, print it (again, with --watch)."""
    if getattr(args, "watch", False):
        return watch(args)
    return _guarded(lambda: _show(_read(args), args))


def _read(args: argparse.Namespace) -> Report:
    cluster = _connect(args)
    try:
        report: Report = args.inspection(cluster, args, time.time())
    finally:
        cluster.close()
    return report


def _show(report: Report, args: argparse.Namespace) -> int:
    from jobgate.cli.render import render, use_colour

    colour = args.output in ("table", "wide") and use_colour(sys.stdout, os.environ)
    _write(render(report, args.output, colour, width=shutil.get_terminal_size((100, 24)).columns))
    return EXIT_OK


def _write(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _guarded(action: Callable[[], int]) -> int:
    """Run ``action``; each error the CLI knows becomes one line on stderr and its exit code."""
    try:
        return action()
    except Exception as e:
        return _fail(e, _exit_code(e))


def _exit_code(error: Exception) -> int:
    """The documented exit code of an error the CLI knows; others are raised again (a bug: a traceback)."""
    from jobgate.cli.reader import Conflict, NotFound, Rejected, Unreachable

    codes: list[tuple[type[Exception] | tuple[type[Exception], ...], int]] = [
        (NotFound, EXIT_NOT_FOUND),
        ((UsageError, Rejected), EXIT_USAGE),
        (Unreachable, EXIT_UNREACHABLE),
        (Conflict, EXIT_CONFLICT),
    ]
    for kinds, code in codes:
        if isinstance(error, kinds):
            return code
    raise error


def watch(args: argparse.Namespace) -> int:
    """`status --watch`: redraw on a terminal; elsewhere append the report each time a count changes."""
    from jobgate.cli.render import render, use_colour

    tty = sys.stdout.isatty()
    colour = args.output in ("table", "wide") and use_colour(sys.stdout, os.environ)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(EXIT_OK))
    last = None
    try:
        while True:
            try:
                report = _read(args)
            except Exception as e:
                code = _fail(e, _exit_code(e))
                if code != EXIT_UNREACHABLE:  # a deleted policy does not come back; a network may
                    return code
            else:
                text = render(report, args.output, colour, width=shutil.get_terminal_size((100, 24)).columns)
                if tty:
                    _write(f"\x1b[H\x1b[2JEvery {args.interval:g}s: {time.strftime('%H:%M:%S')}\n\n{text}")
                else:
                    counts = _counts(report)
                    if counts != last:
                        _write(("\n" if last is not None else "") + time.strftime("--- %H:%M:%S\n") + text)
                    last = counts
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return EXIT_OK


def _counts(report: Report) -> str:
    """The report without what changes with the clock alone: what a change is, for --watch."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not k.endswith("Seconds") and k != "estimatedStart"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return json.dumps(strip(report.as_dict()), sort_keys=True)


@dataclass(frozen=True)
class _Scope:
    """The policies a report shows, and what deciding for them needs."""

    shown: list[ConcurrencyPolicy]  # the namespace's own and the cluster policies that reach it; or all
    policies: list[ConcurrencyPolicy]  # every policy that may govern the Jobs read
    namespaces: dict[str, dict[str, str]]  # the Namespaces' labels, when a cluster policy is shown
    jobs_from: str | None  # where to read Jobs: a cluster policy's keys span every namespace


def _scope(cluster: Cluster, namespace: str | None) -> _Scope:
    from jobgate.core.admission import reaches

    own = cluster.policies(namespace)
    cluster_wide = cluster.cluster_policies()
    labels = cluster.namespace_labels() if cluster_wide else {}
    reaching = [p for p in cluster_wide if namespace is None or reaches(p, namespace, labels)]
    if not reaching:
        return _Scope(own, own, {}, namespace)
    everywhere = own if namespace is None else cluster.policies(None)
    return _Scope([*own, *reaching], [*everywhere, *cluster_wide], labels, None)


def status_of(cluster: Cluster, args: argparse.Namespace, now: float) -> Report:
    from jobgate.cli.report import status_report

    namespace = None if args.all_namespaces else args.namespace or cluster.namespace
    scope = _scope(cluster, namespace)
    only = scope.shown
    if args.policy is not None:
        only = [p for p in scope.shown if p.name == args.policy]
        if not only:
            raise _policy_missing(cluster, namespace, args.policy)
    elif not scope.shown and namespace is not None:
        _require_namespace(cluster, namespace)
    jobs = cluster.jobs(scope.jobs_from) if scope.shown else []
    return status_report(namespace, scope.policies, jobs, now, args.limit, only, scope.namespaces)


def queue_of(cluster: Cluster, args: argparse.Namespace, now: float) -> Report:
    from jobgate.cli.report import queue_list

    namespace = None if args.all_namespaces else args.namespace or cluster.namespace
    scope = _scope(cluster, namespace)
    shown = scope.shown if args.policy is None else [p for p in scope.shown if p.name == args.policy]
    if args.policy is not None and not shown:
        raise _policy_missing(cluster, namespace, args.policy)
    if not scope.shown and namespace is not None:
        _require_namespace(cluster, namespace)
    key_filter = dict(args.key)
    for policy in shown if key_filter else ():
        unknown = sorted(set(key_filter) - set(policy.spec.keyLabels))
        if unknown:
            labels = ", ".join(policy.spec.keyLabels) or "none"
            raise UsageError(f"policy '{policy.name}' has no key label {', '.join(unknown)} (its key labels: {labels})")
    jobs, runs = cluster.jobs_and_runs(scope.jobs_from) if scope.shown else ([], {})
    selected = None if args.selector is None else {j.uid for j in cluster.selected(scope.jobs_from, args.selector)}
    queues = queue_list(
        namespace, shown, scope.policies, jobs, now, key_filter, args.limit, runs, selected, scope.namespaces
    )
    if args.policy is not None and not args.all_namespaces:
        return queues.queues[0]
    return queues


def why_of(cluster: Cluster, args: argparse.Namespace, now: float) -> Report:
    from jobgate.cli.report import why_report

    job = _find_job(cluster, args, args.job)
    scope = _scope(cluster, job.namespace)
    jobs, runs = cluster.jobs_and_runs(scope.jobs_from) if scope.shown else ([job], {})
    return why_report(job, scope.policies, jobs, now, runs, scope.namespaces)


def _find_job(cluster: Cluster, args: argparse.Namespace, name: str) -> JobView:
    """The named Job in -n's namespace (else the context's), or in the only namespace that has it with -A."""
    from jobgate.cli.reader import NotFound

    if args.all_namespaces:
        found = cluster.named_jobs(name)
        if not found:
            raise NotFound(f"Job '{name}' not found in any namespace")
        if len(found) > 1:
            where = ", ".join(sorted(j.namespace for j in found))
            raise UsageError(f"Job '{name}' exists in namespaces {where}: give one with -n")
        return found[0]
    namespace = args.namespace or cluster.namespace
    job = cluster.job(namespace, name)
    if job is None:
        _require_namespace(cluster, namespace)
        raise NotFound(f"Job '{name}' not found in namespace '{namespace}'")
    return job


def _require_namespace(cluster: Cluster, namespace: str) -> None:
    from jobgate.cli.reader import NotFound

    if not cluster.namespace_exists(namespace):
        raise NotFound(f"namespace '{namespace}' not found")


def _policy_missing(cluster: Cluster, namespace: str | None, name: str) -> Exception:
    from jobgate.cli.reader import NotFound

    if namespace is None:
        return NotFound(f"no ConcurrencyPolicy named '{name}' in any namespace")
    _require_namespace(cluster, namespace)
    return NotFound(f"ConcurrencyPolicy '{name}' not found in namespace '{namespace}'")


# --- writing ------------------------------------------------------------------------------------


def annotate(args: argparse.Namespace) -> int:
    """hold, unhold, prioritize: one annotation on each Job; a line per Job, errors after."""
    from jobgate.cli.annotate import ChangeReport, wanted
    from jobgate.cli.reader import NotFound

    annotation, value = wanted(args.action, getattr(args, "priority", None))
    changes = []
    errors: list[tuple[Exception, int]] = []

    def run() -> int:
        cluster = _connect(args)
        try:
            for namespace, name in _targets(cluster, args):
                try:
                    changes.append(_annotate_one(cluster, namespace, name, annotation, value))
                except NotFound as e:  # the others are still written, as kubectl annotate does
                    errors.append((e, EXIT_NOT_FOUND))
        finally:
            cluster.close()
        return EXIT_OK

    code = _guarded(run)
    if changes or code == EXIT_OK:
        _show(ChangeReport(changes), args)
    for error, error_code in errors:
        code = code or _fail(error, error_code)
    return code


def _targets(cluster: Cluster, args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    if args.selector is not None:
        namespace = None if args.all_namespaces else args.namespace or cluster.namespace
        found = cluster.selected(namespace, args.selector)
        if not found:
            raise _no_selected(cluster, namespace, args.selector)
        for job in sorted(found, key=lambda j: (j.namespace, j.name)):
            yield job.namespace, job.name
        return
    for name in args.jobs:
        if args.all_namespaces:
            yield _find_job(cluster, args, name).namespace, name
        else:
            yield args.namespace or cluster.namespace, name


def _no_selected(cluster: Cluster, namespace: str | None, selector: str) -> Exception:
    from jobgate.cli.reader import NotFound

    if namespace is not None:
        _require_namespace(cluster, namespace)
    where = "any namespace" if namespace is None else f"namespace '{namespace}'"
    return NotFound(f"no Job in {where} matches the selector '{selector}'")


def _annotate_one(cluster: Cluster, namespace: str, name: str, annotation: str, value: str | None) -> Change:
    """Read, decide the patch, write it; on a failed test (the Job changed), read again."""
    from jobgate.cli.annotate import Change, annotation_patch, note_for
    from jobgate.cli.reader import Conflict, NotFound

    for _ in range(WRITE_ATTEMPTS):
        body = cluster.job_body(namespace, name)
        if body is None:
            _require_namespace(cluster, namespace)
            raise NotFound(f"Job '{name}' not found in namespace '{namespace}'")
        before = (body["metadata"].get("annotations") or {}).get(annotation)
        patch = annotation_patch(body, annotation, value)
        if patch is not None:
            try:
                body = cluster.patch_job(namespace, name, patch)
            except Conflict:
                continue
        return Change(namespace, name, annotation, before, value, patch is not None, note_for(body, annotation))
    raise Conflict(f"Job '{name}' in namespace '{namespace}' kept changing while it was written: run it again")


# --- the rest -----------------------------------------------------------------------------------


def print_completion(args: argparse.Namespace) -> int:
    from jobgate.cli.completion import script

    _write(script(args.shell, _prog_name()))
    return EXIT_OK


def run_operator(args: argparse.Namespace) -> int:
    # Imported here: Kopf and the engine double the start-up time of every other command.
    from jobgate.service.run import run

    return run(args)


def _fail(error: Exception, code: int) -> int:
    print(f"error: {error}", file=sys.stderr)
    return code


def _prog_name() -> str:
    """`kubectl jobgate` when kubectl runs us as its plugin, else `jobgate`."""
    return "kubectl jobgate" if Path(sys.argv[0]).name.startswith("kubectl-") else "jobgate"


def _quiet_libraries() -> None:
    """No library noise on stderr: the CLI says what matters in its own one-line errors.

    The kubernetes client logs errors to the root logger (a failed credential
    plugin: reader.connect turns them into an error), urllib3 logs retries and
    warns on every request without TLS verification (insecure-skip-tls-verify).
    """
    logging.getLogger().addHandler(logging.NullHandler())  # else Python's last resort prints them
    warnings.simplefilter("ignore")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["__complete"]:  # what the completion scripts call: see completion.py
        from jobgate.cli.completion import complete_command

        _write(complete_command(argv[1:], _prog_name()))
        return EXIT_OK
    args = parse_args(argv, _prog_name())
    if args.command == "run":
        code: int = args.handler(args)
        return code
    _quiet_libraries()
    try:
        code = args.handler(args)
    except KeyboardInterrupt:  # Ctrl-C: stop, as kubectl does, without a traceback
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
