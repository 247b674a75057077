"""The JSON patches jobgate sends to Jobs. Each tests exactly what its decision read, and nothing else.

A failed ``test`` makes the API server refuse the whole patch (422): something the
decision depended on changed since we looked, and the watch brings the new state
to decide on again.

What is tested, field by field of `JobView` (`GUARDED` below; a unit test fails
when a field is added to the view without a line here):

- ``uid``: the very object, not a namesake created after a deletion.
- ``suspended``: admission and release unsuspend only a suspended Job; a
  re-suspension only suspends a running one.
- ``labels``: they decide which policies govern the Job and its key under each,
  and they carry the queued mark.
- jobgate's annotations (priority, hold, admitted-at, queued-at), each as written
  or absent (a ``test`` with ``null`` passes on a missing member in the API
  server's JSON patch): they decide order, hold, legitimacy and the queued mark.
- ``managed_by``: whether another controller owns the Job (immutable, so cheap).

Not tested: ``resource_version``. It changes with every write to the Job, above all
the Job controller's status updates on a suspended Job, which change nothing
decided on: testing it refused 133 of 2,133 admissions under load (issue 16). It
would not make admissions safer either: what can over-admit is a stale view of
*other* Jobs of the key (a slot taken meanwhile), which no test on this Job can
see whatever it tests. That is what the Lease gate and the term's expectations
guard (see engine/). ``finished``, ``created``, ``namespace`` and ``name`` cannot
change for a suspended Job in a way that matters (name and namespace are the path;
creationTimestamp is immutable; a suspended Job does not finish by running), and
ownerReferences are read only to spot a JobSet, which creates its Jobs owned.
"""

from __future__ import annotations

from typing import Any

from jobgate.core.jobs import ADMITTED_AT, JOBGATE_ANNOTATIONS, QUEUED_AT, QUEUED_LABEL, JobView
from jobgate.core.timestamps import format_timestamp

JsonPatch = list[dict[str, Any]]

# Every JobView field, and how a patch keeps the decision honest about it.
GUARDED = {
    "uid": "tested",
    "labels": "tested",
    "suspended": "tested (by each patch: it is what the patch changes)",
    "held": "tested as the hold annotation",
    "priority": "tested as the priority annotation",
    "admitted_at": "tested as the admitted-at annotation",
    "queued_at": "tested as the queued-at annotation",
    "marks": "tested: jobgate's annotations as written",
    "invalid": "tested through marks: derived from jobgate's annotations",
    "managed_by": "tested",
    "foreign": "tested through managed_by and labels; ownerReferences not (a JobSet creates its Jobs owned)",
    "has_annotations": "shapes the patch: adding to a missing annotations map fails, which is a refusal",
    "resource_version": "not tested: status writes change it, and it guards nothing a decision read",
    "finished": "not tested: a suspended Job does not finish by running",
    "created": "not tested: immutable",
    "namespace": "not tested: part of the path",
    "name": "not tested: part of the path",
}


def _escape(pointer_part: str) -> str:
    return pointer_part.replace("~", "~0").replace("/", "~1")


def _guard(job: JobView) -> JsonPatch:
    """The object is the very one, with the labels and jobgate annotations, that the decision saw."""
    ops: JsonPatch = [
        {"op": "test", "path": "/metadata/uid", "value": job.uid},
        {"op": "test", "path": "/metadata/labels", "value": dict(job.labels) or None},
        {"op": "test", "path": "/spec/managedBy", "value": job.managed_by},
    ]
    if job.has_annotations:
        ops += [
            {"op": "test", "path": f"/metadata/annotations/{_escape(name)}", "value": job.mark(name)}
            for name in JOBGATE_ANNOTATIONS
        ]
    else:
        ops.append({"op": "test", "path": "/metadata/annotations", "value": None})
    return ops


def _annotate(job: JobView, name: str, value: str) -> JsonPatch:
    if not job.has_annotations:
        return [{"op": "add", "path": "/metadata/annotations", "value": {name: value}}]
    return [{"op": "add", "path": f"/metadata/annotations/{_escape(name)}", "value": value}]


def _label_queued(job: JobView) -> JsonPatch:
    if not job.labels:
        return [{"op": "add", "path": "/metadata/labels", "value": {QUEUED_LABEL: "true"}}]
    return [{"op": "add", "path": f"/metadata/labels/{_escape(QUEUED_LABEL)}", "value": "true"}]


def _unlabel_queued(job: JobView) -> JsonPatch:
    if QUEUED_LABEL not in job.labels:
        return []
    return [{"op": "remove", "path": f"/metadata/labels/{_escape(QUEUED_LABEL)}"}]


def admit(job: JobView, now: float) -> JsonPatch:
    """Unsuspend a queued Job and record when, in one write."""
    return [
        *_guard(job),
        {"op": "test", "path": "/spec/suspend", "value": True},
        {"op": "replace", "path": "/spec/suspend", "value": False},
        *_annotate(job, ADMITTED_AT, format_timestamp(now)),
        *_unlabel_queued(job),
    ]


def resuspend(job: JobView, now: float) -> JsonPatch:
    """Suspend an intruder again, and mark it queued by jobgate so that it is released if ungoverned."""
    return [
        *_guard(job),
        # The API server defaults spec.suspend to false: an intruder has false, never absent.
        {"op": "test", "path": "/spec/suspend", "value": False},
        {"op": "replace", "path": "/spec/suspend", "value": True},
        *_annotate(job, QUEUED_AT, format_timestamp(now)),
        *_label_queued(job),
    ]


def release(job: JobView) -> JsonPatch:
    """Unsuspend a Job that jobgate queued and no policy governs any more."""
    return [
        *_guard(job),
        {"op": "test", "path": "/spec/suspend", "value": True},
        {"op": "replace", "path": "/spec/suspend", "value": False},
        *_unlabel_queued(job),
    ]
