"""The JSON patches jobgate sends to Jobs. Each tests the state it was decided on.

A failed ``test`` makes the API server refuse the whole patch (422): the Job
changed since we looked, and the watch will bring the new state to decide on.
"""

from __future__ import annotations

from typing import Any

from jobgate.core.jobs import ADMITTED_AT, QUEUED_AT, QUEUED_LABEL, JobView
from jobgate.core.timestamps import format_timestamp

JsonPatch = list[dict[str, Any]]


def _escape(pointer_part: str) -> str:
    return pointer_part.replace("~", "~0").replace("/", "~1")


def _guard(job: JobView) -> JsonPatch:
    """The object is the very one, in the very version, that the decision saw."""
    return [
        {"op": "test", "path": "/metadata/uid", "value": job.uid},
        {"op": "test", "path": "/metadata/resourceVersion", "value": str(job.resource_version)},
    ]


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
        # "add" also replaces: spec.suspend may be false or absent on an intruder.
        {"op": "add", "path": "/spec/suspend", "value": True},
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
