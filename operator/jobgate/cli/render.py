"""The CLI's output: aligned tables for people, JSON or YAML (the reports' ``as_dict``) for scripts.

Colour is the caller's choice (``use_colour``): only on a terminal, and never
when NO_COLOR is set (https://no-color.org).
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TextIO

import yaml

from jobgate.cli.report import (
    KeyStatus,
    PolicySummary,
    QueueReport,
    StatusReport,
    WhyReport,
    describe_key,
)

Output = Literal["table", "json", "yaml"]
OUTPUTS: tuple[Output, ...] = ("table", "json", "yaml")
Report = StatusReport | QueueReport | WhyReport

BOLD, DIM, RED, GREEN, YELLOW = "1", "2", "31", "32", "33"
MAX_NAMES = 5  # running Jobs named in a table cell; JSON and YAML name them all


def use_colour(stream: TextIO, environ: Mapping[str, str]) -> bool:
    return stream.isatty() and not environ.get("NO_COLOR")


def render(report: Report, output: Output, colour: bool = False, width: int = 100) -> str:
    """The report as text ending with a newline; ``width`` wraps the prose of tables, not their rows."""
    if output == "json":
        return json.dumps(report.as_dict(), indent=2) + "\n"
    if output == "yaml":
        return yaml.safe_dump(report.as_dict(), sort_keys=False, allow_unicode=True)
    paint = _Paint(colour)
    if isinstance(report, StatusReport):
        lines = _status(report, paint)
    elif isinstance(report, QueueReport):
        lines = _queue(report, paint)
    else:
        lines = _why(report, paint, width)
    return "\n".join(lines) + "\n"


def human_duration(seconds: float) -> str:
    """Like kubectl's ages: 45s, 3m20s, 42m, 5h10m, 20h, 3d4h, 30d, 2y10d."""
    s = max(0, int(seconds))
    minutes, hours, days = s // 60, s // 3600, s // 86400
    if s < 120:
        return f"{s}s"
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if hours < 3:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if days < 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years = days // 365
    return f"{years}y{days % 365}d" if years < 8 and days % 365 else f"{years}y"


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


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_NAMES])
    return shown + (f", +{len(names) - MAX_NAMES} more" if len(names) > MAX_NAMES else "")


def _limit(max_concurrent: int, key_labels: Sequence[str]) -> str:
    if max_concurrent == 0:
        return "paused (maxConcurrent 0)"
    per = f"per {','.join(key_labels)}" if key_labels else "for all its Jobs"
    return f"max {max_concurrent} {per}"


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


def _policy_status(policy: PolicySummary, paint: _Paint) -> list[str]:
    title = paint(f"{policy.namespace}/{policy.name}", BOLD)
    limit = _limit(policy.max_concurrent, policy.key_labels)
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


def _queue(report: QueueReport, paint: _Paint) -> list[str]:
    title = paint(f"{report.namespace}/{report.policy}", BOLD)
    scope = f" (showing {describe_key(report.key_filter)})" if report.key_filter else ""
    lines = [f"{title}: {_limit(report.max_concurrent, report.key_labels)}; {report.queued} queued{scope}"]
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
            _usage(e.running, report.max_concurrent),
            _Cell("admitted next", GREEN) if e.admit_next else "",
        ]
        for e in report.entries
    ]
    lines += _table(["#", "JOB", "KEY", "POSITION", "PRIORITY", "WAITING", "RUNNING", "NOTE"], rows, paint)
    if report.more:
        lines.append(paint(f"... and {report.more} more queued Job(s) (--limit 0 shows all)", DIM))
    return lines


def _why(report: WhyReport, paint: _Paint, width: int) -> list[str]:
    lines = textwrap.wrap(report.summary, width=max(40, width)) or [report.summary]
    if report.waiting is not None:
        lines.append(f"Waiting for {human_duration(report.waiting)}.")
    if report.governors:
        rows: list[list[_Cell | str]] = [
            [
                g.policy,
                describe_key(g.key),
                _usage(g.running, g.max_concurrent),
                f"{g.position} of {g.queued}" if g.position is not None else "-",
                _Cell(g.slot, GREEN if g.slot == "free" else YELLOW if g.slot == "taken" else RED),
                _names(g.running_jobs),
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
