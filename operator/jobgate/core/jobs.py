"""The small view of a Job that jobgate keeps: only what decisions need, never the body."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jobgate.core.timestamps import parse_timestamp

PRIORITY = "jobgate.dev/priority"
# The priorities a user may set (`jobgate prioritize` refuses others).
PRIORITY_MIN = -1_000_000
PRIORITY_MAX = 1_000_000
HOLD = "jobgate.dev/hold"
ADMITTED_AT = "jobgate.dev/admitted-at"
QUEUED_AT = "jobgate.dev/queued-at"
# A label, so that the API server can select them: on the Jobs jobgate queued, until admitted or released.
QUEUED_LABEL = "jobgate.dev/queued"
# jobgate's own annotations: the admission patches test each of them as the decision saw it.
JOBGATE_ANNOTATIONS = (PRIORITY, HOLD, ADMITTED_AT, QUEUED_AT)

# The priority annotation's accepted range: wide enough for any scheme, and far from float or overflow
# questions ("1e9" and "1.5" are refused, not rounded).
PRIORITY_MIN = -1_000_000
PRIORITY_MAX = 1_000_000
HOLD_VALUES = ("true", "false")

# Jobs whose suspension another controller owns: jobgate never suspends, unsuspends or counts them.
JOB_CONTROLLER = "kubernetes.io/job-controller"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
SELF_SUSPENDING_OWNERS = {("jobset.x-k8s.io", "JobSet")}


@dataclass(frozen=True, slots=True)
class JobView:
    uid: str
    namespace: str
    name: str
    labels: Mapping[str, str]
    resource_version: int
    created: float  # creationTimestamp, seconds since the epoch
    suspended: bool  # spec.suspend is true
    finished: bool  # a Complete or Failed condition is True
    held: bool  # jobgate.dev/hold: "true"
    priority: int = 0
    admitted_at: float | None = None  # set by jobgate in the admission patch
    queued_at: float | None = None  # set by the webhook when it suspended the Job
    has_annotations: bool = False  # whether metadata.annotations exists (shapes the JSON patch)
    # jobgate's own annotations exactly as written (name, text): what the patches test.
    marks: tuple[tuple[str, str], ...] = ()
    # Why another controller owns this Job's suspension (spec.managedBy, Kueue, a JobSet); None if nobody does.
    foreign: str | None = None
    managed_by: str | None = None  # spec.managedBy as written: immutable, tested by the patches
    invalid: tuple[str, ...] = ()  # jobgate annotations with values outside the accepted ones, explained

    @property
    def marked(self) -> bool:
        """Carries jobgate's queued mark: only such Jobs does jobgate ever unsuspend."""
        return self.queued_at is not None or self.labels.get(QUEUED_LABEL) == "true"

    @property
    def running(self) -> bool:
        return not self.suspended and not self.finished

    @property
    def queued(self) -> bool:
        """Waits for jobgate: suspended by jobgate (or for it, by its owner), not finished, not on hold."""
        return self.suspended and not self.finished and not self.held and self.marked and self.foreign is None

    @property
    def queued_since(self) -> float:
        """When it was queued: jobgate.dev/queued-at, else its creationTimestamp."""
        return self.queued_at if self.queued_at is not None else self.created

    def mark(self, name: str) -> str | None:
        return next((text for key, text in self.marks if key == name), None)

    @property
    def order(self) -> tuple[int, float, str, str]:
        """Admission order: higher priority first, then older, then by name."""
        return (-self.priority, self.created, self.namespace, self.name)

    def same_state(self, newer: JobView) -> bool:
        """Whether `newer` differs from this view in its resourceVersion only."""
        return dataclasses.replace(newer, resource_version=self.resource_version) == self

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> JobView:
        meta = body["metadata"]
        annotations: Mapping[str, str] = meta.get("annotations") or {}
        conditions = (body.get("status") or {}).get("conditions") or ()
        spec = body.get("spec") or {}
        labels = dict(meta.get("labels") or {})
        invalid = tuple(annotation_problems(annotations))
        return cls(
            uid=meta["uid"],
            namespace=meta["namespace"],
            name=meta["name"],
            labels=labels,
            resource_version=int(meta.get("resourceVersion") or 0),
            created=parse_timestamp(meta["creationTimestamp"]),
            suspended=bool(spec.get("suspend")),
            finished=any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions),
            # An invalid hold holds: the conservative reading of a value we cannot understand.
            held=annotations.get(HOLD, "false") != "false",
            priority=parse_priority(annotations.get(PRIORITY)),
            admitted_at=_optional_timestamp(annotations.get(ADMITTED_AT)),
            queued_at=_optional_timestamp(annotations.get(QUEUED_AT)),
            has_annotations="annotations" in meta and meta["annotations"] is not None,
            marks=tuple((name, annotations[name]) for name in JOBGATE_ANNOTATIONS if name in annotations),
            foreign=foreign_controller(spec, labels, meta.get("ownerReferences") or ()),
            managed_by=spec.get("managedBy"),
            invalid=invalid,
        )


def parse_priority(text: str | None) -> int:
    """The priority annotation as an integer; absent or invalid counts as 0 (an invalid one is also reported)."""
    if text is None or priority_problem(text) is not None:
        return 0
    return int(text)


def priority_problem(text: str) -> str | None:
    # Plain ASCII digits only: int() would also take "1_000", " 7" and other scripts' digits.
    value = int(text) if re.fullmatch(r"[-+]?[0-9]{1,8}", text) else None
    if value is None or not PRIORITY_MIN <= value <= PRIORITY_MAX:
        return f"annotation {PRIORITY}={text!r} must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX}"
    return None


def annotation_problems(annotations: Mapping[str, str]) -> list[str]:
    """What is wrong with jobgate's annotations on a Job, one sentence each naming the accepted values."""
    problems = []
    if PRIORITY in annotations:
        problem = priority_problem(annotations[PRIORITY])
        if problem:
            problems.append(problem)
    if HOLD in annotations and annotations[HOLD] not in HOLD_VALUES:
        problems.append(f'annotation {HOLD}={annotations[HOLD]!r} must be "true" or "false" (until fixed, it holds)')
    return problems


def foreign_controller(
    spec: Mapping[str, Any], labels: Mapping[str, str], owners: Iterable[Mapping[str, Any]]
) -> str | None:
    """Why another controller owns this Job's suspension, or None when jobgate may gate it."""
    managed_by = spec.get("managedBy")
    if managed_by and managed_by != JOB_CONTROLLER:
        return f"spec.managedBy is {managed_by}"
    if KUEUE_QUEUE_LABEL in labels:
        return f"Kueue queues it (label {KUEUE_QUEUE_LABEL})"
    for owner in owners:
        group = str(owner.get("apiVersion") or "").partition("/")[0]
        if owner.get("controller") and (group, owner.get("kind")) in SELF_SUSPENDING_OWNERS:
            return f"{owner.get('kind')} {owner.get('name')} controls its suspension"
    return None


def _optional_timestamp(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return parse_timestamp(text)
    except ValueError:
        return None
