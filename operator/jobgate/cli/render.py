"""The CLI's output: aligned tables for people (``table``, ``wide``), and for scripts the reports'
``as_dict`` as JSON or YAML, their object names (``name``), or a kubectl JSONPath template.

Colour is the caller's choice (``use_colour``): only on a terminal, and never
when NO_COLOR is set (https://no-color.org).
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TextIO

import yaml

from jobgate.cli.annotate import ChangeReport
from jobgate.cli.jsonpath import render_template
from jobgate.cli.report import (
    KeyStatus,
    PolicySummary,
    QueueList,
    QueueReport,
    StartEstimate,
    StatusReport,
    WhyReport,
    human_duration,
)
from jobgate.core.admission import describe_key
from jobgate.core.policy import NAMESPACE_KEY

# Every -o value; "jsonpath=TEMPLATE" takes a kubectl JSONPath template (see jsonpath.py).
OUTPUTS = ("table", "wide", "json", "yaml", "name", "jsonpath=TEMPLATE")
Report = StatusReport | QueueReport | QueueList | WhyReport | ChangeReport

BOLD, DIM, RED, GREEN, YELLOW = "1", "2", "31", "32", "33"
MAX_NAMES = 5  # running Jobs named in a table cell; wide tables, JSON and YAML name them all


def use_colour(stream: TextIO, environ: Mapping[str, str]) -> bool:
    return stream.isatty() and not environ.get("NO_COLOR")


def render(report: Report, output: str, colour: bool = False, width: int = 100) -> str:
    """The report as text; ``width`` wraps the prose of tables, not their rows.

    ``output`` is one of OUTPUTS (the caller checked it).
    """
    if output == "json":
        return json.dumps(report.as_dict(), indent=2) + "\n"
    if output == "yaml":
        return yaml.safe_dump(report.as_dict(), sort_keys=False, allow_unicode=True)
    if output == "name":
        return "".join(f"{name}\n" for name in names(report))
    if output.startswith("jsonpath="):
        return render_template(output.removeprefix("jsonpath="), report.as_dict())
    paint = _Paint(colour)
    wide = output == "wide"
    if isinstance(report, StatusReport):
        lines = _status(report, paint)
    elif isinstance(report, QueueReport):
        lines = _queue(report, paint, wide)
    elif isinstance(report, QueueList):
        lines = _queues(report, paint, wide)
    elif isinstance(report, ChangeReport):
        lines = [c.summary for c in report.changes]
    else:
        lines = _why(report, paint, width, wide)
    return "\n".join(lines) + "\n"


def names(report: Report) -> list[str]:
    """What ``-o name`` prints: the objects a report is about, as kubectl names them."""
    if isinstance(report, StatusReport):
        return [
            f"{'clusterconcurrencypolicy' if not p.namespace else 'concurrencypolicy'}.jobgate.dev/{p.name}"
            for p in report.policies
        ]
    if isinstance(report, QueueReport):
        return [f"job.batch/{e.name}" for e in report.entries]
    if isinstance(report, QueueList):
        return [f"job.batch/{e.name}" for q in report.queues for e in q.entries]
    if isinstance(report, ChangeReport):
        return [f"job.batch/{c.name}" for c in report.changes]
    return [f"job.batch/{report.name}"]


def estimated(estimate: StartEstimate) -> str:
    """A table cell: "now", "~2m10s" or "unknown": always shown as an estimate."""
    if estimate.start_in is None:
        return "unknown"
    if estimate.start_in < 1:
        return "now"
    return f"~{human_duration(estimate.start_in)}"


def clock_time(epoch: float) -> str:
    """The local wall-clock time of an estimated start: 14:05:10 UTC, with the day when not today."""
    moment = datetime.fromtimestamp(epoch).astimezone()
    today = datetime.now().astimezone().date()
    return moment.strftime("%H:%M:%S %Z" if moment.date() == today else "%a %d %b %H:%M %Z")


# --- tables --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cell:
    text: str
    style: str = ""


class _Paint:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, style: str) -> str:
        if not self.enabled or not style or not text:
            return text
        return f"\x1b[{style}m{text}\x1b[0m"


def _table(header: Sequence[str], rows: Sequence[Sequence[_Cell | str]], paint: _Paint, indent: str = "") -> list[str]:
    """Columns padded to the widest plain text (so colour codes do not skew them).

    Trailing columns that are empty in every row (a NOTE without notes) are left out.
    """
    cells = [[c if isinstance(c, _Cell) else _Cell(c) for c in row] for row in rows]
    shown = len(header)
    while shown > 1 and all(not row[shown - 1].text for row in cells):
        shown -= 1
    table = [[_Cell(h, BOLD) for h in header[:shown]], *(row[:shown] for row in cells)]
    widths = [max(len(row[i].text) for row in table) for i in range(shown)]
    return [
        (
            indent + "  ".join(paint(c.text, c.style) + " " * (widths[i] - len(c.text)) for i, c in enumerate(row))
        ).rstrip()
        for row in table
    ]


def _holders(names: Sequence[str], running_for: Sequence[float], wide: bool) -> str:
    """The Jobs holding a key's slots and how long each has run: ``run-a (4m10s), run-b (20s)``."""
    held = [f"{name} ({human_duration(seconds)})" for name, seconds in zip(names, running_for, strict=True)]
    shown = ", ".join(held if wide else held[:MAX_NAMES])
    return shown + (f", +{len(held) - MAX_NAMES} more" if len(held) > MAX_NAMES and not wide else "")


def _start_sentence(estimate: StartEstimate) -> str:
    if estimate.start_in is None:
        return f"Estimated start: {estimate.basis}."
    if estimate.start_in < 1:
        return f"Estimated start: now ({estimate.basis})."
    at = f" (at {clock_time(estimate.at)})" if estimate.at is not None else ""
    return f"Estimated start: in about {human_duration(estimate.start_in)}{at}; {estimate.basis}."


def _limit(max_concurrent: int, key_labels: Sequence[str], across: bool = False) -> str:
    if max_concurrent == 0:
        return "paused (maxConcurrent 0)"
    per = f"per {','.join(key_labels)}" if key_labels else "for all its Jobs"
    return f"max {max_concurrent} {per}" + (" across namespaces" if across else "")


def _usage(running: int, max_concurrent: int) -> _Cell:
    style = RED if max_concurrent == 0 else YELLOW if running >= max_concurrent else ""
    return _Cell(f"{running}/{max_concurrent}", style)


def _status(report: StatusReport, paint: _Paint) -> list[str]:
    if not report.policies:
        where = "" if report.namespace is None else f" in namespace '{report.namespace}'"
        return [f"No ConcurrencyPolicies{where}."]
    lines: list[str] = []
    for policy in report.policies:
        if lines:
            lines.append("")
        lines.extend(_policy_status(policy, paint))
    return lines


def _across(namespace: str, key_labels: Sequence[str]) -> bool:
    """A cluster policy's keys span namespaces, unless it keys on the namespace."""
    return not namespace and NAMESPACE_KEY not in key_labels


def _title(namespace: str, name: str) -> str:
    """``team-a/exports``; a ClusterConcurrencyPolicy (no namespace) says what it is."""
    return f"{namespace}/{name}" if namespace else f"{name} (cluster-wide)"


def _policy_status(policy: PolicySummary, paint: _Paint) -> list[str]:
    title = paint(_title(policy.namespace, policy.name), BOLD)
    limit = _limit(policy.max_concurrent, policy.key_labels, _across(policy.namespace, policy.key_labels))
    if policy.max_queued is not None:
        limit += f", queue {policy.max_queued} ({policy.overflow})"
    if not policy.keys:
        held = f", {policy.held} held" if policy.held else ""
        return [f"{title}: {limit}; nothing running or queued{held}"]
    counts = f"{policy.running} running, {policy.queued} queued, {policy.held} held in {policy.keys} key(s)"
    rows = [
        [
            describe_key(k.key),
            _usage(k.running, k.max_concurrent),
            str(k.queued),
            str(k.held),
            human_duration(k.oldest_wait) if k.oldest_wait is not None else "-",
            _key_note(k, policy),
        ]
        for k in policy.busiest_keys
    ]
    lines = [f"{title}: {limit}; {counts}"]
    lines += _table(["KEY", "RUNNING", "QUEUED", "HELD", "OLDEST WAIT", "NOTE"], rows, paint, indent="  ")
    if policy.more_keys:
        lines.append(paint(f"  ... and {policy.more_keys} more key(s) (--limit 0 shows all)", DIM))
    return lines


def _key_note(k: KeyStatus, policy: PolicySummary) -> _Cell | str:
    notes = [f"{k.admissible} admitted next"] if k.admissible else []
    if k.own_limit:
        notes.append("own limit")
    if policy.max_queued is not None and k.queued >= policy.max_queued:
        notes.append(f"queue full ({k.queued}/{policy.max_queued}, {policy.overflow})")
    return _Cell("; ".join(notes), GREEN if k.admissible else "") if notes else ""


def _queues(report: QueueList, paint: _Paint, wide: bool) -> list[str]:
    if not report.queues:
        where = "" if report.namespace is None else f" in namespace '{report.namespace}'"
        return [f"No ConcurrencyPolicies{where}."]
    lines: list[str] = []
    for queue in report.queues:
        if lines:
            lines.append("")
        lines.extend(_queue(queue, paint, wide))
    return lines


def _queue(report: QueueReport, paint: _Paint, wide: bool = False) -> list[str]:
    title = paint(_title(report.namespace, report.policy), BOLD)
    scope = f" (showing {describe_key(report.key_filter)})" if report.key_filter else ""
    limit = _limit(report.max_concurrent, report.key_labels, _across(report.namespace, report.key_labels))
    lines = [f"{title}: {limit}; {report.queued} queued{scope}"]
    if not report.entries:
        lines.append("No queued Jobs" + (" for this key." if report.key_filter else "."))
        return lines
    rows = [
        [
            str(e.rank),
            e.name,
            describe_key(e.key),
            f"{e.position} of {e.key_queued}",
            str(e.priority),
            human_duration(e.waiting),
            _usage(e.running, e.max_concurrent),
            estimated(e.estimate),
            *([e.estimate.basis] if wide else []),
            _Cell("admitted next", GREEN) if e.admit_next else "",
        ]
        for e in report.entries
    ]
    header = ["#", "JOB", "KEY", "POSITION", "PRIORITY", "WAITING", "RUNNING", "EST. START"]
    lines += _table([*header, *(["BASIS"] if wide else []), "NOTE"], rows, paint)
    if report.more:
        lines.append(paint(f"... and {report.more} more queued Job(s) (--limit 0 shows all)", DIM))
    return lines


def _why(report: WhyReport, paint: _Paint, width: int, wide: bool = False) -> list[str]:
    lines = textwrap.wrap(report.summary, width=max(40, width)) or [report.summary]
    if report.waiting is not None:
        lines.append(f"Waiting for {human_duration(report.waiting)}.")
    if report.estimate is not None:
        lines += textwrap.wrap(_start_sentence(report.estimate), width=max(40, width))
    if report.governors:
        rows: list[list[_Cell | str]] = [
            [
                f"{g.policy} (cluster-wide)" if g.cluster_scoped else g.policy,
                describe_key(g.key),
                _usage(g.running, g.max_concurrent),
                f"{g.position} of {g.queued}" if g.position is not None else "-",
                _Cell(g.slot, GREEN if g.slot == "free" else YELLOW if g.slot == "taken" else RED),
                _holders(g.running_jobs, g.running_for, wide),
            ]
            for g in report.governors
        ]
        lines.append("")
        lines += _table(["POLICY", "KEY", "RUNNING", "POSITION", "SLOT", "RUNNING JOBS"], rows, paint)
    elif report.unmatched:
        lines.append("")
        lines += _table(
            ["POLICY", "WHY IT DOES NOT GOVERN THIS JOB"], [[u.policy, u.reason] for u in report.unmatched], paint
        )
    return lines
